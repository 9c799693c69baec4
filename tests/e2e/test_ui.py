"""The web UI (docs/ui.md) in a real browser: Debian's headless Chromium, driven through its
chromedriver (Selenium), against the session operator's api.Service, which serves the built UI.

Callers are real ServiceAccounts with real RBAC, as in test_api_service. Waiting for the page is
polling the DOM until a deadline (a condition that never comes fails the test); nothing is timed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from compozy_operator.api_service.ui import UI_DIR
from compozy_operator.kube import Kube
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.fakellm import FakeLLM, openai_reply
from tests.helpers import Kubectl

from .conftest import execution_status, wait_finished
from .test_agents import SCHEMA as SUMMARY, agent, agent_workflow, go
from .test_api_service import ALL_VERBS, Api, service_account_token, trigger
from .test_workflows import PY_OK, PY_SLOW, apply, workflow

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("COMPOZY_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("COMPOZY_CHROMEDRIVER", "/usr/bin/chromedriver")
# flags that work in a container without a GPU, a sandbox or a network beyond loopback
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1440,900"]
WAIT = 60.0  # seconds a page may take to show what a test waits for
PY_LOG_FAIL = "def run(input, ctx):\n    ctx.log.info('about to fail: %s', input['why'])\n    raise RuntimeError('the tool broke: ' + input['why'])\n"
# waits until the test creates its gate file (task pods are local processes on the process node)
PY_GATE = "import os, time\ndef run(input, ctx):\n    while not os.path.exists(input['gate']):\n        time.sleep(0.05)\n    return {'opened': True}\n"
TOOLS = [{"id": "ok", "python": PY_OK}, {"id": "slow", "python": PY_SLOW}, {"id": "fail", "python": PY_LOG_FAIL},
         {"id": "gate", "python": PY_GATE}]
INPUT_SCHEMA = {"type": "object", "required": ["n"],
                "properties": {"n": {"type": "integer", "minimum": 1, "description": "How many"},
                               "topic": {"type": "string"}}}


def start_browser(downloads: Path, flags: tuple[str, ...] = ()) -> WebDriver:
    """Headless Chromium with a fresh profile (and ``flags``). Selenium is told where both binaries
    are and to stay offline, so it never looks for (or downloads) a browser or a driver of its own."""
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.fail(f"{CHROMIUM} and {CHROMEDRIVER} are needed (make browser: Debian's chromium and chromium-driver)")
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in [*CHROMIUM_FLAGS, *flags, f"--user-data-dir={downloads}"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_script_timeout(30)
    return driver


@pytest.fixture(scope="session")
def ui_built() -> Path:
    """The UI's build (make ui); built here when missing, so the file runs on its own too."""
    if not (UI_DIR / "index.html").is_file():
        if shutil.which("npm") is None:
            pytest.fail("the UI is not built and npm is missing: run make ui")
        subprocess.run(["make", "ui"], cwd=ROOT, check=True)
    return UI_DIR


@pytest.fixture(scope="session")
def browser(ui_built: Path) -> Iterator[WebDriver]:
    with tempfile.TemporaryDirectory(prefix="compozy-chromium-") as profile:
        driver = start_browser(Path(profile))
        try:
            yield driver
        finally:
            driver.quit()


class Page:
    """The browser on the UI of one api.Service, signed in (or not) with one token."""

    def __init__(self, driver: WebDriver, base: str) -> None:
        self.driver, self.base = driver, base

    def open(self, fragment: str = "", token: str | None = None) -> None:
        self.driver.get(f"{self.base}/ui/")
        if token is not None:
            self.driver.execute_script("sessionStorage.setItem('compozy.token', arguments[0])", token)
        self.driver.get(f"{self.base}/ui/#/{fragment}")
        self.driver.refresh()
        self.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "header.top, form.signin"), "the UI to load")

    def wait(self, condition: Callable[[WebDriver], Any], what: str, timeout: float = WAIT) -> Any:
        def guarded(d: WebDriver) -> Any:
            try:
                return condition(d)
            except StaleElementReferenceException:
                return False

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(guarded, f"waiting for {what}")

    def one(self, css: str) -> WebElement:
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def all(self, css: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, css)

    def node_phase(self, task: str) -> str | None:
        nodes = self.all(f'.task[data-task="{task}"]')
        return nodes[0].get_attribute("data-phase") if nodes else None

    def button(self, text: str) -> WebElement | None:
        return next((b for b in self.all("button") if b.text.strip() == text), None)

    def buttons(self) -> set[str]:
        return {b.text.strip() for b in self.all("button")}

    def fetch(self, method: str, path: str) -> dict[str, Any]:
        """A call of the API from the page, with the token it signed in with (what a user could do
        from the browser's console)."""
        return self.driver.execute_async_script("""
            const [method, path, done] = arguments
            const t = sessionStorage.getItem('compozy.token')
            const headers = {'Content-Type': 'application/json', ...(t ? {Authorization: 'Bearer ' + t} : {})}
            fetch('/api/v1' + path, {method, headers, body: method === 'POST' ? '{}' : undefined})
              .then(async r => done({status: r.status, body: await r.text()}), e => done({status: 0, body: String(e)}))
        """, method, path)


@pytest.fixture
def ui(operator: OperatorProcess, kubectl: Kubectl, kube: Kube, namespace: str, browser: WebDriver) -> dict[str, Any]:
    """Workflows `gated` (a task that waits for the test's gate file, then another), `long` (30 s),
    `fails` (logs, then raises) and `typed` (an input schema); alice may do everything with runs,
    bob only read them."""
    apply(kubectl, namespace,
          workflow("gated", [{"id": "nap", "tool": "gate", "with": {"gate": "{{ workflow.input.gate }}"},
                              "onSuccess": {"next": "echo"}},
                             {"id": "echo", "tool": "ok", "with": {"v": 1}}], tools=TOOLS),
          workflow("long", [{"id": "nap", "tool": "slow", "with": {"seconds": 30}}], tools=TOOLS),
          workflow("fails", [{"id": "broken", "tool": "fail", "with": {"why": "on purpose"}}], tools=TOOLS),
          workflow("typed", [{"id": "echo", "tool": "ok", "with": {"n": "{{ workflow.input.n }}"}}], tools=TOOLS,
                   input=INPUT_SCHEMA))
    alice = service_account_token(kube, namespace, "alice", ALL_VERBS)
    grant_workflows(kube, namespace, "alice")
    bob = service_account_token(kube, namespace, "bob", ["get", "list"])
    grant_workflows(kube, namespace, "bob")
    return {"namespace": namespace, "alice": alice, "bob": bob, "api": Api(operator.api_url, alice),
            "page": Page(browser, operator.api_url)}


def grant_workflows(kube: Kube, namespace: str, sa: str) -> None:
    """Read access to the namespace's Workflows (the Workflows pages)."""
    rbac = "/apis/rbac.authorization.k8s.io/v1"
    name = f"{sa}-workflows"
    kube.create(f"{rbac}/namespaces/{namespace}/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name},
        "rules": [{"apiGroups": ["compozy.dev"], "resources": ["workflows"], "verbs": ["get", "list"]}]})
    kube.create(f"{rbac}/namespaces/{namespace}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": namespace}]})


def test_sign_in_then_a_run_appears_and_turns_green_live(ui: dict[str, Any], tmp_path: Path) -> None:
    page, ns = ui["page"], ui["namespace"]
    page.open(f"runs?ns={ns}", token=None)
    page.driver.execute_script("sessionStorage.clear()")
    page.driver.refresh()
    page.wait(lambda d: page.all("form.signin"), "the sign-in form")
    page.one("#token").send_keys(ui["alice"])
    page.button("Sign in").click()
    page.wait(lambda d: page.all(f'select[aria-label="Namespace"] option[value="{ns}"]'), "the runs page")
    assert page.one("span.user").text == f"system:serviceaccount:{ns}:alice"
    page.driver.get(f"{page.base}/ui/#/runs?ns={ns}")
    gate = tmp_path / "gate"
    run = trigger(ui["api"], ns, "gated", {"input": {"gate": str(gate)}})["name"]
    page.wait(lambda d: page.all(f'tr[data-run="{run}"]'), "the new run in the list")
    page.one(f'tr[data-run="{run}"] a').click()
    page.wait(lambda d: page.node_phase("nap") == "Running", "the first task running")
    assert page.node_phase("echo") == "NotStarted"
    page.driver.execute_script("window.__sameDocument = true")  # gone if anything reloads the page
    gate.touch()  # the task ends now: what follows must reach the open page by itself
    page.wait(lambda d: page.node_phase("echo") == "Succeeded", "the last task to turn green")
    assert page.node_phase("nap") == "Succeeded"
    assert page.driver.execute_script("return window.__sameDocument") is True
    page.wait(lambda d: page.one(".run-head .badge").get_attribute("data-phase") == "Succeeded", "the run's badge")
    colour = page.driver.execute_script(
        "return getComputedStyle(document.querySelector('.task[data-task=echo]')).borderTopColor")
    green = page.driver.execute_script(
        "const e = document.createElement('span'); e.style.color = 'var(--Succeeded)'; document.body.append(e);"
        "const c = getComputedStyle(e).color; e.remove(); return c")
    assert colour == green, (colour, green)
    page.wait(lambda d: page.all(".react-flow__edge.taken"), "the transition taken to be marked")


def test_a_failed_task_shows_its_error_and_logs(ui: dict[str, Any]) -> None:
    page, ns = ui["page"], ui["namespace"]
    run = trigger(ui["api"], ns, "fails")["name"]
    page.open(f"runs/{ns}/{run}", token=ui["alice"])
    page.wait(lambda d: page.node_phase("broken") == "Failed", "the task to fail")
    # by keyboard: the node is focusable, Enter selects it and opens its panel
    page.one('.react-flow__node[data-id="broken"]').send_keys(Keys.ENTER)
    error = page.wait(lambda d: page.all('[data-testid="task-error"]'), "the task's error")[0]
    assert "ToolError" in error.text and "RuntimeError: the tool broke: on purpose" in error.text, error.text
    page.button("Logs of broken").click()
    page.wait(lambda d: "about to fail: on purpose" in page.one('[data-testid="logs"]').text, "the task's log line")
    line = next(x for x in page.one('[data-testid="logs"]').text.splitlines() if "about to fail" in x)
    assert " broken[1] " in line, line
    page.wait(lambda d: "the tool broke" in page.one('[data-testid="run-message"]').text, "the run's message")


def test_cancel_and_retry_from_the_ui_change_the_run(ui: dict[str, Any], kubectl: Kubectl) -> None:
    page, ns = ui["page"], ui["namespace"]
    run = trigger(ui["api"], ns, "long")["name"]
    page.open(f"runs/{ns}/{run}", token=ui["alice"])
    page.wait(lambda d: page.node_phase("nap") == "Running", "the task to run")
    page.wait(lambda d: page.button("Cancel"), "the Cancel button").click()
    page.wait(lambda d: page.one(".run-head .badge").get_attribute("data-phase") == "Cancelled", "the run to end Cancelled")
    assert execution_status(kubectl, ns, run)["phase"] == "Cancelled"
    assert page.node_phase("nap") == "Cancelled"
    page.wait(lambda d: page.button("Retry"), "the Retry button").click()
    page.wait(lambda d: page.one(".run-head .badge").get_attribute("data-phase") == "Running", "the run to go on")
    status = execution_status(kubectl, ns, run)
    assert status["retries"] == 1 and status["phase"] == "Running", status
    page.wait(lambda d: page.node_phase("nap") in ("Pending", "Running"), "the task to run again")
    assert page.button("Retry") is None and page.button("Cancel") is not None


def test_the_submit_form_refuses_input_against_the_schema_with_its_message(ui: dict[str, Any]) -> None:
    page, ns = ui["page"], ui["namespace"]
    page.open(f"workflows/{ns}/typed", token=ui["alice"])
    n = page.wait(lambda d: page.all("#field-n"), "the form's field n")[0]
    assert page.all('label[for="field-n"] .required'), "n is marked required"
    n.send_keys("0")
    page.button("Submit").click()
    problems = page.wait(lambda d: page.all('[data-testid="submit-problems"]'), "the schema's refusal")[0].text
    assert problems.startswith("input.n: ") and "1" in problems, problems  # minimum: 1, in the schema's words
    n.clear()
    n.send_keys("three")
    page.button("Submit").click()
    page.wait(lambda d: "integer" in page.one('[data-testid="submit-problems"]').text, "the type refusal")
    assert ui["api"]("GET", f"/namespaces/{ns}/executions").json()["items"] == [], "nothing was submitted"
    n.clear()
    n.send_keys("2")
    page.button("Submit").click()
    page.wait(lambda d: "#/runs/" in d.current_url, "the new run's page")
    name = page.driver.current_url.rsplit("/", 1)[1].split("?")[0]
    run = ui["api"]("GET", f"/namespaces/{ns}/executions/{name}").json()
    assert run["spec"]["input"] == {"n": 2}


def test_a_user_without_rights_sees_no_action_buttons_and_the_api_refuses_anyway(ui: dict[str, Any],
                                                                                  kubectl: Kubectl) -> None:
    page, ns = ui["page"], ui["namespace"]
    run = trigger(ui["api"], ns, "fails")["name"]
    assert wait_finished(kubectl, ns, run)["phase"] == "Failed"
    page.open(f"runs/{ns}/{run}", token=ui["bob"])
    page.wait(lambda d: page.node_phase("broken") == "Failed", "the run page")
    page.wait(lambda d: page.all('.actions[data-access="known"]'), "the page to know what bob may do")
    assert not {"Cancel", "Retry", "Resubmit"} & page.buttons(), page.buttons()
    for action in ("retry", "resubmit", "cancel"):
        answer = page.fetch("POST", f"/namespaces/{ns}/executions/{run}/{action}")
        assert answer["status"] == 403 and json.loads(answer["body"])["error"]["reason"] == "Forbidden", answer
    page.open(f"workflows/{ns}/typed", token=ui["bob"])
    page.wait(lambda d: page.all('[data-testid="graph"] .task[data-task="echo"]'), "the workflow's graph")
    page.wait(lambda d: page.all('.run-body[data-access="known"]'), "the page to know what bob may do")
    assert not page.all('form[aria-label="Submit a run"]'), "no submit form without create"
    answer = page.fetch("POST", f"/namespaces/{ns}/workflows/typed/executions")
    assert answer["status"] == 403, answer
    # the same pages show alice every action
    page.open(f"runs/{ns}/{run}", token=ui["alice"])
    page.wait(lambda d: {"Retry", "Resubmit"} <= page.buttons(), "alice's action buttons")


def test_the_phase_filter_selects_on_the_server_so_a_page_is_never_short(ui: dict[str, Any], kubectl: Kubectl) -> None:
    """50 runs that fail at start (their Workflow does not exist: no pod) come before the one running
    run by name, so the first page of 50 holds none of it: a filter applied to the page after it was
    cut would show an empty page; one the API server applies shows the run."""
    page, ns = ui["page"], ui["namespace"]
    runs = [{"apiVersion": "compozy.dev/v1alpha1", "kind": "WorkflowExecution", "metadata": {"name": f"a-{i:02d}"},
             "spec": {"workflowRef": {"name": "missing"}}} for i in range(50)]
    kubectl.ok("apply", "-n", ns, "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": runs}))
    running = trigger(ui["api"], ns, "long", {"name": "z-running"})["name"]
    page.open(f"runs?ns={ns}&phase=Running", token=ui["alice"])
    page.wait(lambda d: [r.get_attribute("data-run") for r in page.all("tr[data-run]")] == [running],
              "the running run, alone, on the first page")
    Select(page.one('select[aria-label="Phase"]')).select_by_visible_text("Failed")
    page.wait(lambda d: len(page.all('tr[data-run] [data-phase="Failed"]')) == 50, "a full page of failed runs")
    assert running not in {r.get_attribute("data-run") for r in page.all("tr[data-run]")}
    Select(page.one('select[aria-label="Started"]')).select_by_visible_text("last 1h")
    page.wait(lambda d: "since=1h" in d.current_url and len(page.all('tr[data-run] [data-phase="Failed"]')) == 50,
              "the same page within the last hour")
    assert all(r.get_attribute("data-run").startswith("a-") for r in page.all("tr[data-run]"))


def test_a_task_panel_shows_the_rendered_input_and_each_model_call(ui: dict[str, Any], kubectl: Kubectl) -> None:
    page, ns = ui["page"], ui["namespace"]
    kubectl.ok("create", "secret", "generic", "llm-credentials", "-n", ns, "--from-literal=api-key=sk-test-ui")
    llm = FakeLLM()
    try:
        llm.add(openai_reply(tool_calls=[("word-count", {"text": "red green blue"})], prompt_tokens=30,
                             completion_tokens=4), openai_reply('{"summary": "colours"}'))
        apply(kubectl, ns, agent_workflow("colours", [agent("writer", "gpt-x", llm.url, go(SUMMARY),
                                                            tools=["word-count"])],
                                          [{"id": "sum", "agent": "writer", "action": "go",
                                            "with": {"text": "{{ workflow.input.t }}"}}]))
        run = trigger(ui["api"], ns, "colours", {"input": {"t": "red green blue"}})["name"]
        assert wait_finished(kubectl, ns, run, 90)["phase"] == "Succeeded"
    finally:
        llm.close()
    page.open(f"runs/{ns}/{run}?task=sum", token=ui["alice"])
    shown = page.wait(lambda d: page.all('[data-testid="task-input"]'), "the rendered input")[0]
    assert json.loads(shown.text) == {"text": "red green blue"}  # the template was {{ workflow.input.t }}
    assert page.one('[data-testid="task-prompt"]').text == "Handle: red green blue"
    rows = page.wait(lambda d: page.all('[data-testid="model-calls"] tbody tr'), "the model calls")
    cells = [[c.text for c in r.find_elements(By.TAG_NAME, "td")] for r in rows]
    assert [(c[0], c[1], c[2], c[4], c[5]) for c in cells] == [
        ("1", "fake", "30 / 4", "tool_calls", "word-count"), ("2", "fake", "11 / 7", "stop", "-")], cells
