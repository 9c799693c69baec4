"""The operator process: Kopf handlers wired to the orchestrator, the state manager and monitoring.

Run with ``compozy operator`` (cluster-wide, or ``COMPOZY_NAMESPACES=a,b`` for some namespaces).
Kopf only watches here (``on.event`` handlers): it never writes to the resources, so the state
manager stays the single writer of the status and there are no Kopf annotations or finalizers.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from .api.models import GROUP, VERSION
from .bus import Bus
from .kube import Kube
from .monitoring import HttpServer
from .orchestrator import Orchestrator
from .pods import LABEL_MANAGED, MANAGER
from .settings import Settings
from .state_manager import StateManager

log = logging.getLogger("compozy.operator")


class Operator:
    """Everything the handlers need, created at startup."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.kube = Kube.from_environment()
        self.bus = Bus(settings.nats_url, settings.nats_token, "compozy-operator", settings.nats_ca())
        self.orchestrator = Orchestrator(settings, self.kube, self.bus)
        self.state = StateManager(self.bus, self.kube, self.orchestrator.reconcile, settings.state_batch,
                                  settings.status_defer)
        self.http = HttpServer(settings.http_port, self.readiness)
        self.tasks: list[asyncio.Task[Any]] = []
        self.nats_ready = False

    def readiness(self) -> tuple[bool, str]:
        if not self.nats_ready:
            return False, self.bus.last_error or "connecting to NATS"
        if not self.bus.connected:
            return False, f"NATS disconnected: {self.bus.last_error or 'reconnecting'}"
        return True, "ready"

    async def start(self) -> None:
        await self.http.start()
        # Kubernetes calls run in threads (the official client is synchronous).
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=32))
        await self.bus.connect()  # retries with back-off, logging each failure, until NATS answers
        await self.bus.ensure_streams()
        self.nats_ready = True
        self.tasks.append(asyncio.create_task(self.state.run(), name="state-manager"))
        log.info("connected to NATS at %s; state manager running", self.settings.nats_url)

    async def stop(self) -> None:
        self.state.running = False
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.bus.close()
        await self.http.stop()


def build_registry(op_ref: dict[str, Operator], app_settings: Settings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False           # Events are ours (monitoring), not Kopf's
        settings.batching.batch_window = 0.005     # react to a status change within milliseconds
        settings.watching.server_timeout = 600
        settings.networking.request_timeout = 60
        # Namespaced: the namespaces are given, so Kopf needs no cluster-wide list of namespaces or CRDs.
        settings.scanning.disabled = bool(app_settings.namespaces)
        op = Operator(app_settings)
        op_ref["op"] = op
        await op.start()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # In-cluster service account or KUBECONFIG, through the official client (as Kube does).
        return kopf.login_via_client(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        if "op" in op_ref:
            await op_ref["op"].stop()

    @kopf.on.event(GROUP, VERSION, "workflowexecutions", registry=registry)
    async def execution_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
        op = op_ref["op"]
        if event["type"] == "DELETED":
            op.state.forget((body["metadata"]["namespace"], body["metadata"]["name"]))
            await op.orchestrator.on_deleted(_plain(body))
            return
        await op.orchestrator.reconcile(_plain(body))

    @kopf.on.event("", "v1", "pods", labels={LABEL_MANAGED: MANAGER, "app.kubernetes.io/component": "task"},
                   registry=registry)
    async def pod_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
        await op_ref["op"].orchestrator.on_pod(event["type"] or "ADDED", _plain(body))

    if app_settings.watch_nodes:
        @kopf.on.event("", "v1", "nodes", registry=registry)
        async def node_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
            await op_ref["op"].orchestrator.on_node(_plain(body), deleted=event["type"] == "DELETED")

    return registry


def _plain(body: kopf.Body) -> dict[str, Any]:
    return {k: body[k] for k in body}


def run(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    op_ref: dict[str, Operator] = {}
    registry = build_registry(op_ref, settings)
    kopf.run(registry=registry, standalone=True, clusterwide=not settings.namespaces,
             namespaces=list(settings.namespaces))
