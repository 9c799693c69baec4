"""Who is calling, and may they: Kubernetes bearer tokens (TokenReview), client certificates signed by
the cluster's client CA, and RBAC (SubjectAccessReview).

No user database: the API server authenticates the token (or the TLS handshake verified the client
certificate against the CA the API server itself trusts for users) and RBAC decides, so ``kubectl auth can-i
create workflowexecutions -n NS --as USER`` answers whether USER may trigger a run in NS. Answers
are cached briefly (as the API server's own webhook authenticator and authorizer do), in a bounded
cache keyed by a hash of the token: a revoked token or role stays usable for at most ``ttl`` seconds.
Any failure to ask is a refusal (503), never a grant.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import time
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..kube import Kube
from ..resources.models import GROUP
from .models import ApiError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
RESOURCE = "workflowexecutions"
WORKFLOWS = "workflows"
ANONYMOUS = "system:anonymous"
AUTHENTICATED = "system:authenticated"


@dataclass(frozen=True)
class User:
    name: str
    uid: str
    groups: tuple[str, ...]
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def review_spec(self) -> dict[str, Any]:
        """The subject of a SubjectAccessReview: this user as the API server authenticated them."""
        spec: dict[str, Any] = {"user": self.name, "groups": list(self.groups)}
        if self.uid:
            spec["uid"] = self.uid
        if self.extra:
            spec["extra"] = {k: list(v) for k, v in self.extra}
        return spec


def local_user(name: str, groups: tuple[str, ...], host: str) -> User | None:
    """The user a request without a token acts as (``COMPOZY_API_LOCAL_USER``), or None (the
    default: such a request is a 401). Only for an API listening on a loopback address, where the
    caller is someone on the machine who has the cluster's kubeconfig anyway (``compozy dev``); an
    API reachable from a network would grant that user to anyone who can connect."""
    if not name:
        return None
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ValueError(f"COMPOZY_API_LOCAL_USER is set, but the API listens on {host!r}: a local user without "
                         "sign-in is only allowed when COMPOZY_API_HOST is a loopback address (127.0.0.1)")
    if name == ANONYMOUS:
        raise ValueError(f"COMPOZY_API_LOCAL_USER may not be {ANONYMOUS}")
    return User(name, "", groups)


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; 401 without one."""
    scheme, _, token = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "Unauthorized", "an Authorization: Bearer <Kubernetes token> header is required")
    return token.strip()


def certificate_user(subject: Any) -> User | None:
    """The user a verified client certificate names, mapped as the API server maps it: the subject's
    common name is the user, its organizations the groups (plus ``system:authenticated``). None for
    a certificate without a common name (the API server refuses those too) or an anonymous one.

    ``subject``: the ``subject`` of :meth:`ssl.SSLSocket.getpeercert` (a tuple of RDNs, each a tuple
    of (attribute, value) pairs)."""
    pairs = [pair for rdn in subject or () for pair in rdn if isinstance(pair, tuple) and len(pair) == 2]
    names = [str(v) for k, v in pairs if k == "commonName"]
    if len(names) != 1 or not names[0] or names[0] == ANONYMOUS:
        return None
    groups = tuple(dict.fromkeys([*(str(v) for k, v in pairs if k == "organizationName"), AUTHENTICATED]))
    return User(names[0], "", groups)


def reviewed_user(status: dict[str, Any]) -> User | None:
    """The user a TokenReview's status authenticated, or None (not authenticated, or anonymous)."""
    user = status.get("user") or {}
    name = user.get("username")
    if status.get("authenticated") is not True or not isinstance(name, str) or not name or name == ANONYMOUS:
        return None
    extra = tuple(sorted((str(k), tuple(map(str, v))) for k, v in (user.get("extra") or {}).items()
                         if isinstance(v, list)))
    return User(name, str(user.get("uid") or ""), tuple(map(str, user.get("groups") or ())), extra)


def access_review(user: User, verb: str, namespace: str, name: str | None = None,
                  resource: str = RESOURCE) -> dict[str, Any]:
    """The SubjectAccessReview of ``verb`` on ``resource`` (WorkflowExecutions by default; one, with
    ``name``) in ``namespace`` (``""``: in every namespace, as ``kubectl --all-namespaces`` asks)."""
    attributes = {"namespace": namespace, "verb": verb, "group": GROUP, "resource": resource}
    if name:
        attributes["name"] = name
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {**user.review_spec(), "resourceAttributes": attributes}}


def forbidden(user: User, verb: str, namespace: str, why: str = "", resource: str = RESOURCE) -> ApiError:
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    message = f'User "{user.name}" cannot {verb} resource "{resource}" in API group "{GROUP}" {where}'
    return ApiError(403, "Forbidden", f"{message}: {why}" if why else message)


class TtlCache(Generic[K, V]):
    """At most ``size`` entries, each for ``ttl`` seconds; the least recently used goes first."""

    def __init__(self, ttl: float, size: int) -> None:
        self.ttl, self.size = ttl, size
        self._items: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        if item is None or item[0] < time.monotonic():
            self._items.pop(key, None)
            return None
        self._items.move_to_end(key)
        return item[1]

    def put(self, key: K, value: V) -> None:
        self._items[key] = (time.monotonic() + self.ttl, value)
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)


class Authorizer:
    """TokenReview and SubjectAccessReview through the operator's own client (it may create both)."""

    def __init__(self, kube: Kube, ttl: float = 10, size: int = 4096) -> None:
        self.kube = kube
        self.users: TtlCache[str, tuple[User | None]] = TtlCache(ttl, size)  # (None,): refused
        self.decisions: TtlCache[tuple[User, str, str, str, str], tuple[bool, str]] = TtlCache(ttl, size)

    async def authenticate(self, token: str) -> User:
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self.users.get(key)
        if cached is None:
            body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
            status = (await self._post("tokenreviews", "authentication.k8s.io", body)).get("status") or {}
            cached = (reviewed_user(status),)
            self.users.put(key, cached)
        user = cached[0]
        if user is None:
            raise ApiError(401, "Unauthorized", "the bearer token is not valid (expired, revoked, or not a "
                           "Kubernetes token), or anonymous")
        return user

    async def authorize(self, user: User, verb: str, namespace: str, name: str | None = None,
                        resource: str = RESOURCE) -> None:
        allowed, why = await self.decide(user, verb, namespace, name, resource)
        if not allowed:
            raise forbidden(user, verb, namespace, why, resource)

    async def decide(self, user: User, verb: str, namespace: str, name: str | None = None,
                     resource: str = RESOURCE) -> tuple[bool, str]:
        """(allowed, the authorizer's reason): the SubjectAccessReview's answer, cached."""
        key = (user, verb, namespace, name or "", resource)
        decision = self.decisions.get(key)
        if decision is None:
            status = (await self._post("subjectaccessreviews", "authorization.k8s.io",
                                       access_review(user, verb, namespace, name, resource))).get("status") or {}
            decision = (status.get("allowed") is True and status.get("denied") is not True,
                        str(status.get("reason") or ""))
            self.decisions.put(key, decision)
        return decision

    async def _post(self, resource: str, group: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            return await asyncio.to_thread(self.kube.request, "POST", f"/apis/{group}/v1/{resource}", body)
        except Exception as e:  # noqa: BLE001 - API server unreachable or refusing the operator: fail closed
            reason = getattr(e, "reason", None) or type(e).__name__
            raise ApiError(503, "ServiceUnavailable", f"could not check the caller's credentials with the "
                           f"API server ({resource}: {reason}); try again") from None
