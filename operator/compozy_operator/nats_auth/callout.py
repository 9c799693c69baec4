"""The NATS auth callout service: a task pod's ServiceAccount token in, its attempt's NATS user out
(and a pool runner's token in, the runner's or one of its attempts' user out).

nats-server (>= 2.10, ``authorization { auth_callout { ... } }``) sends every connecting client
that is none of its configured users to ``$SYS.REQ.USER.AUTH`` as an authorization request JWT
(signed by the server, naming the server's id and a fresh user nkey, with the client's connect
options). For each, this service:

1. takes the presented secret (connect option ``auth_token``, else the password),
2. has the API server review it (TokenReview, audience ``compozy-nats``): a projected token bound
   to a pod names the pod (``authentication.kubernetes.io/pod-name`` and ``pod-uid``),
3. gets that pod, and lets :func:`.decision.decide` say whether it is an attempt's task pod or a
   pool runner; a runner's process that names a pooled attempt (connect option ``user``) is then
   proven by that attempt's command (read from NATS with the operator's connection: ``commands``)
   and its run's status (the WorkflowExecution from the API server: :func:`.decision.decide_pool_attempt`),
4. answers with an authorization response JWT signed by the account issuer key: the user JWT
   (subject the request's user nkey, audience the application account, the attempt's exact
   permissions, expiring no later than the token), or an error. The server enforces it.

Every answer is counted in ``compozy_nats_auth_total{result}`` (``granted`` or a refusal reason of
:mod:`.decision`) and logged. Any failure to check (API server unreachable) is a refusal.

A granted connection is remembered by its pod (the server's id and the connection's). When that pod
ends or is deleted (:meth:`CalloutService.end_pod`, from the operator's pod watch), each is closed
through the system account (``$SYS.REQ.SERVER.<id>.KICK``): a token taken out of a pod stops working
with its pod, not at its JWT's expiry. Counted in ``compozy_nats_kicks_total{result}``.

Run it in the operator process (:class:`CalloutService`) or alone: ``python -m
compozy_operator.nats_auth.callout`` with the environment of :meth:`CalloutConfig.from_env`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import ssl
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from collections.abc import Awaitable, Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import Counter, Histogram

from ..kube import ApiException, Kube
from . import jwt
from .keys import AUTH_SUBJECT, KICK_INBOX, KICK_SUBJECT
from ..resources.paths import executions_path
from ..wire import command_subject
from .decision import AUDIENCE, COMPONENT, DEFAULT_MAX_TTL, ERROR, INVALID_REQUEST, NO_TOKEN, POD_GONE, Grant, \
    PoolAttempt, PodRef, Refusal, decide, decide_pool_attempt, reviewed_pod, token_expiry
from ..pools import RUNNER_COMPONENT

log = logging.getLogger(__name__)

GRANTED = "granted"
AUTH_TOTAL = Counter("compozy_nats_auth_total", "NATS connections the auth callout answered, by result "
                     "(granted, or why refused)", ["result"])
KICKS = Counter("compozy_nats_kicks_total", "Task and runner pod NATS connections closed because their pod ended, "
                "by result (kicked; gone: already closed; error)", ["result"])
REVIEWS = Counter("compozy_nats_token_reviews_total", "Tokens the auth callout checked, by where their review "
                  "came from (api: a TokenReview and a pod GET; kept: a runner token's, kept from its last login)",
                  ["source"])
REMEMBERED_PODS = 50_000  # pods whose connections are remembered (the oldest are forgotten beyond)
# connections remembered per pod, the newest: a pool runner's token logs in once per attempt it runs
# (thousands in a long life; those of ended attempts are closed already, and an older one a tool kept
# open lives until its JWT's expiry)
REMEMBERED_PER_POD = 1024
# A runner pod's token logs in once per attempt it runs: its TokenReview and pod are kept this long
# (never past the token's expiry) and dropped the moment its pod ends or is deleted (the operator's
# pod watch: end_pod), so a pooled attempt's login costs the two reads that prove the attempt only.
RUNNER_REVIEW_SECONDS = 10.0
RUNNER_REVIEWS = 1024  # runner tokens kept (the least recently used are dropped beyond)
ENDED_PODS = 4096  # uids of pods seen ended, newest: a grant checked while its pod ended is refused
AUTH_SECONDS = Histogram("compozy_nats_auth_duration_seconds", "Time to answer one NATS authorization request "
                         "(TokenReview and pod lookup included)",
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))


@dataclass(frozen=True)
class CalloutConfig:
    url: str
    issuer_seed: str  # the account nkey seed (``SA...``) that signs; its public key is auth_callout.issuer
    account: str  # where granted users are placed (config mode: the account's name)
    user: str | None = None  # the callout service's own NATS user (one of auth_callout.auth_users)
    password: str | None = None
    token: str | None = None
    ca: str | None = None  # PEM of a private CA of the NATS server's TLS certificate
    audience: str = AUDIENCE
    max_ttl: int = DEFAULT_MAX_TTL
    system_user: str | None = None  # a system-account user that may send KICK (else nothing is kicked)
    system_password: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> CalloutConfig:
        e = os.environ if env is None else env
        return cls(url=e["COMPOZY_NATS_URL"], issuer_seed=e["COMPOZY_NATS_CALLOUT_ISSUER_SEED"],
                   account=e.get("COMPOZY_NATS_ACCOUNT", "COMPOZY"),
                   user=e.get("COMPOZY_NATS_CALLOUT_USER") or None, password=e.get("COMPOZY_NATS_CALLOUT_PASSWORD") or None,
                   token=e.get("COMPOZY_NATS_CALLOUT_TOKEN") or None, ca=e.get("COMPOZY_NATS_CA") or None,
                   audience=e.get("COMPOZY_NATS_AUDIENCE", AUDIENCE),
                   max_ttl=int(e.get("COMPOZY_NATS_MAX_TTL_SECONDS") or DEFAULT_MAX_TTL))


CommandReader = Callable[[str], Awaitable[tuple[str, Any] | None]]  # bus.Bus.get_command


class CalloutService:
    def __init__(self, config: CalloutConfig, kube: Kube, concurrency: int = 16,
                 commands: CommandReader | None = None, pods_watched: bool = False) -> None:
        """``commands``: reads the TaskExecute command stored on a subject (the operator's
        connection); without it, no pooled attempt's identity can be proven, and none is granted.
        ``pods_watched``: :meth:`end_pod` is called for every task and runner pod that ends (the
        operator's pod watch), so a runner token's review may be reused until then."""
        self.config = config
        self.kube = kube
        self.commands = commands
        self.review_seconds = RUNNER_REVIEW_SECONDS if pods_watched else 0.0
        # sha256 of a runner's token -> (kept until, its TokenReview status, its pod)
        self.reviews: OrderedDict[str, tuple[float, dict[str, Any], dict[str, Any]]] = OrderedDict()
        self.ended: OrderedDict[str, None] = OrderedDict()
        self.signer = jwt.keypair(config.issuer_seed)
        self.issuer = self.signer.public_key.decode()
        self.nc: Client | None = None
        self.system: Client | None = None
        self.connections: OrderedDict[str, deque[tuple[str, int]]] = OrderedDict()  # pod uid -> (server, cid)
        self._limit = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> CalloutService:
        c = self.config
        tls = ssl.create_default_context(cadata=c.ca) if c.ca else None
        self.nc = await nats.connect(c.url, user=c.user, password=c.password, token=c.token, tls=tls,
                                     name="compozy-nats-callout", connect_timeout=5, max_reconnect_attempts=-1,
                                     reconnect_time_wait=1, error_cb=self._on_error)
        await self.nc.subscribe(AUTH_SUBJECT, cb=self._on_request)
        await self.nc.flush()
        if c.system_user:
            self.system = await nats.connect(c.url, user=c.system_user, password=c.system_password, tls=tls,
                                             name="compozy-nats-kick", inbox_prefix=KICK_INBOX, connect_timeout=5,
                                             max_reconnect_attempts=-1, reconnect_time_wait=1, error_cb=self._on_error)
        log.info("NATS auth callout answering %s (issuer %s, account %s)", AUTH_SUBJECT, self.issuer, c.account)
        return self

    async def stop(self) -> None:
        nc, self.nc = self.nc, None
        for task in list(self._tasks):
            task.cancel()
        if nc is not None:
            await nc.close()
        system, self.system = self.system, None
        if system is not None:
            await system.close()

    def remember(self, pod_uid: str, server_id: str, client_id: int | None) -> None:
        if client_id is None:
            return
        self.connections.setdefault(pod_uid, deque(maxlen=REMEMBERED_PER_POD)).append((server_id, client_id))
        self.connections.move_to_end(pod_uid)
        while len(self.connections) > REMEMBERED_PODS:
            self.connections.popitem(last=False)

    async def end_pod(self, pod_uid: str) -> None:
        """Close the connections granted to a pod that has ended or is gone; grant it nothing more."""
        self.ended[pod_uid] = None
        while len(self.ended) > ENDED_PODS:
            self.ended.popitem(last=False)
        for key in [k for k, (_, _, pod) in self.reviews.items() if pod["metadata"].get("uid") == pod_uid]:
            del self.reviews[key]
        for server_id, client_id in self.connections.pop(pod_uid, ()):
            KICKS.labels(result=await self._kick(server_id, client_id)).inc()

    async def _kick(self, server_id: str, client_id: int) -> str:
        if self.system is None:
            return "error"
        try:
            reply = await self.system.request(KICK_SUBJECT.replace("*", server_id),
                                              json.dumps({"cid": client_id}).encode(), timeout=2)
            answer = json.loads(reply.data)
        except Exception as e:  # noqa: BLE001 - the JWT's expiry still ends it
            log.warning("NATS kick of connection %d on %s failed: %s", client_id, server_id, e)
            return "error"
        return "gone" if isinstance(answer, dict) and answer.get("error") else "kicked"

    async def _on_error(self, e: Exception) -> None:
        log.warning("NATS auth callout connection: %s", e)

    async def _on_request(self, msg: Msg) -> None:
        task = asyncio.create_task(self._answer(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, msg: Msg) -> None:
        async with self._limit:
            started = time.monotonic()
            response = await self.respond(msg.data)
            AUTH_SECONDS.observe(time.monotonic() - started)
        try:
            await msg.respond(response)
        except Exception as e:  # noqa: BLE001 - the server times the client out; nothing else to do
            log.warning("NATS auth callout could not answer: %s", e)

    async def respond(self, data: bytes) -> bytes:
        """The encoded authorization response to one request (an empty answer when the request
        itself is unreadable: the server refuses the client)."""
        try:
            request = jwt.decode_authorization_request(data.decode())
        except (jwt.JwtError, UnicodeDecodeError) as e:
            self._count(Refusal(INVALID_REQUEST, f"unreadable authorization request: {e}"), None)
            return b""
        outcome = await self.authorize(request)
        self._count(outcome, request)
        if isinstance(outcome, Grant):
            self.remember(outcome.pod.uid, request.server_id, request.client_id)
            p = outcome.permissions
            claims = jwt.user_claims(request.user_nkey, self.config.account, list(p.publish), list(p.subscribe),
                                     outcome.expires, name=outcome.user_name)
            answer = jwt.authorization_response(request.user_nkey, request.server_id,
                                                user_jwt=jwt.encode(claims, self.signer))
        else:
            answer = jwt.authorization_response(request.user_nkey, request.server_id, error=outcome.message)
        return jwt.encode(answer, self.signer).encode()

    async def authorize(self, request: jwt.AuthorizationRequest) -> Grant | Refusal:
        outcome = await self._authorize(request)
        if isinstance(outcome, Grant) and outcome.pod.uid in self.ended:  # it ended (was kicked) meanwhile
            return Refusal(POD_GONE, f"pod {outcome.pod.namespace}/{outcome.pod.name} has ended")
        return outcome

    async def _authorize(self, request: jwt.AuthorizationRequest) -> Grant | Refusal:
        token = request.credential
        if not token:
            return Refusal(NO_TOKEN, "no token presented")
        try:
            status, pod = await self._checked(token)
        except Exception as e:  # noqa: BLE001 - fail closed
            return Refusal(ERROR, f"could not check the token: {type(e).__name__}: {str(e)[:200]}")
        outcome = decide(status, pod, token_expiry(token), time.time(), self.config.max_ttl, self.config.audience,
                         request.user)
        if not isinstance(outcome, PoolAttempt):
            return outcome
        if self.commands is None:
            return Refusal(ERROR, "this callout service reads no commands: it cannot prove a pooled attempt")
        w = outcome.work
        try:
            execution = await asyncio.to_thread(self._execution, w.namespace, w.execution)
            command = await self.commands(command_subject(w.namespace, w.execution, w.task, w.attempt))
        except Exception as e:  # noqa: BLE001 - fail closed
            return Refusal(ERROR, f"could not check the pooled attempt: {type(e).__name__}: {str(e)[:200]}")
        return decide_pool_attempt(outcome, execution, command)

    async def _checked(self, token: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """The token's TokenReview status and the pod it is bound to (None: none, or not found); a
        runner pod's kept for a while (RUNNER_REVIEW_SECONDS)."""
        key, now = hashlib.sha256(token.encode()).hexdigest(), time.time()
        kept = self.reviews.get(key)
        if kept is not None and kept[0] > now:
            self.reviews.move_to_end(key)
            REVIEWS.labels(source="kept").inc()
            return kept[1], kept[2]
        self.reviews.pop(key, None)
        REVIEWS.labels(source="api").inc()
        status = await asyncio.to_thread(self._review, token)
        ref = reviewed_pod(status, self.config.audience)
        pod = await asyncio.to_thread(self._pod, ref) if isinstance(ref, PodRef) else None
        meta = (pod or {}).get("metadata") or {}
        until = min(now + self.review_seconds, token_expiry(token) or now)
        if until > now and pod is not None and (meta.get("labels") or {}).get(COMPONENT) == RUNNER_COMPONENT \
                and meta.get("uid") not in self.ended:
            self.reviews[key] = (until, status, pod)
            while len(self.reviews) > RUNNER_REVIEWS:
                self.reviews.popitem(last=False)
        return status, pod

    def _review(self, token: str) -> dict[str, Any]:
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": [self.config.audience]}}
        return self.kube.request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body).get("status") or {}

    def _pod(self, ref: PodRef) -> dict[str, Any] | None:
        return self._get(f"/api/v1/namespaces/{ref.namespace}/pods/{ref.name}")

    def _execution(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(executions_path(namespace, name))

    def _get(self, path: str) -> dict[str, Any] | None:
        try:
            return self.kube.get(path)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def _count(self, outcome: Grant | Refusal, request: jwt.AuthorizationRequest | None) -> None:
        client = f"{request.client_name or '-'}@{request.client_host or '?'}" if request else "?"
        if isinstance(outcome, Grant):
            AUTH_TOTAL.labels(result=GRANTED).inc()
            log.info("NATS auth: granted %s (%s) to %s until %s", outcome.user_name, outcome.what, client,
                     time.strftime("%H:%M:%SZ", time.gmtime(outcome.expires)))
        else:
            AUTH_TOTAL.labels(result=outcome.reason).inc()
            log.warning("NATS auth: refused %s (%s): %s", client, outcome.reason, outcome.message)


async def _main() -> None:
    service = await CalloutService(CalloutConfig.from_env(), Kube.from_environment()).start()
    try:
        await asyncio.Event().wait()
    finally:
        await service.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_main())
