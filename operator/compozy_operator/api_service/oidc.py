"""Sign-in with an OpenID Connect provider, done by api.Service (as Argo's server does SSO).

The authorization-code flow with PKCE (S256), ``state`` and ``nonce``, all on the server:

1. ``GET /oauth2/login`` sends the browser to the provider; what the callback must find again (the
   state, the nonce, the PKCE verifier, where to return) travels in a short-lived cookie, encrypted
   and authenticated with the operator's cookie key, so any replica can take the callback.
2. ``GET /oauth2/callback`` checks the state, exchanges the code (with the verifier and the client
   secret) at the token endpoint, verifies the ID token (signature by the provider's keys, issuer,
   audience, expiry, nonce), has the cluster's API server review it (a TokenReview: a token the
   cluster does not accept is refused here, with that said, not at the first call), and keeps it in
   an encrypted HttpOnly cookie, ``Secure`` when the browser reaches api.Service over HTTPS (the
   redirect URL is https), ``SameSite=Strict``.
3. Every API call then authenticates with that ID token like any bearer token: TokenReview, then a
   SubjectAccessReview per call. The cluster's API server must trust the provider (its
   ``--oidc-issuer-url`` and ``--oidc-client-id``, or an AuthenticationConfiguration).
4. ``POST /oauth2/logout`` forgets it. A session ends with its ID token (no refresh).

Only the ID token is kept (never the access or refresh token). The pure parts (PKCE, URLs, the
cookies' contents) are apart from the I/O (discovery, the token exchange, the keys).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import jwt
import requests
from cryptography.fernet import Fernet, InvalidToken

from .models import ApiError

STATE_COOKIE = "compozy-oidc"  # the login in progress (Path /oauth2/)
SESSION_COOKIE = "compozy-session"  # the signed-in user's ID token
LOGIN_SECONDS = 600  # a login must come back within this
HTTP_SECONDS = 10.0  # each call to the provider
ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512", "EdDSA"]
MAX_COOKIE = 4000  # browsers keep cookies up to 4096 bytes, name and attributes included
UI_PREFIX = "/ui/"


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str
    redirect_url: str  # this api.Service's /oauth2/callback as the browser reaches it
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    ca_file: str = ""  # the provider's CA (empty: the system's)
    cookie_secret: str = ""  # shared by the replicas (the chart's Secret); empty: one made at start

    def problems(self) -> list[str]:
        """What makes the configuration unusable, naming the setting."""
        out = []
        for name, value in (("COMPOZY_API_OIDC_ISSUER_URL", self.issuer), ("COMPOZY_API_OIDC_CLIENT_ID", self.client_id),
                            ("COMPOZY_API_OIDC_REDIRECT_URL", self.redirect_url)):
            if not value:
                out.append(f"{name} is required when OIDC sign-in is configured")
        if self.issuer and not self.issuer.startswith("https://"):
            out.append(f"COMPOZY_API_OIDC_ISSUER_URL: {self.issuer!r} must be an https:// URL (the API server "
                       "accepts no other issuer)")
        if self.redirect_url and not self.redirect_url.rstrip("/").endswith("/oauth2/callback"):
            out.append(f"COMPOZY_API_OIDC_REDIRECT_URL: {self.redirect_url!r} must end in /oauth2/callback")
        if "openid" not in self.scopes:
            out.append("COMPOZY_API_OIDC_SCOPES must include openid")
        return out


def fernet_of(secret: str) -> Fernet:
    """The cookies' cipher: a key derived from the shared secret (any text), or a fresh one."""
    raw = hashlib.sha256(secret.encode()).digest() if secret else secrets.token_bytes(32)
    return Fernet(base64.urlsafe_b64encode(raw))


def pkce_pair() -> tuple[str, str]:
    """(verifier, S256 challenge) of RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def safe_return(path: str | None) -> str:
    """Where to send the browser after sign-in: a path of the UI, never another site."""
    if not path or not path.startswith(UI_PREFIX) or "\\" in path or any(ord(c) < 0x20 for c in path):
        return UI_PREFIX
    return path


def authorization_url(endpoint: str, config: OidcConfig, state: str, nonce: str, challenge: str) -> str:
    query = {"response_type": "code", "client_id": config.client_id, "redirect_uri": config.redirect_url,
             "scope": " ".join(config.scopes), "state": state, "nonce": nonce, "code_challenge": challenge,
             "code_challenge_method": "S256"}
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(query)}"


@dataclass(frozen=True)
class Login:
    """A login in progress, as its cookie carries it."""

    state: str
    nonce: str
    verifier: str
    return_to: str

    def seal(self, fernet: Fernet) -> str:
        return fernet.encrypt(json.dumps([self.state, self.nonce, self.verifier, self.return_to]).encode()).decode()

    @classmethod
    def open(cls, fernet: Fernet, sealed: str | None) -> Login | None:
        """The login the cookie holds, or None (none, forged, or older than LOGIN_SECONDS)."""
        try:
            state, nonce, verifier, return_to = json.loads(fernet.decrypt((sealed or "").encode(), ttl=LOGIN_SECONDS))
        except (InvalidToken, ValueError, TypeError):
            return None
        return cls(str(state), str(nonce), str(verifier), safe_return(str(return_to)))


def seal_session(fernet: Fernet, id_token: str) -> str:
    return fernet.encrypt(id_token.encode()).decode()


def open_session(fernet: Fernet, sealed: str | None) -> str | None:
    """The ID token a session cookie holds, or None. Its expiry is the API server's to judge."""
    if not sealed:
        return None
    try:
        return fernet.decrypt(sealed.encode()).decode()
    except (InvalidToken, ValueError):
        return None


def cookie(name: str, value: str, *, path: str, max_age: int, secure: bool, same_site: str) -> str:
    """A Set-Cookie value: HttpOnly always (no script reads it)."""
    parts = [f"{name}={value}", f"Path={path}", f"Max-Age={max(0, max_age)}", "HttpOnly", f"SameSite={same_site}"]
    if secure:
        parts.append("Secure")
    return "; ".join(parts)


class Oidc:
    """The provider's side of the flow (discovery, code exchange, ID token keys): I/O, in threads."""

    def __init__(self, config: OidcConfig) -> None:
        # Secure cookies when the browser reaches api.Service over HTTPS (also through a proxy or an
        # ingress that ends TLS): the redirect URL says how it does
        self.config, self.secure = config, config.redirect_url.startswith("https://")
        self.fernet = fernet_of(config.cookie_secret)
        self._http = requests.Session()
        # passed with each call: a Session's own `verify` loses to REQUESTS_CA_BUNDLE in the environment
        self._verify: str | bool = config.ca_file or True
        self._discovery: dict[str, Any] | None = None
        self._keys: jwt.PyJWKClient | None = None

    async def discovery(self) -> dict[str, Any]:
        if self._discovery is None:
            url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
            found = await self._get_json(url, "discovery")
            if found.get("issuer") != self.config.issuer:
                raise ApiError(503, "OidcMisconfigured", f"the provider at {url} names issuer {found.get('issuer')!r}, "
                               f"not {self.config.issuer!r} (COMPOZY_API_OIDC_ISSUER_URL must be exactly its issuer)")
            for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                if not isinstance(found.get(key), str):
                    raise ApiError(503, "OidcMisconfigured", f"the provider's discovery document has no {key}")
            self._discovery = found
            context = ssl.create_default_context(cafile=self.config.ca_file or None)
            self._keys = jwt.PyJWKClient(found["jwks_uri"], ssl_context=context, timeout=int(HTTP_SECONDS))
        return self._discovery

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            resp = await asyncio.to_thread(self._http.get, url, timeout=HTTP_SECONDS, verify=self._verify)
            resp.raise_for_status()
            body = resp.json()
        except (requests.RequestException, ValueError) as e:
            raise ApiError(503, "OidcUnavailable", f"the identity provider's {what} failed: {type(e).__name__}: "
                           f"{str(e)[:300]}") from None
        if not isinstance(body, dict):
            raise ApiError(503, "OidcUnavailable", f"the identity provider's {what} answered no JSON object")
        return body

    async def start(self, return_to: str | None) -> tuple[str, str]:
        """(the provider's authorization URL, the state cookie's value) of a new login."""
        endpoint = (await self.discovery())["authorization_endpoint"]
        verifier, challenge = pkce_pair()
        login = Login(secrets.token_urlsafe(24), secrets.token_urlsafe(24), verifier, safe_return(return_to))
        return authorization_url(endpoint, self.config, login.state, login.nonce, challenge), login.seal(self.fernet)

    async def finish(self, sealed: str | None, state: str, code: str) -> tuple[str, int, str]:
        """(ID token, its expiry, where to return) once the callback's state and code are checked."""
        login = Login.open(self.fernet, sealed)
        if login is None:
            raise ApiError(400, "LoginExpired", "no sign-in in progress in this browser (or it took longer than "
                           f"{LOGIN_SECONDS // 60} minutes): start again", "state")
        if not hmac.compare_digest(login.state, state):
            raise ApiError(400, "StateMismatch", "the state does not match this browser's sign-in", "state")
        found = await self.discovery()
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.config.redirect_url,
                "code_verifier": login.verifier}
        try:
            resp = await asyncio.to_thread(self._http.post, found["token_endpoint"], data=form, timeout=HTTP_SECONDS,
                                           auth=(self.config.client_id, self.config.client_secret), verify=self._verify)
            body = resp.json()
        except (requests.RequestException, ValueError) as e:
            raise ApiError(503, "OidcUnavailable", f"the code exchange failed: {type(e).__name__}") from None
        if resp.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("id_token"), str):
            why = body.get("error_description") or body.get("error") if isinstance(body, dict) else None
            raise ApiError(401, "CodeRefused", f"the identity provider refused the code ({resp.status_code}"
                           f"{': ' + str(why)[:300] if why else ''})", "code")
        token = body["id_token"]
        claims = await self.verify(token, login.nonce)
        return token, int(claims["exp"]), login.return_to

    async def verify(self, token: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims, once its signature, issuer, audience, expiry and nonce are right."""
        await self.discovery()
        assert self._keys is not None
        try:
            key = await asyncio.to_thread(self._keys.get_signing_key_from_jwt, token)
            claims: dict[str, Any] = jwt.decode(
                token, key.key, algorithms=ALGORITHMS, audience=self.config.client_id, issuer=self.config.issuer,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]}, leeway=30)
        except jwt.PyJWTError as e:
            raise ApiError(401, "InvalidIdToken", f"the ID token is not valid: {e}") from None
        if not hmac.compare_digest(str(claims.get("nonce") or ""), nonce):
            raise ApiError(401, "InvalidIdToken", "the ID token's nonce is not this sign-in's")
        return claims

    def session_cookie(self, token: str, expires: int) -> str:
        sealed = seal_session(self.fernet, token)
        if len(sealed) + len(SESSION_COOKIE) > MAX_COOKIE:
            raise ApiError(400, "IdTokenTooLarge", f"the ID token ({len(token)} bytes) does not fit in a cookie; ask "
                           "for fewer claims (COMPOZY_API_OIDC_SCOPES)")
        return cookie(SESSION_COOKIE, sealed, path="/", max_age=expires - int(time.time()), secure=self.secure,
                      same_site="Strict")

    def state_cookie(self, sealed: str) -> str:
        # Lax: the provider's redirect back is a cross-site navigation, on which Strict cookies stay home
        return cookie(STATE_COOKIE, sealed, path="/oauth2/", max_age=LOGIN_SECONDS, secure=self.secure,
                      same_site="Lax")

    def cleared(self, name: str) -> str:
        return cookie(name, "", path="/oauth2/" if name == STATE_COOKIE else "/", max_age=0, secure=self.secure,
                      same_site="Lax" if name == STATE_COOKIE else "Strict")

    def token_of(self, sealed: str | None) -> str | None:
        return open_session(self.fernet, sealed)
