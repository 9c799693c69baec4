"""The operator process: Kopf handlers wired to the orchestrator, the state manager and monitoring.

Run with ``compozy operator`` (cluster-wide, or ``COMPOZY_NAMESPACES=a,b`` for some namespaces).
Kopf only watches here (``on.event`` handlers): it never writes to the resources, so the state
manager stays the single writer of the status and there are no Kopf annotations or finalizers.

The operator's own background loops (the state manager, the JetStream check) are supervised:
one that raises is logged and restarted with back-off, and ``/readyz`` answers 503 with the
reason while it is down, as it does while NATS, a stream or the state consumer is missing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf
from prometheus_client import REGISTRY

from . import admission
from .resources.models import GROUP, VERSION, WorkflowExecutionStatus
from .resources.paths import collection_paths
from .api_service.auth import local_user
from .api_service.service import ApiService
from .bus import Bus, stream_configs, with_credentials, without_credentials
from .events import POOL_STREAM
from .kube import Kube
from .leader_election import LeaderElector
from .monitoring import JETSTREAM_REPAIRS, LEADER, LOOP_RESTARTS, HttpServer, LiveState
from .nats_auth.callout import CalloutConfig, CalloutService
from .nats_auth.decision import DEFAULT_MAX_TTL, ENDED_PHASES
from .nats_auth.keys import ACCOUNT, API_USER, CALLOUT_USER, OPERATOR_USER, STATE_USER, SYSTEM_USER, CalloutKeys, \
    load_or_create
from .nats_auth.permissions import API_INBOX, STATE_INBOX
from .orchestrator import Orchestrator
from .orchestrator.orphans import OrphanSweep
from .pods import LABEL_MANAGED, MANAGER
from .pools import RUNNER_COMPONENT
from .settings import Settings
from .state_manager import DURABLE, StateManager, one_line, why
from .workflow_status import WorkflowStatus

log = logging.getLogger("compozy.operator")
RESTART_MIN, RESTART_MAX = 0.5, 30.0  # seconds before a failed loop is restarted, doubling per quick failure
STABLE_SECONDS = 10.0  # a restarted loop that has run this long counts as recovered
CHECK_SECONDS = 3.0  # how often the JetStream check runs
# The API server stores objects nested up to 10,000 levels (its JSON decoder's limit); every parse
# of one here (Kopf's watch and lists, the Kubernetes client, the webhook) and every copy must
# not raise RecursionError at Python's default limit of 1,000. Checks refuse such input at 64.
RECURSION_LIMIT = 25_000
KINDS = {"workflows": "Workflow", "workflowexecutions": "WorkflowExecution"}


class Supervised:
    """A background loop, restarted with back-off whenever it raises (or returns)."""

    def __init__(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self.body = body
        self.error: str | None = None  # why it last stopped
        self.up_since: float | None = None  # when it was last (re)started; None while waiting to restart
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=self.name)

    def problem(self) -> str | None:
        """Why the loop is not (yet again) doing its work, for /readyz; None when it is."""
        if self.task is None or self.task.done():
            return f"{self.name} is not running"
        if self.error is None:
            return None
        if self.up_since is None:
            return f"{self.name} stopped ({self.error}); restarting"
        if time.monotonic() - self.up_since < STABLE_SECONDS:
            return f"{self.name} restarted after: {self.error}"
        return None

    async def _run(self) -> None:
        failures = 0
        while True:
            self.up_since = started = time.monotonic()
            failure: Exception | None = None
            try:
                await self.body()
                self.error = "it returned"
            except Exception as e:  # noqa: BLE001 - whatever stopped it, it is restarted
                failure, self.error = e, one_line(f"{type(e).__name__}: {e}")
            self.up_since = None
            failures = 1 if time.monotonic() - started >= STABLE_SECONDS else failures + 1
            delay = min(RESTART_MAX, RESTART_MIN * 2 ** (failures - 1))
            LOOP_RESTARTS.labels(self.name).inc()
            log.error("%s stopped (%s); restarting in %.1fs", self.name, self.error, delay, exc_info=failure)
            await asyncio.sleep(delay)


class JetStreamCheck:
    """Every few seconds: are the streams and the state manager's durable consumer there?

    What was deleted is recreated at once, and readiness stays 503 until a later check finds
    everything in place."""

    def __init__(self, bus: Bus, state: StateManager, pool_queue_recreated: Callable[[], Awaitable[None]],
                 interval: float = CHECK_SECONDS) -> None:
        self.bus = bus
        self.state = state
        self.pool_queue_recreated = pool_queue_recreated
        self.interval = interval
        self.problem: str | None = None

    async def run(self) -> None:
        while True:  # the state manager creates its consumer at start: the first check comes after
            await asyncio.sleep(self.interval)
            await self.check()

    async def check(self) -> None:
        try:  # streams first: deleting the state stream deletes its consumer too
            repaired = await self.bus.recreate_missing_streams()
            if await self.state.check_consumer():
                repaired.append(f"consumer {DURABLE}")
            if POOL_STREAM in repaired:
                await self.pool_queue_recreated()
        except Exception as e:  # noqa: BLE001 - NATS away or JetStream not answering: readiness says so
            self._report(f"JetStream check failed: {why(e)}")
            return
        for name in repaired:
            JETSTREAM_REPAIRS.labels(name).inc()
        self._report(f"{', '.join(repaired)} had been deleted; recreated" if repaired else None)

    def _report(self, problem: str | None) -> None:
        if problem is not None and problem != self.problem:
            log.warning("%s", problem)
        elif problem is None and self.problem is not None:
            log.info("JetStream check: streams and consumer in place again")
        self.problem = problem


class Operator:
    """Everything the handlers need, created at startup."""

    def __init__(self, settings: Settings) -> None:
        self.kube = Kube.from_environment()
        ca = settings.nats_ca()
        self.callout_config: CalloutConfig | None = None
        if settings.nats_auth == "callout":
            # each part its own NATS user (docs/security.md): the orchestrator's (commands, its
            # events, outputs, streams), the state manager's (its consumer only), the callout's
            keys = self._callout_keys(settings)
            url = settings.nats_url
            settings = dataclasses.replace(settings, nats_token=None,
                                           nats_url=with_credentials(url, OPERATOR_USER, keys.operator_password))
            self.state_bus = Bus(with_credentials(url, STATE_USER, keys.state_password), None, "compozy-state", ca,
                                 inbox_prefix=STATE_INBOX)
            self.api_bus = Bus(with_credentials(url, API_USER, keys.api_password), None, "compozy-api", ca,
                               inbox_prefix=API_INBOX)
            self.callout_config = CalloutConfig(url, keys.issuer_seed, ACCOUNT, user=CALLOUT_USER,
                                                password=keys.callout_password, ca=ca, system_user=SYSTEM_USER,
                                                system_password=keys.system_password,
                                                max_ttl=int(os.environ.get("COMPOZY_NATS_MAX_TTL_SECONDS") or
                                                            DEFAULT_MAX_TTL))
        self.settings = settings
        self.bus = Bus(settings.nats_url, settings.nats_token, "compozy-operator", ca,
                       streams=stream_configs(settings.log_max_age, settings.log_max_bytes, settings.stream_replicas))
        if self.callout_config is None:
            self.state_bus = self.api_bus = self.bus  # token mode: one identity for all
        self.orchestrator = Orchestrator(settings, self.kube, self.bus)
        self.state = StateManager(self.state_bus, self.kube, self.orchestrator.reconcile, settings.state_batch,
                                  settings.status_defer)
        self.jetstream = JetStreamCheck(self.bus, self.state, self.orchestrator.pool_queue_recreated)
        self.workflow_status = WorkflowStatus(self.kube, self.evaluate)
        self.http = HttpServer(settings.http_port, self.readiness)
        # the leader's loops; the others (api.Service, the callout) run in every replica
        self.leader_loops = [Supervised("state manager", self.state.run),
                             Supervised("JetStream check", self.jetstream.run),
                             Supervised("runner pool scaler", self.orchestrator.pools.run),
                             Supervised("orphan sweep", OrphanSweep(self.kube, self.bus, settings.namespaces,
                                                                    settings.orphan_sweep_seconds).run)]
        self.loops: list[Supervised] = []
        self.elector = LeaderElector(self.kube, settings.pod_namespace, settings.leader_lease,
                                     f"{settings.leader_identity}_{uuid.uuid4().hex[:6]}",
                                     duration=settings.leader_lease_seconds,
                                     renew_deadline=settings.leader_renew_deadline,
                                     retry=settings.leader_retry) if settings.leader_election else None
        self.leading = False
        self._election: asyncio.Task[None] | None = None
        self._resync: asyncio.Task[None] | None = None
        if self.callout_config is not None:
            self.loops.append(Supervised("NATS auth callout", self._callout))
        self.callout: CalloutService | None = None  # while the callout loop runs
        if settings.api_enabled:
            api = ApiService(self.kube, self.api_bus, self.evaluate, self.readiness, host=settings.api_host,
                             port=settings.api_port, max_input_bytes=settings.max_input_bytes,
                             max_streams=settings.api_max_streams,
                             tls=(settings.api_cert_file, settings.api_key_file)
                             if settings.api_cert_file and settings.api_key_file else None,
                             client_ca=settings.api_client_ca,
                             namespaces=settings.namespaces, ui_dir=settings.ui_dir or None,
                             local_user=local_user(settings.api_local_user, settings.api_local_groups,
                                                   settings.api_host), oidc=settings.oidc())
            self.loops.append(Supervised("api.Service", api.run))
        self.nats_ready = False
        self.live_state = LiveState(self.live_runs, lambda: [self.bus, *self.own_buses()])

    def own_buses(self) -> list[Bus]:
        """The connections of the parts with NATS users of their own (callout mode), besides the
        orchestrator's."""
        return [bus for bus in (self.state_bus, self.api_bus) if bus is not self.bus]

    def _callout_keys(self, settings: Settings) -> CalloutKeys:
        """The callout Secret's keys (the Secret made now when absent)."""
        if not settings.nats_callout_secret:
            raise ValueError("COMPOZY_NATS_AUTH=callout needs COMPOZY_NATS_CALLOUT_SECRET (the Secret in "
                             "COMPOZY_POD_NAMESPACE holding the NATS server's secrets; docs/security.md)")
        keys = load_or_create(self.kube, settings.pod_namespace, settings.nats_callout_secret)
        log.info("NATS callout keys from Secret %s/%s (issuer %s)", settings.pod_namespace,
                 settings.nats_callout_secret, keys.issuer)
        return keys

    async def _callout(self) -> None:
        """Answer the NATS server's authorization requests of task pods until cancelled."""
        assert self.callout_config is not None
        # the orchestrator's connection reads the command that proves a pooled attempt
        service = await CalloutService(self.callout_config, self.kube, commands=self.bus.get_command,
                                       pods_watched=True).start()
        self.callout = service
        try:
            await asyncio.Event().wait()
        finally:
            self.callout = None
            await service.stop()

    async def on_task_pod(self, event: str, pod: dict[str, Any]) -> None:
        if self.leading:
            await self.orchestrator.on_pod(event, pod)
        await self.pod_identities(event, pod)

    async def on_runner_pod(self, event: str, pod: dict[str, Any]) -> None:
        if self.leading:
            await self.orchestrator.pools.on_runner_pod(event, pod)
        await self.pod_identities(event, pod)

    async def pod_identities(self, event: str, pod: dict[str, Any]) -> None:
        """A task or runner pod that has ended or is gone: close the NATS connections granted to it
        (a runner's own and its attempts')."""
        if self.callout is not None and (event == "DELETED" or (pod.get("status") or {}).get("phase") in ENDED_PHASES):
            await self.callout.end_pod(pod["metadata"]["uid"])

    def evaluate(self) -> admission.Validate:
        """The evaluation pool's start checks, for the webhook (its first worker starts now)."""
        self.orchestrator.pool.start()
        return self.orchestrator.pool.validate

    def readiness(self) -> tuple[bool, str]:
        if not self.nats_ready:
            return False, self.bus.last_error or "connecting to NATS"
        for bus in (self.bus, *self.own_buses()):
            if not bus.connected:
                return False, f"NATS disconnected ({bus.name}): {bus.last_error or 'reconnecting'}"
        leader = (*(loop.problem() for loop in self.leader_loops), self.state.problem(), self.jetstream.problem) \
            if self.leading else ()
        problems = [p for p in (*(loop.problem() for loop in self.loops), *leader) if p]
        if problems:
            return False, "; ".join(problems)
        return True, "ready" if self.leading else "ready (standby: another replica holds the leader Lease)"

    def live_runs(self) -> Iterator[tuple[str, WorkflowExecutionStatus | None]]:
        return ((run.namespace, run.newest or run.status) for run in list(self.orchestrator.runs.values()))

    async def start(self) -> None:
        REGISTRY.register(self.live_state)
        await self.http.start()
        # Kubernetes calls run in threads (the official client is synchronous).
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=32))
        await self.bus.connect()  # retries with back-off, logging each failure, until NATS answers
        await self.bus.ensure_streams()
        for bus in self.own_buses():
            await bus.connect()
        self.nats_ready = True
        for loop in self.loops:
            loop.start()
        if self.elector is None:
            await self.lead(resync=False)  # alone: Kopf's first listing brings every object
        else:
            self._election = asyncio.create_task(self.elector.run(lambda: self.lead(resync=True), self.lost))
        log.info("connected to NATS at %s%s", without_credentials(self.settings.nats_url),
                 "; state manager running" if self.leading else "; standing by for the leader Lease")

    async def lead(self, resync: bool) -> None:
        """This replica orchestrates from now on: the leader's loops start and, after an election,
        every execution and Workflow is taken up (their watch events went by while standing by)."""
        self.leading = True
        LEADER.set(1)
        for loop in self.leader_loops:
            loop.start()
        if resync:
            self._resync = asyncio.create_task(self.take_up())

    async def take_up(self) -> None:
        """Reconcile every execution and sync every Workflow and RunnerPool of the watched namespaces,
        as a first listing would; a failure of one is logged, the others go on."""
        started = time.monotonic()
        count = 0
        for resource in ("workflows", "runnerpools", "workflowexecutions"):
            for obj in await asyncio.to_thread(self._list, resource):
                try:
                    if resource == "workflows":
                        await self.workflow_status.sync(obj)
                        self.orchestrator.retention.workflow_changed(obj)
                    elif resource == "runnerpools":
                        await self.orchestrator.pools.on_pool("ADDED", obj)
                    else:
                        await self.orchestrator.reconcile(obj)
                        count += 1
                except Exception:  # noqa: BLE001 - the next watch event or timer reconciles it again
                    log.exception("leader: could not take up %s %s/%s", resource, obj["metadata"].get("namespace"),
                                  obj["metadata"]["name"])
        log.info("leader: took up %d executions in %.2fs", count, time.monotonic() - started)

    def _list(self, resource: str) -> list[dict[str, Any]]:
        return [{"apiVersion": f"{GROUP}/{VERSION}", "kind": KINDS[resource], **item}
                for path in collection_paths(self.settings.namespaces, resource) for item in self.kube.list(path)]

    def lost(self) -> None:
        """The Lease could not be renewed: another replica may lead already. Stop acting at once
        and exit (the pod restarts as a standby)."""
        self.leading = False
        LEADER.set(0)
        for loop in self.leader_loops:
            if loop.task is not None:
                loop.task.cancel()
        os.kill(os.getpid(), signal.SIGTERM)

    async def stop(self) -> None:
        for task in (self._election, self._resync):
            if task is not None:
                task.cancel()
        if self.elector is not None:
            await self.elector.release()
        tasks = [loop.task for loop in (*self.loops, *self.leader_loops) if loop.task is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.orchestrator.close()
        for bus in self.own_buses():
            await bus.close()
        await self.bus.close()
        await self.http.stop()
        REGISTRY.unregister(self.live_state)


class NoDiffBase(kopf.DiffBaseStorage):
    """Kopf keeps a deep copy of every object it sees to diff it for change handlers; with event
    handlers only, nothing reads it. Skipping it saves a copy per event, and a WorkflowExecution
    whose input nests hundreds of levels deep no longer breaks Kopf (RecursionError in that copy)
    before the orchestrator can fail it with a message."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def build_registry(op_ref: dict[str, Operator], app_settings: Settings) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.enabled = False           # Events are ours (monitoring), not Kopf's
        settings.persistence.diffbase_storage = NoDiffBase()
        settings.batching.batch_window = 0.005     # react to a status change within milliseconds
        settings.watching.server_timeout = 600
        settings.networking.request_timeout = 60
        # Namespaced: the namespaces are given, so Kopf needs no cluster-wide list of namespaces or CRDs.
        settings.scanning.disabled = bool(app_settings.namespaces)
        if app_settings.webhook_enabled:
            admission.configure(settings, app_settings)
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
        if not op.leading:  # a standby: the leader acts (and a new leader takes every run up)
            return
        if event["type"] == "DELETED":
            op.state.forget((body["metadata"]["namespace"], body["metadata"]["name"]))
            await op.orchestrator.on_deleted(_plain(body))
            return
        await op.orchestrator.reconcile(_plain(body))

    @kopf.on.event("", "v1", "pods", labels={LABEL_MANAGED: MANAGER, "app.kubernetes.io/component": "task"},
                   registry=registry)
    async def pod_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
        await op_ref["op"].on_task_pod(event["type"] or "ADDED", _plain(body))

    @kopf.on.event(GROUP, VERSION, "runnerpools", registry=registry)
    async def runner_pool_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
        if op_ref["op"].leading:
            await op_ref["op"].orchestrator.pools.on_pool(event["type"] or "ADDED", _plain(body))

    @kopf.on.event("", "v1", "pods", labels={LABEL_MANAGED: MANAGER, "app.kubernetes.io/component": RUNNER_COMPONENT},
                   registry=registry)
    async def runner_pod_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
        await op_ref["op"].on_runner_pod(event["type"] or "ADDED", _plain(body))

    @kopf.on.event(GROUP, VERSION, "workflows", registry=registry)
    async def workflow_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
        if not op_ref["op"].leading:
            return
        if event["type"] == "DELETED":
            op_ref["op"].workflow_status.forget(body["metadata"]["uid"])
            op_ref["op"].orchestrator.retention.generations.pop(body["metadata"]["uid"], None)
        else:
            await op_ref["op"].workflow_status.sync(_plain(body))
            op_ref["op"].orchestrator.retention.workflow_changed(_plain(body))

    if app_settings.webhook_enabled:
        admission.register(registry, app_settings, lambda: op_ref["op"].kube, lambda: op_ref["op"].evaluate())

    if app_settings.watch_nodes:
        @kopf.on.event("", "v1", "nodes", registry=registry)
        async def node_event(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
            if not op_ref["op"].leading:
                return
            await op_ref["op"].orchestrator.on_node(_plain(body), deleted=event["type"] == "DELETED")

    return registry


def _plain(body: kopf.Body) -> dict[str, Any]:
    return {k: body[k] for k in body}


def run(settings: Settings | None = None) -> None:
    settings = settings or Settings()
    sys.setrecursionlimit(max(sys.getrecursionlimit(), RECURSION_LIMIT))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    op_ref: dict[str, Operator] = {}
    registry = build_registry(op_ref, settings)
    kopf.run(registry=registry, standalone=True, clusterwide=not settings.namespaces,
             namespaces=list(settings.namespaces))
