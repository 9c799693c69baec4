"""OIDC sign-in (docs/ui.md, api_service/oidc.py) against a real OpenID Provider: the cluster of
this module (its own, started with the provider's --oidc-* flags) accepts the provider's ID tokens,
and an operator configured as the chart's api.oidc configures it signs users in through the provider's
login form, in headless Chromium. RBAC applies to the provider's users (oidc:<sub>) like to anyone.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from compozy_operator.api_service.oidc import SESSION_COOKIE, STATE_COOKIE
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.oidc import OidcProvider, OidcUser
from compozy_operator.testenv.operator_process import OperatorProcess
from compozy_operator.testenv.workdir import find_binaries, free_port
from tests.helpers import Kubectl, apply_crds

from .conftest import OPERATOR_ENV, wait_finished
from . import test_ui
from .test_ui import Page, start_browser
from .test_workflows import apply, workflow

CLIENT_ID = "compozy"
ALICE = OidcUser("alice", "alice@example.test", "alice-password")
BOB = OidcUser("bob", "bob@example.test", "bob-password")
NS = "team-a"
ui_built = test_ui.ui_built  # the fixture: the UI built (make ui)


@pytest.fixture(scope="module")
def oidc_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A provider, a cluster that trusts it, and an operator whose api.Service signs in with it."""
    workdir = tmp_path_factory.mktemp("oidc")
    bindir = find_binaries()
    api_port = free_port()
    callback = f"http://127.0.0.1:{api_port}/oauth2/callback"
    secret = uuid.uuid4().hex
    provider = OidcProvider(bindir, workdir / "provider", (ALICE, BOB), CLIENT_ID, secret, (callback,)).start()
    try:
        with DevEnvironment.start(nodes=1, bindir=bindir, workdir=workdir / "env",
                                  apiserver_flags=tuple(provider.apiserver_flags())) as env:
            kubectl = Kubectl(env.bindir, env.kubeconfig)
            apply_crds(kubectl)
            op = OperatorProcess(env, api_port=api_port, extra_env={
                **OPERATOR_ENV, "COMPOZY_API_OIDC_ISSUER_URL": provider.issuer, "COMPOZY_API_OIDC_CLIENT_ID": CLIENT_ID,
                "COMPOZY_API_OIDC_CLIENT_SECRET": secret, "COMPOZY_API_OIDC_REDIRECT_URL": callback,
                "COMPOZY_API_OIDC_CA_FILE": str(provider.ca_file), "COMPOZY_API_OIDC_COOKIE_SECRET": uuid.uuid4().hex})
            op.start()
            try:
                kubectl.ok("create", "namespace", NS)
                env.cluster.wait_default_service_account(NS)
                apply(kubectl, NS, workflow("hello", [{"id": "echo", "tool": "ok", "with": {"v": 1}}]))
                for resource, verbs in (("workflowexecutions", "get,list,create,patch"), ("workflows", "get,list")):
                    kubectl.ok("create", "role", f"alice-{resource}", "-n", NS, f"--verb={verbs}",
                               f"--resource={resource}.compozy.dev")
                    kubectl.ok("create", "rolebinding", f"alice-{resource}", "-n", NS, f"--role=alice-{resource}",
                               "--user=oidc:alice")
                yield {"provider": provider, "operator": op, "kubectl": kubectl, "base": op.api_url}
            finally:
                op.stop()
    finally:
        provider.stop()


@pytest.fixture(scope="module")
def browser(oidc_env: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, ui_built: Path) -> Iterator[WebDriver]:
    """Chromium that trusts the provider's certificate (its public key, and nothing else)."""
    cert = x509.load_pem_x509_certificate(oidc_env["provider"].tls.cert.read_bytes())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    pin = base64.b64encode(hashlib.sha256(spki).digest()).decode()
    driver = start_browser(tmp_path_factory.mktemp("chromium"), (f"--ignore-certificate-errors-spki-list={pin}",))
    try:
        yield driver
    finally:
        driver.quit()


def provider_login(page: Page, user: OidcUser) -> None:
    """The provider's own login form, as a person fills it in."""
    page.wait(lambda d: d.find_elements(By.ID, "username"), "the identity provider's login form")
    page.driver.find_element(By.ID, "username").send_keys(user.username)
    page.driver.find_element(By.ID, "password").send_keys(user.password)
    page.driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def fresh(browser: WebDriver, base: str, fragment: str = "") -> Page:
    page = Page(browser, base)
    browser.get(f"{base}/ui/")
    browser.delete_all_cookies()
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{base}/ui/#/{fragment}")
    browser.refresh()
    return page


def test_sign_in_with_the_identity_provider_then_act_as_that_user(oidc_env: dict[str, Any],
                                                                  browser: WebDriver) -> None:
    base, kubectl = oidc_env["base"], oidc_env["kubectl"]
    page = fresh(browser, base, f"runs?ns={NS}")
    page.wait(lambda d: page.all('[data-testid="oidc-login"]'), "the identity provider's sign-in button").pop().click()
    provider_login(page, ALICE)
    page.wait(lambda d: page.all("span.user") and page.one("span.user").text == "oidc:alice", "signed in as alice")
    assert "#/runs?ns=team-a" in browser.current_url  # back where the sign-in started
    cookie = next(c for c in browser.get_cookies() if c["name"] == SESSION_COOKIE)
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict" and cookie["secure"] is False  # plain HTTP
    assert not [c for c in browser.get_cookies() if c["name"] == STATE_COOKIE]  # the login's cookie is gone
    assert browser.execute_script("return document.cookie") == ""  # no script can read the ID token
    assert browser.execute_script("return sessionStorage.getItem('compozy.token')") is None

    # the UI acts as alice: RBAC decides, as for any caller
    created = page.fetch("POST", f"/namespaces/{NS}/workflows/hello/executions")  # without the UI's header
    assert created["status"] == 403 and "forgery" in json.loads(created["body"])["error"]["message"], created
    made = browser.execute_async_script("""
        const done = arguments[arguments.length - 1]
        fetch('/api/v1/namespaces/team-a/workflows/hello/executions', {method: 'POST', body: '{}',
              headers: {'Content-Type': 'application/json', 'X-Compozy-Request': 'ui'}})
          .then(async r => done({status: r.status, body: await r.json()}))""")
    assert made["status"] == 201, made
    run = made["body"]["name"]
    page.wait(lambda d: page.all(f'tr[data-run="{run}"]'), "alice's run in the list")
    assert wait_finished(kubectl, NS, run)["phase"] == "Succeeded"
    assert page.fetch("GET", "/namespaces/default/executions")["status"] == 403  # not granted there

    page.button("Sign out").click()
    page.wait(lambda d: page.all('[data-testid="oidc-login"]'), "the sign-in page again")
    assert not [c for c in browser.get_cookies() if c["name"] == SESSION_COOKIE]
    assert page.fetch("GET", "/whoami")["status"] == 401


def test_a_user_the_provider_knows_gets_only_what_rbac_grants(oidc_env: dict[str, Any], browser: WebDriver) -> None:
    page = fresh(browser, oidc_env["base"])
    page.wait(lambda d: page.all('[data-testid="oidc-login"]'), "the sign-in button").pop().click()
    provider_login(page, BOB)
    page.wait(lambda d: page.all("span.user") and page.one("span.user").text == "oidc:bob", "signed in as bob")
    who = json.loads(page.fetch("GET", "/whoami")["body"])
    assert who["via"] == "session" and "system:authenticated" in who["groups"], who
    assert json.loads(page.fetch("GET", "/namespaces")["body"])["items"] == []
    assert page.fetch("GET", f"/namespaces/{NS}/executions")["status"] == 403


def begin(base: str, http: requests.Session, **params: str) -> tuple[requests.Response, dict[str, str]]:
    """A new login in ``http``: the answer, and the query it sends the browser to the provider with."""
    start = http.get(f"{base}/oauth2/login", params=params, allow_redirects=False, timeout=30)
    assert start.status_code == 302, start.text
    return start, {k: v[0] for k, v in parse_qs(urlsplit(start.headers["location"]).query).items()}


def test_the_flow_refuses_a_wrong_state_a_missing_login_and_a_forged_session(oidc_env: dict[str, Any]) -> None:
    base = oidc_env["base"]
    http = requests.Session()
    start, query = begin(base, http, **{"return": "https://evil.example/"})
    assert start.headers["location"].startswith(oidc_env["provider"].issuer + "/")
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["client_id"] == CLIENT_ID and query["scope"] == "openid email profile"
    assert query["state"] and query["nonce"] and query["state"] != query["nonce"]
    set_cookie = start.headers["set-cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie and "Path=/oauth2/" in set_cookie

    def callback(session: requests.Session, **params: str) -> str:
        back = session.get(f"{base}/oauth2/callback", params=params, allow_redirects=False, timeout=30)
        assert back.status_code == 302 and back.headers["location"].startswith("/ui/?signinError="), back.headers
        assert SESSION_COOKIE not in back.headers.get("set-cookie", "")
        return parse_qs(urlsplit(back.headers["location"]).query)["signinError"][0]

    assert "state does not match" in callback(http, code="x", state="not-" + query["state"])
    assert "no sign-in in progress" in callback(http, code="x", state=query["state"])  # a failure ends the login
    _, query = begin(base, http)
    assert "no sign-in in progress" in callback(requests.Session(), code="x", state=query["state"])  # another browser
    assert "refused the code" in callback(http, code="forged", state=query["state"])
    assert "access_denied" in callback(http, error="access_denied", error_description="the user said no")

    forged = requests.get(f"{base}/api/v1/whoami", cookies={SESSION_COOKIE: "gAAAAAforged"}, timeout=30)
    assert forged.status_code == 401 and forged.json()["error"]["reason"] == "Unauthorized"
    assert requests.get(f"{base}/oauth2/config", timeout=30).json() == {"oidc": True, "localUser": False}


def test_without_oidc_configured_there_is_no_login(operator: OperatorProcess, tmp_path: Path) -> None:
    """The session operator has no api.oidc: the UI offers the token form only."""
    assert requests.get(f"{operator.api_url}/oauth2/config", timeout=30).json()["oidc"] is False
    assert requests.get(f"{operator.api_url}/oauth2/login", allow_redirects=False, timeout=30).status_code == 404
