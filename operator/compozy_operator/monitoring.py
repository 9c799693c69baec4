"""system.Monitoring: Prometheus metrics, Kubernetes Events for an execution's milestones, and the
HTTP endpoints (``/metrics``, ``/healthz``, ``/readyz``)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections import Counter as TypedCounter
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .resources.models import API_VERSION, TERMINAL_PHASES, WorkflowExecutionStatus
from .bus import Bus
from .events import Event, EventType
from .kube import ApiException, Kube
from .reducer import RESET, TASK_TERMINAL

log = logging.getLogger(__name__)
OPEN_TASK_PHASES = ("Waiting", "Pending", "Running")
_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

# namespace and workflow (status.workflow: the Workflow's name, `<inline>` for an inline spec) label the run metrics:
# bounded by the Workflow objects, never by runs or tasks
RUN_LABELS = ["namespace", "workflow"]
EXECUTIONS = Counter("compozy_executions_total", "Executions that reached a phase", [*RUN_LABELS, "phase"])
TASKS = Counter("compozy_tasks_total", "Task attempts that reached a phase", [*RUN_LABELS, "phase"])
EXECUTION_SECONDS = Histogram("compozy_execution_duration_seconds", "Start to end of executions",
                              [*RUN_LABELS, "phase"], buckets=_BUCKETS)
TASK_SECONDS = Histogram("compozy_task_duration_seconds", "Start to end of task attempts", [*RUN_LABELS, "phase"],
                         buckets=_BUCKETS)
LEADER = Gauge("compozy_leader", "1 while this replica orchestrates (holds the leader Lease, or runs alone)")
RECONCILE_SECONDS = Histogram("compozy_reconcile_duration_seconds",
                              "One orchestrator reconcile of an execution (decide and act)",
                              buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10))
EVENTS = Counter("compozy_state_events_total", "State events consumed by the state manager", ["type"])
STATUS_PATCHES = Counter("compozy_status_patches_total", "Status PATCH requests sent by the state manager")
REJECTED_EVENTS = Counter("compozy_state_events_rejected_total",
                          "State events terminated unfolded: unparseable, invalid, subject_mismatch or fold_failed",
                          ["reason"])
LOOP_RESTARTS = Counter("compozy_loop_restarts_total", "Background loops of the operator restarted after a failure",
                        ["loop"])
JETSTREAM_REPAIRS = Counter("compozy_jetstream_repairs_total",
                            "Streams and consumers recreated after they were deleted", ["name"])
RUNS_DELETED = Counter("compozy_executions_deleted_total",
                       "Ended executions deleted by the operator: ttl (ttlSecondsAfterFinished) or history "
                       "(a Workflow's historyLimit)", ["reason"])
OUTPUTS_SWEPT = Counter("compozy_outputs_swept_total",
                        "Stored outputs removed by the orphan sweep: their run was deleted while no operator "
                        "could remove them (docs/cleanup.md)")
PODS_CREATED = Counter("compozy_task_pods_created_total", "Task pods created by the orchestrator")
DISPATCH_SECONDS = Histogram(
    "compozy_dispatch_latency_seconds",
    "From the event that made a task runnable (its predecessor's success) to its pod created",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))

LLM_TOKENS = Counter("compozy_llm_tokens_total", "Tokens of agents' model calls, as the provider reported them",
                     ["provider", "model", "direction"])
LLM_CALLS = Counter("compozy_llm_calls_total", "Model calls made by agents", ["provider", "model"])
LLM_CALL_SECONDS = Histogram("compozy_llm_call_duration_seconds", "Latency of one model call (SDK retries included)",
                             ["provider", "model"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
AGENT_ATTEMPTS = Counter("compozy_agent_attempts_total", "Agent attempts by outcome (Succeeded or the failure reason)",
                         ["provider", "model", "outcome"])


def observe_event(event: Event) -> None:
    """Metrics carried by single events: an agent attempt's tokens, model calls and their latency."""
    if event.type not in (EventType.AGENT_SUCCESS, EventType.AGENT_FAILED):
        return
    d = event.data
    labels = (str(d.get("provider", "")), str(d.get("model", "")))
    usage = d.get("usage") or {}
    LLM_TOKENS.labels(*labels, "input").inc(max(0, int(usage.get("inputTokens", 0))))
    LLM_TOKENS.labels(*labels, "output").inc(max(0, int(usage.get("outputTokens", 0))))
    LLM_CALLS.labels(*labels).inc(max(0, int(usage.get("modelCalls", 0))))
    for seconds in d.get("callSeconds") or []:
        LLM_CALL_SECONDS.labels(*labels).observe(float(seconds))
    outcome = "Succeeded" if event.type == EventType.AGENT_SUCCESS else (d.get("error") or {}).get("reason", "Failed")
    AGENT_ATTEMPTS.labels(*labels, str(outcome)).inc()


def _seconds(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
    return (parse(end) - parse(start)).total_seconds()


def run_labels(namespace: str, status: WorkflowExecutionStatus) -> tuple[str, str]:
    return namespace, status.workflow or ""  # "" (no label) until the run started


def observe(namespace: str, before: WorkflowExecutionStatus,
            after: WorkflowExecutionStatus) -> list[tuple[str, str, str]]:
    """Update metrics for what changed; return the Kubernetes Events to post: (type, reason, message)."""
    events: list[tuple[str, str, str]] = []
    labels = run_labels(namespace, after)
    if before.phase != after.phase:
        EXECUTIONS.labels(*labels, after.phase).inc()
        if after.phase == "Running":
            if before.phase in TERMINAL_PHASES:  # a retry round (docs/retry.md)
                events.append(("Normal", "Retried", after.message or f"retry {after.retries}"))
            else:
                events.append(("Normal", "Started", f"workflow {after.workflow} started"))
        elif after.phase in TERMINAL_PHASES:
            if (secs := _seconds(after.started_at, after.finished_at)) is not None:
                EXECUTION_SECONDS.labels(*labels, after.phase).observe(secs)
            kind = "Normal" if after.phase == "Succeeded" else "Warning"
            events.append((kind, after.phase, after.message or after.phase))
    for tid, task in after.tasks.items():
        old = before.tasks.get(tid)
        if task.phase in TASK_TERMINAL - {RESET} and (old is None or old.phase != task.phase
                                                      or old.attempt != task.attempt):
            TASKS.labels(*labels, task.phase).inc()
            if (secs := _seconds(task.started_at, task.finished_at)) is not None:
                TASK_SECONDS.labels(*labels, task.phase).observe(secs)
            if task.phase == "Failed":
                reason = task.error.reason if task.error else "Failed"
                message = task.error.message if task.error else ""
                events.append(("Warning", "TaskFailed", f"task {tid} attempt {task.attempt}: {reason}: {message}"))
    return events


class LiveState:
    """Gauges read at scrape time from what the operator holds, so a restart never leaves them
    counted wrong: the runs the orchestrator drives (by phase; their tasks not yet ended, by phase:
    Waiting for a worker slot, Pending with their TaskExecute command published and not yet taken,
    Running) and its NATS connections."""

    def __init__(self, runs: Callable[[], Iterable[tuple[str, WorkflowExecutionStatus | None]]],
                 buses: Callable[[], Iterable[Bus]]) -> None:
        self.runs, self.buses = runs, buses

    def collect(self) -> Iterator[Metric]:
        active = GaugeMetricFamily("compozy_executions_active", "Executions not ended that this operator drives",
                                   labels=[*RUN_LABELS, "phase"])
        tasks = GaugeMetricFamily("compozy_tasks_active", "Task attempts not ended of the executions this operator "
                                  "drives: Waiting (for a worker slot), Pending (command published, not yet taken), "
                                  "Running", labels=[*RUN_LABELS, "phase"])
        queued = GaugeMetricFamily("compozy_task_queue_depth", "Task attempts waiting to run (Waiting and Pending)",
                                   labels=["namespace"])
        runs: TypedCounter[tuple[str, str, str]] = TypedCounter()
        open_tasks: TypedCounter[tuple[str, str, str]] = TypedCounter()
        depth: TypedCounter[str] = TypedCounter()
        for namespace, status in list(self.runs()):
            if status is None or status.phase in TERMINAL_PHASES:
                continue
            labels = run_labels(namespace, status)
            runs[(*labels, status.phase)] += 1
            for task in status.tasks.values():
                if task.phase in OPEN_TASK_PHASES:
                    open_tasks[(*labels, task.phase)] += 1
                    depth[namespace] += task.phase != "Running"
        for key, n in runs.items():
            active.add_metric(list(key), n)
        for key, n in open_tasks.items():
            tasks.add_metric(list(key), n)
        for namespace, n in depth.items():
            queued.add_metric([namespace], n)
        connected = GaugeMetricFamily("compozy_nats_connected", "1 while this NATS connection is up",
                                      labels=["connection"])
        disconnects = CounterMetricFamily("compozy_nats_disconnects", "Times this NATS connection was lost "
                                          "(the client then reconnects on its own)", labels=["connection"])
        for bus in self.buses():
            connected.add_metric([bus.name], 1 if bus.connected else 0)
            disconnects.add_metric([bus.name], bus.disconnects)
        yield from (active, tasks, queued, connected, disconnects)


EVENT_MEMORY = 10_000  # Events whose count this operator remembers (others are read back once)


class EventRecorder:
    """core/v1 Events on executions (what ``kubectl describe wfx`` shows), aggregated as kubelet's are:
    one Event per (execution, type, reason) with a deterministic name, whose ``count`` and
    ``lastTimestamp`` go up and whose message is the latest. A run retried a thousand times has one
    ``TaskFailed`` Event with count 1000, not a thousand Events: at most one per reason per run.
    One write per milestone, as before (a create the first time, a patch after). Thread-safe: it
    is called from the executor's threads."""

    def __init__(self, kube: Kube) -> None:
        self.kube = kube
        self.counts: OrderedDict[str, int] = OrderedDict()  # Event name -> its count as last written
        self.locks: dict[str, threading.Lock] = {}
        self.guard = threading.Lock()

    def post(self, execution: dict[str, Any], etype: str, reason: str, message: str) -> None:
        meta = execution["metadata"]
        name = event_name(meta["name"], meta["uid"], etype, reason)
        with self.guard:
            lock = self.locks.setdefault(name, threading.Lock())
        try:
            with lock:
                self._post(meta, name, etype, reason, message[:1024])
        except ApiException as e:
            log.warning("could not post event %s on %s/%s: %s", reason, meta["namespace"], meta["name"], e.reason)
        finally:
            with self.guard:
                if len(self.locks) > EVENT_MEMORY:
                    self.locks.pop(name, None)

    def _post(self, meta: dict[str, Any], name: str, etype: str, reason: str, message: str) -> None:
        path = f"/api/v1/namespaces/{meta['namespace']}/events"
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        count = self.counts.get(name)
        if count is None:
            body = {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": name, "namespace": meta["namespace"]},
                "involvedObject": {"apiVersion": API_VERSION, "kind": "WorkflowExecution", "name": meta["name"],
                                   "namespace": meta["namespace"], "uid": meta["uid"]},
                "type": etype, "reason": reason, "message": message,
                "source": {"component": "compozy-operator"}, "reportingComponent": "compozy-operator",
                "firstTimestamp": now, "lastTimestamp": now, "count": 1,
            }
            try:
                self.kube.create(path, body)
                self._remember(name, 1)
                return
            except ApiException as e:
                if e.status != 409:
                    raise
            count = int(self.kube.get(f"{path}/{name}").get("count") or 1)  # posted by an earlier operator
        try:
            self.kube.merge_patch(f"{path}/{name}", {"count": count + 1, "lastTimestamp": now, "message": message})
            self._remember(name, count + 1)
        except ApiException as e:
            if e.status != 404:
                raise
            with self.guard:
                self.counts.pop(name, None)  # expired (the API server's event TTL): a new one
            self._post(meta, name, etype, reason, message)

    def _remember(self, name: str, count: int) -> None:
        with self.guard:
            self.counts[name] = count
            self.counts.move_to_end(name)
            while len(self.counts) > EVENT_MEMORY:
                self.counts.popitem(last=False)


def event_name(execution: str, uid: str, etype: str, reason: str) -> str:
    """``<execution>.<hash>``: the same for every Event of one run, type and reason (a new run of the
    same name gets its own)."""
    digest = hashlib.sha256(f"{uid}/{etype}/{reason}".encode()).hexdigest()[:16]
    return f"{execution[:200]}.{digest}"


class HttpServer:
    """``/metrics`` for Prometheus, ``/healthz`` (the process serves), ``/readyz`` (503 with the reason
    while anything the operator needs is missing: NATS, a stream, the state consumer, a loop)."""

    def __init__(self, port: int, ready: Callable[[], tuple[bool, str]]) -> None:
        self.port = port
        self.ready = ready
        self.runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", lambda _: web.Response(text="ok"))
        app.router.add_get("/readyz", self._readyz)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "0.0.0.0", self.port).start()  # noqa: S104 - a pod serves on its IP

    async def _metrics(self, _: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _readyz(self, _: web.Request) -> web.Response:
        ok, why = self.ready()
        return web.Response(status=200 if ok else 503, text=why)

    async def stop(self) -> None:
        if self.runner:
            await self.runner.cleanup()
