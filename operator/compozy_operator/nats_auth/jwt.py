"""NATS JWTs (v2) on ed25519 nkeys: user claims, authorization request and response claims.

The format is nats-io/jwt's: ``base64url(header) . base64url(claims) . base64url(signature)``,
unpadded, header ``{"typ":"JWT","alg":"ed25519-nkey"}``, the signature an ed25519 signature by
the issuer's nkey (``iss``) over the first two parts. ``jti`` is nats-io/jwt's hash of the
registered claims, ``nats.type``/``nats.version`` say the claim's kind.

Written here on top of ``nkeys`` (nats-io's) rather than taken from PyPI's ``nats-jwt``: that
package says of itself it is not well tested, does not implement the authorization request and
response claims at all, and pins ``pytz<2025`` and ``pycryptodome`` (see README, design notes).
``nkeys`` 0.2.1 signs from a seed but cannot load a bare public key or make a new seed; the two
small helpers for that are here too (``public_key_raw``, ``new_seed``)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

import nacl.exceptions
import nacl.signing
import nkeys

HEADER = {"typ": "JWT", "alg": "ed25519-nkey"}
VERSION = 2
USER = "user"
AUTH_REQUEST = "authorization_request"
AUTH_RESPONSE = "authorization_response"
AUTH_REQUEST_AUDIENCE = "nats-authorization-request"  # the ``aud`` of every request the server sends
NO_LIMIT = -1
MAX_TOKEN_SIZE = 1024 * 1024  # as nats-io/jwt

# Which kind of key may issue each claim type (nats-io/jwt ExpectedPrefixes).
_ISSUER_PREFIX = {USER: nkeys.PREFIX_BYTE_ACCOUNT, AUTH_RESPONSE: nkeys.PREFIX_BYTE_ACCOUNT,
                  AUTH_REQUEST: nkeys.PREFIX_BYTE_SERVER}


class JwtError(ValueError):
    """A token that does not decode, whose signature does not verify, or that is not valid now."""


def new_seed(prefix: int) -> str:
    """A new random nkey seed (``SA...`` for ``nkeys.PREFIX_BYTE_ACCOUNT``, ``SU...`` for a user)."""
    return nkeys.encode_seed(os.urandom(32), prefix).decode()


def keypair(seed: str | bytes) -> nkeys.KeyPair:
    return nkeys.from_seed(seed.encode() if isinstance(seed, str) else seed)


def public_key(seed: str | bytes) -> str:
    return keypair(seed).public_key.decode()


def public_key_raw(public: str, prefix: int | None = None) -> bytes:
    """The 32 ed25519 bytes of an encoded public nkey (``A...``, ``U...``, ``N...``), its checksum
    and (when given) its kind checked."""
    try:
        raw = base64.b32decode(public + "=" * (-len(public) % 8))
    except (binascii.Error, ValueError):
        raise JwtError(f"not an nkey: {public[:12]!r}") from None
    if len(raw) != 35 or nkeys.crc16(bytearray(raw[:-2])) != int.from_bytes(raw[-2:], "little"):
        raise JwtError(f"not an nkey (length or checksum): {public[:12]!r}")
    if not nkeys.valid_public_prefix_byte(raw[0]) or (prefix is not None and raw[0] != prefix):
        raise JwtError(f"nkey {public[:12]!r} is not of the expected kind")
    return raw[1:33]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise JwtError("a part of the token is not base64url") from None


def _jti(claims: dict[str, Any]) -> str:
    """nats-io/jwt's id: SHA-512/256 of the registered claims' JSON (Go field order), base32."""
    registered = {k: claims[k] for k in ("aud", "exp", "iat", "iss", "name", "nbf", "sub") if claims.get(k)}
    digest = hashlib.new("sha512_256", json.dumps(registered, separators=(",", ":")).encode()).digest()
    return base64.b32encode(digest).rstrip(b"=").decode()


def encode(claims: dict[str, Any], signer: nkeys.KeyPair, now: float | None = None) -> str:
    """Sign ``claims`` (a dict with ``sub`` and ``nats.type``) as ``signer``: sets ``iss``, ``iat``, ``jti``."""
    kind = claims.get("nats", {}).get("type")
    issuer = signer.public_key.decode()
    if kind in _ISSUER_PREFIX:
        public_key_raw(issuer, _ISSUER_PREFIX[kind])
    if not claims.get("sub"):
        raise JwtError("subject is not set")
    body = {**claims, "iss": issuer, "iat": int(now if now is not None else time.time())}
    body.pop("jti", None)
    body = {"jti": _jti(body), **body}
    body["nats"] = {**body["nats"], "version": VERSION}
    signed = f"{_b64(json.dumps(HEADER, separators=(',', ':')).encode())}.{_b64(json.dumps(body, separators=(',', ':')).encode())}"
    return f"{signed}.{_b64(signer.sign(signed.encode()))}"


def decode(token: str, kind: str | None = None, issuer: str | None = None, now: float | None = None) -> dict[str, Any]:
    """The claims of ``token`` once its header, its signature by its ``iss``, the issuer's kind,
    and its times hold; ``kind`` (a ``nats.type``) and ``issuer`` are checked when given."""
    if len(token) > MAX_TOKEN_SIZE:
        raise JwtError("token too large")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("expected 3 parts")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise JwtError("header or claims are not JSON") from None
    if not isinstance(header, dict) or str(header.get("typ", "")).upper() != "JWT" \
            or str(header.get("alg", "")).lower() != HEADER["alg"]:
        raise JwtError(f"not a NATS JWT header: {header!r:.80}")
    if not isinstance(claims, dict) or not isinstance(claims.get("nats"), dict):
        raise JwtError("claims without a nats object")
    found = claims["nats"].get("type")
    if kind is not None and found != kind:
        raise JwtError(f"expected a {kind} claim, got {found!r}")
    iss = claims.get("iss")
    if not isinstance(iss, str):
        raise JwtError("no issuer")
    if issuer is not None and iss != issuer:
        raise JwtError(f"issued by {iss}, expected {issuer}")
    key = public_key_raw(iss, _ISSUER_PREFIX.get(found))
    try:
        nacl.signing.VerifyKey(key).verify(f"{parts[0]}.{parts[1]}".encode(), _unb64(parts[2]))
    except (nacl.exceptions.BadSignatureError, ValueError):
        raise JwtError("signature does not verify") from None
    t = int(now if now is not None else time.time())
    if claims.get("exp") and t > int(claims["exp"]):
        raise JwtError("token is expired")
    if claims.get("nbf") and int(claims["nbf"]) > t:
        raise JwtError("token is not yet valid")
    return claims


def user_claims(user_nkey: str, account: str, publish: list[str], subscribe: list[str], expires: int,
                name: str = "", response: tuple[int, float] | None = None) -> dict[str, Any]:
    """A user's claims placed in ``account`` (config mode: the account's name), allowed exactly
    ``publish`` and ``subscribe``. An empty list denies everything (``deny: [">"]``): a JWT with
    neither allow nor deny would allow everything. ``response`` = (max replies, seconds) lets the
    user answer requests it receives (``nats.resp``); none by default."""
    public_key_raw(user_nkey, nkeys.PREFIX_BYTE_USER)
    nats: dict[str, Any] = {
        "pub": {"allow": list(publish)} if publish else {"deny": [">"]},
        "sub": {"allow": list(subscribe)} if subscribe else {"deny": [">"]},
        "subs": NO_LIMIT, "data": NO_LIMIT, "payload": NO_LIMIT, "type": USER,
    }
    if response is not None:
        nats["resp"] = {"max": response[0], "ttl": int(response[1] * 1e9)}
    claims: dict[str, Any] = {"aud": account, "exp": int(expires), "sub": user_nkey, "nats": nats}
    if name:
        claims["name"] = name
    return claims


def authorization_response(user_nkey: str, server_id: str, user_jwt: str | None = None,
                           error: str | None = None) -> dict[str, Any]:
    """The answer to one authorization request: the user's JWT, or an error (exactly one)."""
    if (user_jwt is None) == (error is None):
        raise ValueError("an authorization response carries either a user JWT or an error")
    nats: dict[str, Any] = {"type": AUTH_RESPONSE}
    if user_jwt is not None:
        nats["jwt"] = user_jwt
    else:
        nats["error"] = error
    return {"aud": server_id, "sub": user_nkey, "nats": nats}


@dataclass(frozen=True)
class AuthorizationRequest:
    """What the server asks about one connecting client (the parts the callout uses)."""

    server_id: str  # the answer's audience
    user_nkey: str  # the answer's subject, and the user JWT's
    token: str | None  # connect option ``auth_token``
    user: str | None
    password: str | None
    client_name: str | None
    client_host: str | None
    expires: int | None
    client_id: int | None = None  # the server's id of the connection (cid: what a kick names)

    @property
    def credential(self) -> str | None:
        """What the client presented as its secret: the token, else the password."""
        return self.token or self.password or None


def decode_authorization_request(token: str, server: str | None = None, now: float | None = None) -> AuthorizationRequest:
    """A request's claims, signed by a server key (``server``, when known, exactly)."""
    claims = decode(token, AUTH_REQUEST, server, now)
    if claims.get("aud") != AUTH_REQUEST_AUDIENCE:
        raise JwtError(f"request audience {claims.get('aud')!r}")
    nats = claims["nats"]
    server_id = (nats.get("server_id") or {}).get("id")
    user_nkey = nats.get("user_nkey")
    if not isinstance(server_id, str) or not isinstance(user_nkey, str):
        raise JwtError("request without server id or user nkey")
    if claims["iss"] != server_id:
        raise JwtError("request not signed by the server it names")
    public_key_raw(user_nkey, nkeys.PREFIX_BYTE_USER)
    opts = nats.get("connect_opts") or {}
    info = nats.get("client_info") or {}
    return AuthorizationRequest(server_id, user_nkey, opts.get("auth_token"), opts.get("user"), opts.get("pass"),
                                info.get("name"), info.get("host"), claims.get("exp"),
                                info["id"] if isinstance(info.get("id"), int) and not isinstance(info.get("id"), bool)
                                else None)
