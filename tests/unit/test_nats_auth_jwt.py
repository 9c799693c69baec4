"""NATS JWTs (nats_auth.jwt): round trips, and every way a token must be refused."""

from __future__ import annotations

import base64
import json
import time

import nkeys
import pytest

from compozy_operator.nats_auth import jwt

ACCOUNT_SEED = jwt.new_seed(nkeys.PREFIX_BYTE_ACCOUNT)
ACCOUNT = jwt.keypair(ACCOUNT_SEED)
USER = jwt.public_key(jwt.new_seed(nkeys.PREFIX_BYTE_USER))
SERVER_SEED = jwt.new_seed(nkeys.PREFIX_BYTE_SERVER)
SERVER = jwt.public_key(SERVER_SEED)


def _user_token(expires: int | None = None, **kw: object) -> str:
    claims = jwt.user_claims(USER, "COMPOZY", ["compozy.log.a.b.x"], ["compozy.cmd.a.b.workflow.cancel"],
                             expires or int(time.time()) + 600, name="task:a/b", **kw)  # type: ignore[arg-type]
    return jwt.encode(claims, ACCOUNT)


def _parts(token: str) -> list[dict]:
    head, body, _ = token.split(".")
    return [json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4))) for p in (head, body)]


def test_keys_have_their_kind() -> None:
    assert ACCOUNT_SEED.startswith("SA") and ACCOUNT.public_key.decode().startswith("A")
    assert USER.startswith("U") and SERVER.startswith("N")
    assert len(jwt.public_key_raw(USER, nkeys.PREFIX_BYTE_USER)) == 32
    with pytest.raises(jwt.JwtError, match="kind"):
        jwt.public_key_raw(USER, nkeys.PREFIX_BYTE_ACCOUNT)
    broken = USER[:-1] + ("A" if USER[-1] != "A" else "B")
    with pytest.raises(jwt.JwtError):
        jwt.public_key_raw(broken)


def test_user_jwt_round_trip_and_format() -> None:
    token = _user_token()
    assert "=" not in token
    header, body = _parts(token)
    assert header == {"typ": "JWT", "alg": "ed25519-nkey"}
    assert body["iss"] == ACCOUNT.public_key.decode() and body["sub"] == USER and body["aud"] == "COMPOZY"
    assert body["nats"]["type"] == "user" and body["nats"]["version"] == 2
    assert body["nats"]["pub"] == {"allow": ["compozy.log.a.b.x"]}
    assert body["nats"]["sub"] == {"allow": ["compozy.cmd.a.b.workflow.cancel"]}
    assert "resp" not in body["nats"]
    assert len(body["jti"]) == 52  # base32 of SHA-512/256, as nats-io/jwt
    claims = jwt.decode(token, jwt.USER, issuer=ACCOUNT.public_key.decode())
    assert claims == body


def test_empty_allow_list_denies_everything() -> None:
    # a user JWT without pub/sub permissions would be allowed everything
    claims = jwt.user_claims(USER, "COMPOZY", [], [], int(time.time()) + 60)
    assert claims["nats"]["pub"] == {"deny": [">"]} and claims["nats"]["sub"] == {"deny": [">"]}


def test_response_permission_only_when_asked() -> None:
    claims = jwt.user_claims(USER, "COMPOZY", ["a"], ["b"], 1, response=(1, 2.5))
    assert claims["nats"]["resp"] == {"max": 1, "ttl": 2_500_000_000}


def test_tampered_signature_is_refused() -> None:
    head, body, sig = _user_token().split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
    raw[0] ^= 1
    forged = f"{head}.{body}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode()}"
    with pytest.raises(jwt.JwtError, match="signature"):
        jwt.decode(forged)


def test_tampered_claims_are_refused() -> None:
    head, body, sig = _user_token().split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["nats"]["pub"]["allow"] = [">"]
    forged_body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(jwt.JwtError, match="signature"):
        jwt.decode(f"{head}.{forged_body}.{sig}")


def test_a_token_signed_by_another_key_claiming_our_issuer_is_refused() -> None:
    other = jwt.keypair(jwt.new_seed(nkeys.PREFIX_BYTE_ACCOUNT))
    token = jwt.encode(jwt.user_claims(USER, "COMPOZY", ["a"], ["b"], int(time.time()) + 60), other)
    with pytest.raises(jwt.JwtError, match="issued by"):
        jwt.decode(token, issuer=ACCOUNT.public_key.decode())
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims["iss"] = ACCOUNT.public_key.decode()
    swapped = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(jwt.JwtError, match="signature"):
        jwt.decode(f"{head}.{swapped}.{sig}")


def test_expired_and_not_yet_valid_tokens_are_refused() -> None:
    now = time.time()
    expired = _user_token(expires=int(now) - 1)
    with pytest.raises(jwt.JwtError, match="expired"):
        jwt.decode(expired)
    assert jwt.decode(expired, now=now - 10)["exp"] == int(now) - 1
    claims = {**jwt.user_claims(USER, "COMPOZY", ["a"], ["b"], int(now) + 600), "nbf": int(now) + 300}
    with pytest.raises(jwt.JwtError, match="not yet valid"):
        jwt.decode(jwt.encode(claims, ACCOUNT))


def test_malformed_tokens_are_refused() -> None:
    token = _user_token()
    for bad in ("", "a.b", token + ".x", "!!!." + token.split(".", 1)[1], "x" * (jwt.MAX_TOKEN_SIZE + 1)):
        with pytest.raises(jwt.JwtError):
            jwt.decode(bad)
    head = base64.urlsafe_b64encode(b'{"typ":"JWT","alg":"HS256"}').rstrip(b"=").decode()
    with pytest.raises(jwt.JwtError, match="header"):
        jwt.decode(head + "." + token.split(".", 1)[1])
    with pytest.raises(jwt.JwtError, match="expected a authorization_response"):
        jwt.decode(token, jwt.AUTH_RESPONSE)


def test_user_claims_must_be_issued_by_an_account_key() -> None:
    user_key = jwt.keypair(jwt.new_seed(nkeys.PREFIX_BYTE_USER))
    with pytest.raises(jwt.JwtError, match="kind"):
        jwt.encode(jwt.user_claims(USER, "COMPOZY", ["a"], ["b"], 1), user_key)


def test_authorization_response_carries_a_jwt_or_an_error() -> None:
    user_jwt = _user_token()
    ok = jwt.decode(jwt.encode(jwt.authorization_response(USER, SERVER, user_jwt=user_jwt), ACCOUNT), jwt.AUTH_RESPONSE)
    assert ok["aud"] == SERVER and ok["sub"] == USER and ok["nats"]["jwt"] == user_jwt
    refused = jwt.decode(jwt.encode(jwt.authorization_response(USER, SERVER, error="no"), ACCOUNT))
    assert refused["nats"] == {"type": "authorization_response", "error": "no", "version": 2}
    for kw in ({}, {"user_jwt": user_jwt, "error": "no"}):
        with pytest.raises(ValueError):
            jwt.authorization_response(USER, SERVER, **kw)


def _request(signer_seed: str = SERVER_SEED, server_id: str = SERVER, **opts: object) -> str:
    claims = {"aud": jwt.AUTH_REQUEST_AUDIENCE, "sub": ACCOUNT.public_key.decode(), "exp": int(time.time()) + 2,
              "nats": {"server_id": {"name": "n", "host": "127.0.0.1", "id": server_id}, "user_nkey": USER,
                       "client_info": {"host": "127.0.0.1", "name": "task-x"}, "connect_opts": opts,
                       "type": jwt.AUTH_REQUEST}}
    return jwt.encode(claims, jwt.keypair(signer_seed))


def test_authorization_request_is_read() -> None:
    request = jwt.decode_authorization_request(_request(auth_token="tok", protocol=1))
    assert (request.server_id, request.user_nkey, request.token, request.credential) == (SERVER, USER, "tok", "tok")
    assert request.client_name == "task-x"
    by_password = jwt.decode_authorization_request(_request(user="u", **{"pass": "pw"}))
    assert by_password.credential == "pw"
    assert jwt.decode_authorization_request(_request()).credential is None


def test_authorization_request_from_elsewhere_is_refused() -> None:
    other = jwt.new_seed(nkeys.PREFIX_BYTE_SERVER)
    with pytest.raises(jwt.JwtError, match="not signed by the server"):
        jwt.decode_authorization_request(_request(signer_seed=other))
    with pytest.raises(jwt.JwtError, match="issued by"):
        jwt.decode_authorization_request(_request(), server=jwt.public_key(other))
    with pytest.raises(jwt.JwtError, match="kind"):  # a request must come from a server key
        jwt.decode_authorization_request(_request(signer_seed=ACCOUNT_SEED, server_id=ACCOUNT.public_key.decode()))
