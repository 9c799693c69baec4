"""api.Service: the HTTP API and the NATS trigger, served by the operator process.

A supervised loop of the operator (operator_main.py): it serves the FastAPI application with
uvicorn on its own port (``COMPOZY_API_PORT``) and answers trigger requests on
``compozy.api.<ns>.workflow.trigger`` over the operator's NATS connection. Every authenticated
request is one LogEmitted line (component ``api``) of the run it is about, or for requests about
no single run (a list, a refused trigger) of the pseudo-run ``-`` of its namespace
(``compozy.log.<ns>.-.-.api``; no WorkflowExecution can be named ``-``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import uvicorn
from nats.aio.msg import Msg
from uvicorn.protocols.http.h11_impl import H11Protocol
from pydantic import ValidationError

from ..bus import Bus
from ..events import API_TRIGGER_SUBJECTS, token
from ..kube import Kube
from .auth import Authorizer, User, bearer_token
from .http import PEER_SUBJECT, REQUESTS, create_app
from .models import NAMESPACE_PATTERN, ApiError, NatsTriggerRequest
from .oidc import Oidc, OidcConfig
from .operations import Operations
from .streams import RunState, Streams

log = logging.getLogger(__name__)
TRIGGER_SUBJECT = API_TRIGGER_SUBJECTS
TRIGGER_QUEUE = "compozy-api"  # several operator processes share the requests
CERT_CHECK_SECONDS = 30.0  # how often the serving certificate's file is checked for a renewal
TRIGGER_CONCURRENCY = 16  # NATS trigger requests answered at once (each waits on the API server)
STATUS_HEADER = "Compozy-Status"  # the HTTP status code the same request would have got
NATS_TRIGGER_ROUTE = "nats:" + TRIGGER_SUBJECT
NO_RUN = "-"


def trigger_subject(namespace: str) -> str:
    return f"compozy.api.{token(namespace)}.workflow.trigger"


@dataclass
class Context:
    """What the HTTP routes and the NATS trigger share."""

    operations: Operations
    authorizer: Authorizer
    streams: Streams
    bus: Bus
    ready: Callable[[], tuple[bool, str]]
    local_user: User | None = None  # who a request without a token is (local clusters only)
    oidc: Oidc | None = None  # sign-in with an identity provider (oidc.py)

    def run_state(self, namespace: str, name: str) -> RunState:
        async def state() -> tuple[str, str] | None:
            try:
                run = await self.operations.execution(namespace, name)
            except ApiError as e:
                if e.status == 404:
                    return None
                raise
            return run["metadata"]["uid"], (run.get("status") or {}).get("phase") or "Pending"
        return state

    def request_log(self, namespace: str, execution: str | None, message: str, status: int,
                    uid: str | None = None) -> None:
        """One LogEmitted line about a request (fire and forget, as every component's): on the run's
        log when the request knows its uid (it created it), else on ``<execution or ->.-``."""
        level = "info" if status < 400 else "warning"
        task = asyncio.ensure_future(self.bus.emit_log(namespace, execution or NO_RUN, uid or NO_RUN, "api", level,
                                                       message))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())


class _Server(uvicorn.Server):
    """uvicorn inside the operator's event loop: the operator (Kopf) owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


CLUSTER_CLIENT_CA = "cluster"  # COMPOZY_API_CLIENT_CA: the CA the API server trusts for users' certificates
# published by the API server for extension API servers (readable with the built-in Role
# extension-apiserver-authentication-reader)
CLIENT_CA_CONFIGMAP = "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication"


def _accepting_clients(ca_pem: str) -> Callable[[uvicorn.Config, Callable[[], ssl.SSLContext]], ssl.SSLContext]:
    """uvicorn's serving context, also asking for a client certificate (optional: token callers have
    none) that must chain to ``ca_pem``: a certificate that does not is refused in the handshake."""
    def factory(_: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        context = default()
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cadata=ca_pem)
        return context
    return factory


class _PeerCertificateProtocol(H11Protocol):
    """HTTP/1.1 that hands the verified client certificate's subject to the application.

    uvicorn does not fill in the ASGI TLS extension; this protocol (one instance per connection)
    does, for the one field api.Service needs, after the handshake verified the chain."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        subject = (ssl_object.getpeercert() or {}).get("subject") if ssl_object is not None else None
        if subject:
            app = self.app

            async def with_peer(scope: Any, receive: Any, send: Any) -> None:
                scope.setdefault("extensions", {})["tls"] = {PEER_SUBJECT: subject}
                await app(scope, receive, send)
            self.app = with_peer


def cluster_client_ca(kube: Kube) -> str:
    """The PEM bundle of the cluster's client CA, as the API server publishes it."""
    pem = ((kube.get(CLIENT_CA_CONFIGMAP) or {}).get("data") or {}).get("client-ca-file")
    if not pem:
        raise RuntimeError("COMPOZY_API_CLIENT_CA=cluster, but the API server publishes no client CA "
                           "(kube-system/extension-apiserver-authentication has no client-ca-file)")
    return str(pem)


class ApiService:
    def __init__(self, kube: Kube, bus: Bus, validate: Any, ready: Callable[[], tuple[bool, str]], *,
                 host: str, port: int, max_input_bytes: int, max_streams: int,
                 tls: tuple[str, str] | None = None, client_ca: str = "", namespaces: tuple[str, ...] = (),
                 ui_dir: str | None = None, local_user: User | None = None,
                 oidc: OidcConfig | None = None) -> None:
        """``tls``: (certificate file, key file) to serve HTTPS with; None: plain HTTP. ``client_ca``
        (HTTPS only): also accept client certificates signed by this CA (a PEM file, or ``cluster``:
        the API server's own client CA); empty: bearer tokens only. ``namespaces``: those the
        operator serves (empty: all). ``local_user``: who a request without a token (or a client
        certificate) is (auth.local_user; None: nobody, a 401). ``oidc``: sign-in with an identity
        provider (None: not offered)."""
        if client_ca and tls is None:
            raise ValueError("COMPOZY_API_CLIENT_CA: client certificates need HTTPS (set COMPOZY_API_CERT_FILE and "
                             "COMPOZY_API_KEY_FILE)")
        self.kube, self.client_ca = kube, client_ca
        authorizer = Authorizer(kube)
        if oidc is not None and (problems := oidc.problems()):
            raise ValueError("; ".join(problems))
        self.ctx = Context(Operations(kube, authorizer, validate, max_input_bytes, namespaces), authorizer,
                           Streams(bus, max_streams), bus, ready, local_user,
                           Oidc(oidc) if oidc is not None else None)
        # the largest input, escaped and pretty-printed, and the other fields
        self.app = create_app(self.ctx, max_body=2 * max_input_bytes + (1 << 16), ui_dir=ui_dir)
        self.host, self.port, self.tls = host, port, tls
        self._limit = asyncio.Semaphore(TRIGGER_CONCURRENCY)
        self._answering: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Serve HTTP and the NATS trigger until cancelled."""
        assert self.ctx.bus.nc is not None
        sub = await self.ctx.bus.nc.subscribe(TRIGGER_SUBJECT, queue=TRIGGER_QUEUE, cb=self._on_trigger)
        cert, key = self.tls or (None, None)
        client_ca = await self._client_ca()
        server = _Server(uvicorn.Config(self.app, host=self.host, port=self.port, log_config=None, access_log=False,
                                        lifespan="off", proxy_headers=False, server_header=False,
                                        ssl_certfile=cert, ssl_keyfile=key, http=_PeerCertificateProtocol,
                                        ssl_context_factory=_accepting_clients(client_ca) if client_ca else None))
        log.info("api.Service on %s://%s:%d and NATS %s", "https" if cert else "http", self.host, self.port,
                 TRIGGER_SUBJECT)
        renewals = asyncio.create_task(self._reload_certificate(server)) if cert else None
        try:
            await server.serve()
        except SystemExit:  # uvicorn's way of saying it could not listen
            raise OSError(f"api.Service could not listen on {self.host}:{self.port}") from None
        finally:
            if renewals is not None:
                renewals.cancel()
            for s in getattr(server, "servers", ()):  # none if it failed before listening
                s.close()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _client_ca(self) -> str | None:
        """The PEM text of the client CA to verify certificates with, or None."""
        if not self.client_ca:
            return None
        if self.client_ca == CLUSTER_CLIENT_CA:
            return await asyncio.to_thread(cluster_client_ca, self.kube)
        return await asyncio.to_thread(lambda: open(self.client_ca).read())

    async def _reload_certificate(self, server: uvicorn.Server) -> None:
        """Renewed certificate files (cert-manager) are loaded into the serving context as they
        change; connections made from then on get the new certificate."""
        assert self.tls is not None
        cert, key = self.tls
        seen = os.stat(cert).st_mtime_ns
        while True:
            await asyncio.sleep(CERT_CHECK_SECONDS)
            try:
                changed = os.stat(cert).st_mtime_ns
                if changed != seen and server.config.ssl is not None:
                    server.config.ssl.load_cert_chain(cert, key)
                    seen = changed
                    log.info("api.Service: serving certificate reloaded from %s", cert)
            except (OSError, ssl.SSLError) as e:  # half-written files: tried again at the next check
                log.warning("api.Service: cannot reload the serving certificate: %s", e)

    async def _on_trigger(self, msg: Msg) -> None:
        """nats-py awaits a subscription's callback before it delivers the next message: answer
        each request in a task of its own, at most TRIGGER_CONCURRENCY at once."""
        task = asyncio.create_task(self._answer(msg))
        self._answering.add(task)
        task.add_done_callback(self._answering.discard)

    async def _answer(self, msg: Msg) -> None:
        async with self._limit:
            status, body = await self.trigger(msg.subject, msg.data, (msg.headers or {}).get("Authorization"))
        REQUESTS.labels(NATS_TRIGGER_ROUTE, str(status)).inc()
        if msg.reply and self.ctx.bus.nc is not None:
            try:
                await self.ctx.bus.nc.publish(msg.reply, json.dumps(body).encode(), headers={STATUS_HEADER: str(status)})
            except Exception as e:  # noqa: BLE001 - the requester times out; nothing else to do
                log.warning("api.Service: could not answer a NATS trigger: %s", e)

    async def trigger(self, subject: str, data: bytes, authorization: str | None) -> tuple[int, dict[str, Any]]:
        """One NATS trigger request: (the HTTP status the POST would answer, the same body)."""
        namespace = subject.split(".")[2]
        user = None
        try:
            if not re.fullmatch(NAMESPACE_PATTERN, namespace):
                raise ApiError(400, "Invalid", f"namespace: {namespace[:80]!r} is not a namespace name", "namespace")
            user = await self.ctx.authorizer.authenticate(bearer_token(authorization))
            try:
                req = NatsTriggerRequest.model_validate_json(data)
            except ValidationError as e:
                err = e.errors()[0]
                field = ".".join(str(p) for p in err["loc"]) or "body"
                raise ApiError(400, "Invalid", f"{field}: {err['msg']}", field) from None
            created = await self.ctx.operations.trigger(user, namespace, req.workflow, req)
            status, body, execution, uid = 201, created.model_dump(), created.name, created.uid
        except ApiError as e:
            status, body, execution, uid = e.status, e.body(), None, None
        except Exception as e:  # noqa: BLE001 - a bug: answered as HTTP would answer it, never left unanswered
            log.exception("api.Service: unexpected error in a NATS trigger")
            status, body, execution, uid = 500, {"error": {"reason": "InternalError", "message": type(e).__name__}}, \
                None, None
        if user is not None:
            self.ctx.request_log(namespace, execution, f"{user.name} NATS {subject} -> {status}", status, uid=uid)
        return status, body

