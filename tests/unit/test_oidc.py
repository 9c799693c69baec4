"""The pure parts of api.Service's OIDC sign-in (api_service/oidc.py); the flow itself runs against
a real provider in tests/e2e/test_ui_oidc.py."""

from __future__ import annotations

import base64
import hashlib
from urllib.parse import parse_qs, urlsplit

from cryptography.fernet import Fernet

from compozy_operator.api_service.oidc import (Login, OidcConfig, authorization_url, cookie, fernet_of, open_session,
                                               pkce_pair, safe_return, seal_session)

CONFIG = OidcConfig("https://idp.example", "compozy", "s3cret", "https://compozy.example/oauth2/callback")


def test_pkce_challenge_is_the_s256_of_the_verifier() -> None:
    verifier, challenge = pkce_pair()
    assert 43 <= len(verifier) <= 128 and pkce_pair()[0] != verifier
    assert challenge == base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def test_the_authorization_url_asks_for_a_code_with_pkce_state_and_nonce() -> None:
    url = authorization_url("https://idp.example/auth?prompt=login", CONFIG, "st", "no", "ch")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query == {"prompt": "login", "response_type": "code", "client_id": "compozy", "scope": "openid email profile",
                     "redirect_uri": CONFIG.redirect_url, "state": "st", "nonce": "no", "code_challenge": "ch",
                     "code_challenge_method": "S256"}
    assert "s3cret" not in url


def test_only_paths_of_the_ui_are_returned_to() -> None:
    assert safe_return("/ui/#/runs?ns=a") == "/ui/#/runs?ns=a"
    for hostile in ("https://evil.example/", "//evil.example/ui/", "/api/v1/whoami", "/ui\\..\\x", "/ui/\r\nX: y",
                    None, ""):
        assert safe_return(hostile) == "/ui/"


def test_the_login_cookie_is_sealed_and_expires() -> None:
    fernet = fernet_of("shared")
    sealed = Login("st", "no", "ve", "https://evil.example/").seal(fernet)
    assert "ve" not in sealed and "st" not in sealed.split(".")[0]
    assert Login.open(fernet_of("shared"), sealed) == Login("st", "no", "ve", "/ui/")  # another replica, same secret
    assert Login.open(fernet_of("other"), sealed) is None
    assert Login.open(fernet, sealed[:-2] + "AA") is None and Login.open(fernet, None) is None
    old = Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"shared").digest())).encrypt_at_time(
        b'["st", "no", "ve", "/ui/"]', 0)
    assert Login.open(fernet, old.decode()) is None  # older than LOGIN_SECONDS


def test_the_session_cookie_holds_the_id_token_encrypted() -> None:
    fernet = fernet_of("")  # no shared secret: one made at start
    sealed = seal_session(fernet, "eyJ.id.token")
    assert "eyJ" not in sealed and open_session(fernet, sealed) == "eyJ.id.token"
    assert open_session(fernet_of(""), sealed) is None and open_session(fernet, "forged") is None


def test_cookies_are_http_only_and_secure_over_https() -> None:
    assert cookie("a", "v", path="/", max_age=-5, secure=True, same_site="Strict") == \
        "a=v; Path=/; Max-Age=0; HttpOnly; SameSite=Strict; Secure"
    assert "Secure" not in cookie("a", "v", path="/", max_age=1, secure=False, same_site="Lax")


def test_configuration_problems_name_the_setting() -> None:
    assert CONFIG.problems() == []
    bad = OidcConfig("http://idp.example", "", "", "https://x.example/callback", ("email",))
    problems = " ".join(bad.problems())
    for name in ("COMPOZY_API_OIDC_CLIENT_ID", "COMPOZY_API_OIDC_ISSUER_URL", "https://",
                 "COMPOZY_API_OIDC_REDIRECT_URL", "/oauth2/callback", "COMPOZY_API_OIDC_SCOPES"):
        assert name in problems, (name, problems)
