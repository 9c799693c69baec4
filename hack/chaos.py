"""Chaos harness: a mixed load of WorkflowExecutions while the operator, NATS, a node, pods, the
state consumer and the streams are broken on purpose; then every run is checked.

    make chaos                                   # the full run (~6-10 minutes)
    .venv/bin/python hack/chaos.py --short       # the short run that `make test` makes too
    .venv/bin/python hack/chaos.py --executions 30 --kills 5 --nats-outages 3 --seed 7

Load: executions of seven workflow kinds, submitted round-robin with at most ``--concurrency``
in flight, for as long as faults are injected and until ``--executions`` were submitted:

* ``seq``      three sequential tasks, each adding 1;
* ``par``      a parallel task (three children) then a task joining them;
* ``coll``     a collection of four items, two workers;
* ``retry``    a task whose attempt 1 raises and attempt 2 succeeds;
* ``timeout``  a task whose attempt 1 sleeps past its 15 s timeout and is retried;
* ``deadline`` a task that always times out (3 s, one retry): the run must end Failed, as specified;
* ``mixed``    all of it in one run, plus a timing-out task whose ``onError`` leads on.

Every basic task may retry 4 times (1-4 s back-off), so the faults below cannot change a run's
end: every run must end with the phase and output its kind and input give. Each tool appends
``<execution> <task> <attempt> <time>`` to ``runs.log`` in the output directory when it starts (task pods
are local processes on the process nodes), which is how runs are counted: not pods, not events.

Faults, one after the other with a random 0.5-6 s gap, in a random order (``--seed``):
SIGKILL of the operator (restarted at once), nats-server stopped for each ``--nats-outages``
duration and resumed (same ports and data), a process node stopped and started again, running
task pods deleted (alternately with the default grace and with none), the state consumer
``compozy-state-manager`` deleted, the ``COMPOZY_STATE`` and ``COMPOZY_COMMANDS`` streams deleted,
and events injected on ``compozy.state.<ns>.<execution>...`` (an attempt's subject, see events.py): malformed ones (not JSON, ``data: {}``,
a non-numeric attempt, no id, an unknown type, an array), duplicates of real events (with their
``Nats-Msg-Id`` and without one, so JetStream's de-duplication does not hide them) and real events
re-published in reverse order after later ones (out of order).

Printed (and written to ``report.json`` in the output directory, with ``runs.json``: every run's
final status and status-change times, ``events/<run>.jsonl``: the state events of every run with a
problem, ``operator.log`` and ``logs/``); the must-be-zero counts set the exit code (1 if any is
not zero), times are figures only:

* lost: runs that never reached an end (not after the stuck deadline, nor after a final clean
  operator restart and ``--final-wait`` more seconds);
* duplicated: tool attempts (execution, task, attempt) that ran more than once;
* stuck: runs not ended within ``--stuck-deadline`` seconds after the faults stopped (lost ones
  included);
* wrong results: ended runs whose phase or output differs from what their kind must give, or,
  in a run that must succeed, a task not ended as designed (e.g. ``Cancelled`` or ``Pending``
  after the run's end), or a task that ended after its successor started (a task run again
  after it had succeeded: the output is the same, the run is not);
* unrecorded attempts: attempts whose tool ran (``runs.log``) but that no status shows, neither
  as a task's current attempt nor among its earlier ``attempts`` (an acknowledged event lost);
  not counted: those that ran in the 40 s before ``COMPOZY_STATE`` was deleted (their events
  may have gone with it; the report says how many);
* unexplained attempt failures: failed attempts that are neither designed (attempt 1 of ``retry``,
  the timeouts) nor caused by an injected fault that kills attempts: the deleted pod's attempt,
  the attempts on the restarted node, a timeout that overlaps a fault that can hold an attempt
  up (not a deleted pod of another run, not an injected event), a pod left without its
  command by the deletion of ``COMPOZY_COMMANDS``, an attempt in flight when ``COMPOZY_STATE``
  was deleted (its reports may have gone with it). A NATS outage must cost nothing but time.
* pods left: task pods of ended runs still there 30 s after the last run ended.

Recovery per fault kind, p50/max over the faults of the kind: from the end of the fault (the
restarted operator ready, nats-server accepting connections again, the node Ready, the deletion
or injection done) until every execution the fault affected has changed status again. Affected:
for a deleted pod or a restarted node, the runs whose pods it killed; for the others, the runs in
flight at the fault's end that made progress (were created, or changed status) between the end of
the fault before and this one's start: a run that has not moved since an earlier fault is charged
to that one only. An affected run that has not changed yet when the next fault (of all runs)
begins is carried to that fault and measured from its end (the report counts them). A run that
is waiting by design (a back-off, a timeout) counts its wait too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import threading
import time
import traceback
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' helpers (kubectl, CRDs)

import nats  # noqa: E402
from nats.js.errors import NotFoundError  # noqa: E402

from compozy_operator.events import EventType, Publisher, state_subject  # noqa: E402
from compozy_operator.testenv import DevEnvironment  # noqa: E402
from compozy_operator.testenv.operator_process import OperatorProcess  # noqa: E402
from tests.helpers import Kubectl, apply_crds  # noqa: E402

NS = "chaos"
GROUP_PATH = f"/apis/compozy.dev/v1alpha1/namespaces/{NS}"
PODS_PATH = f"/api/v1/namespaces/{NS}/pods"
TASK_POD_SELECTOR = "app.kubernetes.io/component=task"
TASK_IMAGE = "compozy/compozy-operator:test"
STATE_STREAM, COMMAND_STREAM, DURABLE = "COMPOZY_STATE", "COMPOZY_COMMANDS", "compozy-state-manager"
TERMINAL = ("Succeeded", "Failed", "TimedOut", "Cancelled")
INJECTED = "Chaos-Injected"

# ---- the load ------------------------------------------------------------------------------

MARK = """import os
import time


def _mark(input, ctx):
    # one line per run of a tool attempt, written when it starts (O_APPEND: whole lines)
    fd = os.open(os.path.join(input["dir"], "runs.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{ctx.execution} {ctx.task} {ctx.attempt} {time.time():.3f}\\n".encode())
    finally:
        os.close(fd)
"""
TOOLS = [
    {"id": "step", "python": MARK + """
def run(input, ctx):
    _mark(input, ctx)
    return {"v": input["x"] + input.get("add", 1)}
"""},
    {"id": "flaky", "python": MARK + """
def run(input, ctx):
    _mark(input, ctx)
    if ctx.attempt == 1:
        raise RuntimeError("planned failure of attempt 1")
    return {"v": input["x"] * 2}
"""},
    {"id": "slowfirst", "python": MARK + """
def run(input, ctx):
    _mark(input, ctx)
    if ctx.attempt == 1:
        time.sleep(600)  # past the task's timeout: the attempt times out, the next one runs
    return {"v": input["x"] + 1}
"""},
    {"id": "never", "python": MARK + """
def run(input, ctx):
    _mark(input, ctx)
    time.sleep(600)
    return {}
"""},
]
N = "{{ workflow.input.n }}"
RETRY = {"limit": 4, "backoff": {"initial": "1s", "factor": 2, "max": "4s"}}
SLOW_TIMEOUT = "15s"  # a no-op attempt takes ~5 s from dispatch to end on 2 busy cores
DEADLINE_TIMEOUT = "3s"
KINDS = ("seq", "par", "coll", "retry", "timeout", "deadline", "mixed")
# faults that may hold an attempt or its report up long enough for its timeout to pass
DELAYING = frozenset({"operator-kill", "nats-outage", "node-restart", "stream-delete", "consumer-delete"})
DESIGNED_TIMEOUTS = {"slowfirst": 1, "wait": None, "guard": None}  # task -> attempt that times out (None: all)


def _task(tid: str, tool: str, nxt: str | None = None, retry: dict | None = RETRY, **with_: Any) -> dict[str, Any]:
    t: dict[str, Any] = {"id": tid, "tool": tool, "with": {"dir": "{{ workflow.input.dir }}", **with_}}
    if retry:
        t["retry"] = retry
    if nxt:
        t["onSuccess"] = {"next": nxt}
    return t


def _parallel(tid: str, nxt: str, adds: list[int]) -> dict[str, Any]:
    return {"id": tid, "type": "parallel", "strategy": "waitAll", "onSuccess": {"next": nxt},
            "tasks": [_task(f"p{i + 1}", "step", x=N, add=a) for i, a in enumerate(adds)]}


def _collection(tid: str, nxt: str | None) -> dict[str, Any]:
    t = {"id": tid, "type": "collection", "items": "{{ workflow.input.numbers }}", "mode": "parallel",
         "maxWorkers": 2, "task": _task("item", "step", x="{{ item }}", add="{{ index }}")}
    if nxt:
        t["onSuccess"] = {"next": nxt}
    return t


def _slow(tid: str, nxt: str | None, x: str) -> dict[str, Any]:
    return {**_task(tid, "slowfirst", nxt, x=x), "timeout": SLOW_TIMEOUT}


def workflows() -> list[dict[str, Any]]:
    specs: dict[str, dict[str, Any]] = {
        "seq": {"tasks": [_task("a", "step", "b", x=N), _task("b", "step", "c", x="{{ tasks.a.output.v }}"),
                          _task("c", "step", x="{{ tasks.b.output.v }}")],
                "output": {"v": "{{ tasks.c.output.v }}"}},
        "par": {"tasks": [_parallel("fan", "join", [10, 20, 30]), _task("join", "step", x="{{ tasks.p3.output.v }}")],
                "output": {"fan": "{{ tasks.fan.output }}", "join": "{{ tasks.join.output.v }}"}},
        "coll": {"tasks": [_collection("each", None)], "output": {"each": "{{ tasks.each.output }}"}},
        "retry": {"tasks": [_task("flaky", "flaky", x=N)], "output": {"v": "{{ tasks.flaky.output.v }}"}},
        "timeout": {"tasks": [_slow("slowfirst", None, N)], "output": {"v": "{{ tasks.slowfirst.output.v }}"}},
        "deadline": {"tasks": [{**_task("wait", "never", retry={"limit": 1, "backoff": {"initial": "1s"}}),
                                "timeout": DEADLINE_TIMEOUT}]},
        "mixed": {"tasks": [
            _task("a", "step", "fan", x=N),
            _parallel("fan", "each", [10, 20]),
            _collection("each", "flaky"),
            _task("flaky", "flaky", "slowfirst", x="{{ tasks.a.output.v }}"),
            _slow("slowfirst", "guard", "{{ tasks.flaky.output.v }}"),
            {**_task("guard", "never", retry=None), "timeout": DEADLINE_TIMEOUT, "onError": {"next": "fallback"}},
            _task("fallback", "step", x="{{ tasks.slowfirst.output.v }}", add=100)],
            "output": {"a": "{{ tasks.a.output.v }}", "fan": "{{ tasks.fan.output }}", "each": "{{ tasks.each.output }}",
                       "slow": "{{ tasks.slowfirst.output.v }}", "fallback": "{{ tasks.fallback.output.v }}"}},
    }
    return [{"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": f"chaos-{k}"},
             "spec": {"tools": TOOLS, **spec}} for k, spec in specs.items()]


def run_input(kind: str, n: int, rundir: Path) -> dict[str, Any]:
    # (not `items`: `workflow.input.items` is the dict's method in the template engine)
    numbers = {"coll": [n, n + 1, n + 2, n + 3], "mixed": [n, n + 1]}.get(kind)
    return {"dir": str(rundir), "n": n, **({"numbers": numbers} if numbers else {})}


def expected(kind: str, n: int) -> tuple[str, Any]:
    """The phase and output a run of ``kind`` with input ``n`` must end with, whatever the faults."""
    if kind == "seq":
        return "Succeeded", {"v": n + 3}
    if kind == "par":
        return "Succeeded", {"fan": {"p1": {"v": n + 10}, "p2": {"v": n + 20}, "p3": {"v": n + 30}}, "join": n + 31}
    if kind == "coll":
        return "Succeeded", {"each": [{"v": n + 2 * i} for i in range(4)]}
    if kind == "retry":
        return "Succeeded", {"v": 2 * n}
    if kind == "timeout":
        return "Succeeded", {"v": n + 1}
    if kind == "deadline":
        return "Failed", None
    # mixed: a = n+1; the fan children and the collection read the input; flaky doubles a
    a = n + 1
    slow = 2 * a + 1
    return "Succeeded", {"a": a, "fan": {"p1": {"v": n + 10}, "p2": {"v": n + 20}}, "each": [{"v": n}, {"v": n + 2}],
                         "slow": slow, "fallback": slow + 100}


# ---- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    executions: int = 100
    concurrency: int = 12
    kinds: tuple[str, ...] = KINDS
    kills: int = 22
    nats_outages: tuple[float, ...] = (3, 20, 60)
    node_restarts: int = 1
    node_down: float = 8.0  # seconds the node stays down (more than the operator's 5 s node-lost limit)
    pod_deletes: int = 8
    consumer_deletes: int = 2
    stream_deletes: tuple[str, ...] = (STATE_STREAM, COMMAND_STREAM)
    malformed: int = 2
    duplicates: int = 2
    out_of_order: int = 2
    gap: tuple[float, float] = (0.5, 6.0)
    warmup: float = 8.0
    stuck_deadline: float = 120.0
    final_wait: float = 60.0
    pods_wait: float = 30.0
    nodes: int = 2
    seed: int | None = None


SHORT = Config(executions=20, concurrency=8, kills=3, nats_outages=(5,), node_restarts=0, pod_deletes=1,
               consumer_deletes=1, stream_deletes=(), malformed=1, duplicates=1, out_of_order=1, warmup=6.0,
               stuck_deadline=90.0, final_wait=30.0, nodes=1)

# ---- observing: executions and pods (watches), state events (NATS) ---------------------------


def _ts(text: str | None) -> float | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _clean_status(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in (obj.get("status") or {}).items() if k != "kopf"}


class Watch(threading.Thread):
    """List + watch one collection, forever (relists after any error), calling ``on(type, obj)``."""

    def __init__(self, env: DevEnvironment, path: str, on: Callable[[str, dict[str, Any]], None],
                 **query: str) -> None:
        super().__init__(daemon=True)
        self.env, self.path, self.on, self.query = env, path, on, query
        self.stop = threading.Event()
        self.synced = threading.Event()

    def run(self) -> None:
        kube = self.env.kube()
        while not self.stop.is_set():
            try:
                listing = kube.get(self.path, **self.query)
                rv = listing["metadata"]["resourceVersion"]
                for obj in listing["items"]:
                    self.on("SYNC", obj)
                self.synced.set()
                while not self.stop.is_set():
                    for ev in kube.watch(self.path, rv, timeout_seconds=20, **self.query):
                        if ev["type"] == "ERROR":
                            raise RuntimeError(ev["object"].get("message"))
                        rv = ev["object"]["metadata"]["resourceVersion"]
                        if ev["type"] != "BOOKMARK":
                            self.on(ev["type"], ev["object"])
            except Exception:  # noqa: BLE001 - relist
                if not self.stop.is_set():
                    time.sleep(0.5)


@dataclass
class Run:
    name: str
    kind: str
    n: int
    created: float
    uid: str = ""
    status: dict[str, Any] = field(default_factory=dict)
    changes: list[float] = field(default_factory=list)  # times the status changed (as a watch saw it)
    ended: float | None = None  # first time its phase was terminal

    @property
    def phase(self) -> str:
        return self.status.get("phase") or "(none)"

    def progressed(self, since: float, until: float) -> bool:
        """Created, or its status changed, between ``since`` and ``until``."""
        return since < self.created <= until or any(since < t <= until for t in self.changes)


@dataclass
class PodSeen:
    name: str
    execution: str
    node: str
    phase: str
    first: float
    gone: float | None = None


class Tracker:
    """Executions and task pods as the watches see them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.runs: dict[str, Run] = {}
        self.pods: dict[str, PodSeen] = {}
        self.first_seen: dict[str, float] = {}  # pod name -> when a pod of that name was first seen

    def add(self, run: Run) -> None:
        with self.lock:
            self.runs[run.name] = run

    def on_execution(self, etype: str, obj: dict[str, Any]) -> None:
        now = time.time()
        name = obj["metadata"]["name"]
        with self.lock:
            run = self.runs.get(name)
            if run is None or etype == "DELETED":
                return
            run.uid = obj["metadata"]["uid"]
            status = _clean_status(obj)
            if status != run.status:
                run.status = status
                run.changes.append(now)
                if run.ended is None and status.get("phase") in TERMINAL:
                    run.ended = now

    def on_pod(self, etype: str, obj: dict[str, Any]) -> None:
        now = time.time()
        meta = obj["metadata"]
        owner = next((o["name"] for o in meta.get("ownerReferences") or [] if o.get("kind") == "WorkflowExecution"), "")
        with self.lock:
            pod = self.pods.get(meta["name"])
            if pod is None or (pod.gone is not None and etype != "DELETED"):
                pod = self.pods[meta["name"]] = PodSeen(meta["name"], owner, "", "Pending", now)
                self.first_seen.setdefault(meta["name"], now)
            pod.node = obj["spec"].get("nodeName") or pod.node
            pod.phase = (obj.get("status") or {}).get("phase") or pod.phase
            if etype == "DELETED":
                pod.gone = now

    def in_flight(self, at: float | None = None) -> list[str]:
        with self.lock:
            if at is None:
                return [r.name for r in self.runs.values() if r.ended is None]
            return [r.name for r in self.runs.values() if r.created <= at and (r.ended is None or r.ended > at)]

    def live_pods(self, phase: str | None = None, node: str | None = None) -> list[PodSeen]:
        with self.lock:
            return [p for p in self.pods.values() if p.gone is None and (phase is None or p.phase == phase)
                    and (node is None or p.node == node)]


class Bus(threading.Thread):
    """A NATS connection of the harness's own (reconnects forever): records the state events of
    the runs (for duplicates and re-ordering) and carries the stream/consumer faults."""

    def __init__(self, url: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url, self.token = url, token
        self.loop = asyncio.new_event_loop()
        self.events: dict[str, list[tuple[str, bytes, str | None]]] = defaultdict(list)  # execution -> events
        self.lock = threading.Lock()
        self.start()
        self.call(self._connect())

    def run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _connect(self) -> None:
        async def quiet(*_: Any) -> None:
            return None

        self.nc = await nats.connect(self.url, token=self.token, name="chaos", allow_reconnect=True,
                                     max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=5,
                                     error_cb=quiet, disconnected_cb=quiet, reconnected_cb=quiet)
        self.js = self.nc.jetstream()
        await self.nc.subscribe(f"compozy.state.{NS}.>", cb=self._on_event)

    async def _on_event(self, msg: Any) -> None:
        headers = msg.headers or {}
        if headers.get(INJECTED):
            return
        parts = msg.subject.split(".")
        if len(parts) < 6:
            return
        with self.lock:
            self.events[parts[3]].append((msg.subject, msg.data, headers.get("Nats-Msg-Id")))

    def recorded(self, execution: str) -> list[tuple[str, bytes, str | None]]:
        with self.lock:
            return list(self.events.get(execution, []))

    async def _publish(self, subject: str, data: bytes, msg_id: str | None) -> None:
        headers = {INJECTED: "1", **({"Nats-Msg-Id": msg_id} if msg_id else {})}
        await self.js.publish(subject, data, stream=STATE_STREAM, headers=headers, timeout=5)

    def publish(self, subject: str, data: bytes, msg_id: str | None = None) -> None:
        self.call(self._publish(subject, data, msg_id))

    def delete_consumer(self) -> bool:
        return self.call(self._try(self.js.delete_consumer(STATE_STREAM, DURABLE)))

    def delete_stream(self, name: str) -> bool:
        return self.call(self._try(self.js.delete_stream(name)))

    @staticmethod
    async def _try(coro: Any) -> bool:
        try:
            await coro
            return True
        except NotFoundError:
            return False

    def close(self) -> None:
        try:
            self.call(self.nc.close(), timeout=5)
        except Exception:  # noqa: BLE001
            pass
        self.loop.call_soon_threadsafe(self.loop.stop)


# ---- faults ------------------------------------------------------------------------------------


@dataclass
class Fault:
    kind: str
    detail: str = ""
    start: float = 0.0
    end: float = 0.0
    affected: list[str] | None = None  # None: every run in flight at the end
    pods: list[str] = field(default_factory=list)  # pods whose attempts it killed
    skipped: str | None = None
    recovery: float | None = None
    slowest: str | None = None  # the affected run that took longest to change again
    carried: int = 0  # affected runs still held up when the next fault began (measured from that one's end)
    not_recovered: list[str] = field(default_factory=list)


def plan(cfg: Config, rng: random.Random) -> list[Fault]:
    faults = [Fault("operator-kill") for _ in range(cfg.kills)]
    faults += [Fault("nats-outage", f"{d:g}s") for d in cfg.nats_outages]
    faults += [Fault("node-restart") for _ in range(cfg.node_restarts)]
    faults += [Fault("pod-delete", "grace 0" if i % 2 else "default grace") for i in range(cfg.pod_deletes)]
    faults += [Fault("consumer-delete", DURABLE) for _ in range(cfg.consumer_deletes)]
    faults += [Fault("stream-delete", s) for s in cfg.stream_deletes]
    faults += [Fault("inject-malformed") for _ in range(cfg.malformed)]
    faults += [Fault("inject-duplicate") for _ in range(cfg.duplicates)]
    faults += [Fault("inject-out-of-order") for _ in range(cfg.out_of_order)]
    rng.shuffle(faults)
    return faults


class OperatorDown(Exception):
    pass


class Chaos:
    def __init__(self, cfg: Config, out: Path, log: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.out = out
        self.say = log
        self.seed = cfg.seed if cfg.seed is not None else random.randrange(1 << 30)
        self.rng = random.Random(self.seed)
        self.tracker = Tracker()
        self.faults: list[Fault] = []
        self.crashes: list[float] = []  # the operator exited without being killed
        self.restart_failures: list[str] = []
        self.faults_done = threading.Event()
        self.stop_load = threading.Event()
        self.started = time.time()
        self.last_submit = 0.0

    # -- environment --

    def log(self, text: str) -> None:
        self.say(f"[chaos {time.time() - self.started:6.1f}s] {text}")

    def setup(self, env: DevEnvironment) -> None:
        self.env = env
        (self.out / "runs.log").touch()
        kubectl = Kubectl(env.bindir, env.kubeconfig)
        apply_crds(kubectl)
        kubectl.ok("create", "namespace", NS)
        env.cluster.wait_default_service_account(NS)
        out = kubectl.apply(NS, *workflows())
        if out.returncode != 0:
            raise RuntimeError(f"kubectl apply of the workflows failed: {out.stderr}")
        self.op = OperatorProcess(env, log_path=self.out / "operator.log", extra_env={
            "COMPOZY_TASK_IMAGE": TASK_IMAGE, "COMPOZY_POD_START_TIMEOUT_SECONDS": "10",
            "COMPOZY_NODE_LOST_SECONDS": "5"})
        self.op.start(timeout=90)
        self.bus = Bus(env.nats.url, env.nats.token)
        self.watches = [Watch(env, f"{GROUP_PATH}/workflowexecutions", self.tracker.on_execution),
                        Watch(env, PODS_PATH, self.tracker.on_pod, labelSelector=TASK_POD_SELECTOR)]
        for w in self.watches:
            w.start()
            w.synced.wait(30)

    def start_operator(self) -> None:
        for attempt in range(1, 4):
            try:
                self.op.start(timeout=90)
                return
            except Exception as e:  # noqa: BLE001 - recorded, then tried again
                self.restart_failures.append(f"{type(e).__name__}: {str(e).splitlines()[0]}")
                self.log(f"operator did not become ready (try {attempt}): {str(e).splitlines()[0]}")
                self.op.stop()
        raise OperatorDown("the operator did not become ready after 3 starts")

    def check_operator(self) -> None:
        """An operator that exited on its own is a finding; restart it as its Deployment would."""
        if self.op.proc is not None and not self.op.proc.alive():
            self.crashes.append(time.time())
            self.log(f"the operator exited on its own (code {self.op.proc.popen.returncode}); restarting it")
            self.start_operator()

    # -- load --

    def load(self) -> None:
        kube = self.env.kube()
        i = 0
        kinds = self.cfg.kinds
        while not self.stop_load.is_set():
            if i >= self.cfg.executions and self.faults_done.is_set():
                break
            if len(self.tracker.in_flight()) >= self.cfg.concurrency:
                time.sleep(0.2)
                continue
            kind = kinds[i % len(kinds)]
            name = f"{kind}-{i:03d}"
            body = {"apiVersion": "compozy.dev/v1alpha1", "kind": "WorkflowExecution", "metadata": {"name": name},
                    "spec": {"workflowRef": {"name": f"chaos-{kind}"}, "input": run_input(kind, i, self.out)}}
            run = Run(name, kind, i, time.time())
            self.tracker.add(run)
            try:
                kube.create(f"{GROUP_PATH}/workflowexecutions", body)
            except Exception as e:  # noqa: BLE001 - the apiserver is never a target; say so and go on
                if getattr(e, "status", None) != 409:
                    self.log(f"creating {name} failed: {e}; trying again")
                    with self.tracker.lock:
                        self.tracker.runs.pop(name, None)
                    time.sleep(1)
                    continue
            self.last_submit = time.time()
            i += 1
            time.sleep(0.1)

    # -- the faults --

    def inject(self) -> None:
        time.sleep(self.cfg.warmup)
        self.faults = plan(self.cfg, self.rng)
        for k, f in enumerate(self.faults, 1):
            gap = self.rng.uniform(*self.cfg.gap)
            deadline = time.time() + gap
            while time.time() < deadline:
                self.check_operator()
                time.sleep(0.1)
            self.check_operator()
            f.start = time.time()
            try:
                getattr(self, "fault_" + f.kind.replace("-", "_"))(f)
            except OperatorDown:
                raise
            except Exception as e:  # noqa: BLE001 - a fault that could not be carried out is reported
                f.skipped = f"{type(e).__name__}: {e}"
                traceback.print_exc()
            f.end = f.end or time.time()
            self.log(f"fault {k}/{len(self.faults)} {f.kind} {f.detail}"
                     + (f" SKIPPED: {f.skipped}" if f.skipped else f" ({f.end - f.start:.1f}s)"))
        self.check_operator()

    def fault_operator_kill(self, f: Fault) -> None:
        self.op.kill()
        time.sleep(self.rng.uniform(0, 1.5))
        self.start_operator()
        f.detail = f"down {time.time() - f.start:.1f}s"

    def fault_nats_outage(self, f: Fault) -> None:
        env = self.env
        modern = hasattr(env, "stop_nats")  # else a checkout without it: the same ports and data
        env.stop_nats() if modern else env.nats.stop()
        time.sleep(float(f.detail.rstrip("s")))
        for attempt in range(1, 4):
            try:
                env.resume_nats() if modern else env.nats._launch(30)
                break
            except Exception as e:  # noqa: BLE001 - the run cannot go on without NATS: try again
                self.log(f"nats-server did not come back (try {attempt}): {str(e).splitlines()[0]}")
                if attempt == 3:
                    raise
        f.end = time.time()

    def fault_node_restart(self, f: Fault) -> None:
        name = sorted(self.env.nodes)[-1]
        f.pods = [p.name for p in self.tracker.live_pods(node=name)]
        f.affected = sorted({p.execution for p in self.tracker.live_pods(node=name)})
        f.detail = f"{name}, {len(f.pods)} pods on it, down {self.cfg.node_down:g}s"
        self.env.stop_node(name)
        time.sleep(self.cfg.node_down)
        self.env.start_node(name)
        f.end = time.time()
        # pods scheduled to it while it was down were not killed by it
        with self.tracker.lock:
            f.pods += [p.name for p in self.tracker.pods.values()
                       if p.node == name and f.start <= p.first <= f.end and p.name not in f.pods]

    def fault_pod_delete(self, f: Fault) -> None:
        deadline = time.time() + 15
        while time.time() < deadline:
            flying = set(self.tracker.in_flight())
            pods = [p for p in self.tracker.live_pods(phase="Running") if p.execution in flying]
            if pods:
                break
            time.sleep(0.2)
        if not pods:
            raise RuntimeError("no running task pod to delete")
        pod = self.rng.choice(pods)
        body = {"gracePeriodSeconds": 0} if f.detail == "grace 0" else None
        self.env_kube().delete(f"{PODS_PATH}/{pod.name}", body)
        f.pods, f.affected = [pod.name], [pod.execution]
        f.detail += f": {pod.name}"

    def fault_consumer_delete(self, f: Fault) -> None:
        if not self.bus.delete_consumer():
            f.detail += " (was already gone)"

    def fault_stream_delete(self, f: Fault) -> None:
        if not self.bus.delete_stream(f.detail):
            f.detail += " (was already gone)"

    def _target(self) -> tuple[str, str]:
        """A run in flight (name, uid) that the watch has seen."""
        with self.tracker.lock:
            runs = [r for r in self.tracker.runs.values() if r.ended is None and r.uid]
        if not runs:
            raise RuntimeError("no run in flight")
        run = self.rng.choice(runs)
        return run.name, run.uid

    def fault_inject_malformed(self, f: Fault) -> None:
        name, uid = self._target()
        subject = state_subject(NS, name, EventType.TASK_STARTED, "chaos-ghost", 1, Publisher.ATTEMPT)
        now = datetime.now(timezone.utc).isoformat()

        def env(**kw: Any) -> bytes:
            return json.dumps({"specversion": "1.0", "id": uuid.uuid4().hex, "source": "chaos", "time": now,
                               "subject": subject, **kw}).encode()

        bad = [
            b"\x00 this is not JSON {",
            env(type="TaskExecutionSuccess", data={}),  # issue 10.3: KeyError in the state manager
            env(type="TaskExecutionStarted", data={"namespace": NS, "execution": name, "uid": uid,
                                                   "task": "chaos-ghost", "attempt": "x"}),
            json.dumps({"type": "TaskExecutionSuccess", "source": "chaos"}).encode(),  # no id, no data
            env(type="NoSuchEventType", data={"namespace": NS, "execution": name, "uid": uid}),
            b"[1, 2, 3]",
            env(type="TaskExecutionStarted", data={"namespace": NS, "execution": "chaos-ghost-run", "uid": "x",
                                                   "task": "a", "attempt": 1}),
        ]
        for i, data in enumerate(bad):
            self.bus.publish(subject, data, msg_id=uuid.uuid4().hex if i % 2 else None)
        f.detail = f"{len(bad)} events on {name}"

    def _recorded_target(self, least: int) -> tuple[str, list[tuple[str, bytes, str | None]]]:
        with self.tracker.lock:
            names = [r.name for r in self.tracker.runs.values() if r.ended is None]
        self.rng.shuffle(names)
        for name in names:
            events = self.bus.recorded(name)
            if len(events) >= least:
                return name, events
        raise RuntimeError(f"no run in flight with {least} recorded events")

    def fault_inject_duplicate(self, f: Fault) -> None:
        name, events = self._recorded_target(2)
        picked = self.rng.sample(events, min(6, len(events)))
        for subject, data, msg_id in picked:
            self.bus.publish(subject, data, msg_id)  # JetStream's de-duplication drops this one ...
            self.bus.publish(subject, data, None)  # ... and the consumer gets this one a second time
        f.detail = f"{len(picked)} events of {name}, each with and without its Nats-Msg-Id"

    def fault_inject_out_of_order(self, f: Fault) -> None:
        name, events = self._recorded_target(4)
        early = events[: max(3, len(events) // 2)]
        for subject, data, _ in reversed(early):
            self.bus.publish(subject, data, None)
        f.detail = f"the first {len(early)} events of {name} again, newest first"

    def env_kube(self) -> Any:
        if not hasattr(self, "_kube"):
            self._kube = self.env.kube()
        return self._kube

    # -- the whole run --

    def run(self, env: DevEnvironment) -> Report:
        self.setup(env)
        self.log(f"seed {self.seed}; output in {self.out}")
        loader = threading.Thread(target=self.load, daemon=True)
        loader.start()
        try:
            self.inject()
        except OperatorDown as e:  # the runs in flight end up lost or stuck: the report says so
            self.log(f"faults stopped early: {e}")
        finally:
            self.faults_done.set()
        faults_end = max([f.end for f in self.faults] + [time.time()])
        self.log("faults done; waiting for the remaining submissions")
        loader.join()
        calm = max(faults_end, self.last_submit)
        deadline = calm + self.cfg.stuck_deadline
        self.log(f"{len(self.tracker.runs)} runs submitted; waiting up to {self.cfg.stuck_deadline:g}s for them to end")
        while self.tracker.in_flight() and time.time() < deadline:
            self.check_operator()
            time.sleep(0.5)
        stuck = sorted(self.tracker.in_flight())
        stuck_detail = {name: self.describe(name) for name in stuck}
        restarted = False
        if stuck:
            self.log(f"{len(stuck)} runs not ended; a clean operator restart, then {self.cfg.final_wait:g}s more")
            self.op.stop()
            try:
                self.start_operator()
                restarted = True
            except OperatorDown as e:
                self.log(str(e))
            deadline = time.time() + self.cfg.final_wait
            while self.tracker.in_flight() and time.time() < deadline:
                time.sleep(0.5)
        lost = sorted(self.tracker.in_flight())
        self.log("waiting for the task pods of ended runs to go")
        pods_left = self.pods_left()
        self.refresh()
        return Report.build(self, faults_end, stuck, stuck_detail, lost, restarted, pods_left)

    def pods_left(self) -> list[str]:
        deadline = time.time() + self.cfg.pods_wait
        lost = set(self.tracker.in_flight())
        while True:
            items = self.env_kube().get(PODS_PATH, labelSelector=TASK_POD_SELECTOR)["items"]
            left = [p["metadata"]["name"] for p in items
                    if not any(o.get("name") in lost for o in p["metadata"].get("ownerReferences") or [])]
            if not left or time.time() > deadline:
                return sorted(left)
            time.sleep(1)

    def refresh(self) -> None:
        """The final status of every run, read directly (not from the watch)."""
        items = self.env_kube().get(f"{GROUP_PATH}/workflowexecutions")["items"]
        with self.tracker.lock:
            for obj in items:
                run = self.tracker.runs.get(obj["metadata"]["name"])
                if run is not None:
                    run.status = _clean_status(obj)

    def faults_during(self, run: Run) -> str:
        """The faults of a run's life (for the report), as ``kind@second``."""
        end = run.ended or time.time()
        hits = [f"{f.kind}@{f.start - self.started:.0f}s" for f in self.faults
                if not f.skipped and f.start <= end and f.end >= run.created]
        return f" [faults in its life: {', '.join(hits) or 'none'}]"

    def describe(self, name: str) -> str:
        run = self.tracker.runs[name]
        st = run.status
        tasks = ", ".join(f"{k}:{t.get('phase')}#{t.get('attempt')}" for k, t in (st.get("tasks") or {}).items()
                          if t.get("phase") not in ("Succeeded",))
        last = max(run.changes) - self.started if run.changes else None
        live = [p.name for p in self.tracker.live_pods() if p.execution == name]
        return (f"phase {run.phase}, progress {st.get('progress')}, unfinished tasks [{tasks}], "
                f"last status change at {last if last is None else round(last, 1)}s, live pods {live}"
                + self.faults_during(run))


# ---- the report --------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def tool_run_times(path: Path) -> dict[tuple[str, str, int], list[float]]:
    """``runs.log``: (execution, task, attempt) -> the times its tool started (one per run)."""
    runs: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) in (3, 4):
            runs[(parts[0], parts[1], int(parts[2]))].append(float(parts[3]) if len(parts) == 4 else 0.0)
    return runs


def tool_runs(path: Path) -> Counter[tuple[str, str, int]]:
    return Counter({key: len(times) for key, times in tool_run_times(path).items()})


def failed_attempts(status: dict[str, Any]) -> list[dict[str, Any]]:
    """Every failed attempt of a run's status: earlier attempts' records and failed current ones."""
    out: dict[tuple[str, Any], dict[str, Any]] = {}
    for key, t in (status.get("tasks") or {}).items():
        for rec in t.get("attempts") or []:
            if rec.get("phase") == "Failed" or rec.get("error"):
                out[(key, rec.get("attempt"))] = {"task": key, **rec}
        if t.get("phase") == "Failed" and t.get("error"):
            out.setdefault((key, t.get("attempt")), {
                "task": key, "attempt": t.get("attempt"), "podName": t.get("podName"), "error": t["error"],
                "startedAt": t.get("startedAt"), "finishedAt": t.get("finishedAt"), "dispatchedAt": t.get("dispatchedAt")})
    return list(out.values())


def base_task(key: str) -> str:
    return key.split("[", 1)[0]


def classify(rec: dict[str, Any], faults: list[Fault], first_seen: dict[str, float] | None = None) -> str:
    """``designed``, the kind of fault that explains the failure, or ``unexplained``.

    ``first_seen``: pod name -> when the harness first saw a pod of that name (an attempt's
    beginning when its status has no start: e.g. its events went with a deleted stream)."""
    err = rec.get("error") or {}
    reason, message = err.get("reason"), err.get("message") or ""
    task, attempt = base_task(rec["task"]), rec.get("attempt")
    if task == "flaky" and attempt == 1 and reason == "ToolError" and "planned failure" in message:
        return "designed"
    if task in DESIGNED_TIMEOUTS and reason == "Timeout" and DESIGNED_TIMEOUTS[task] in (None, attempt):
        return "designed"
    pod = rec.get("podName")
    for f in faults:
        if pod and pod in f.pods:
            return f.kind
    finished = _ts(rec.get("finishedAt")) or 0.0
    starts = [t for t in (_ts(rec.get("startedAt")), _ts(rec.get("dispatchedAt")),
                          (first_seen or {}).get(pod or "")) if t]
    began = min(starts) if starts else finished - 60
    for f in faults:
        if f.skipped or not f.start:
            continue
        overlaps = began <= f.end + 5 and finished >= f.start
        if reason == "Timeout" and overlaps and f.kind in DELAYING:
            return f.kind  # the fault held the attempt or its report up while its clock ran
        if f.kind == "stream-delete" and f.detail.startswith(COMMAND_STREAM) and "TaskExecute command" in message \
                and began <= f.end + 5:
            return f.kind  # its command was deleted before its pod (created a moment later) fetched it
        if f.kind == "stream-delete" and f.detail.startswith(STATE_STREAM) and began <= f.end + 5 \
                and finished >= f.start:
            return f.kind  # what it had reported may have gone with the stream
    return "unexplained"


# Stages of each kind's basic tasks: a task of a stage starts only after every task of the stage
# before it ended (its recorded end). A task that ran again after its successor started (e.g. a
# success re-run as a new attempt) shows as a successor that started before it ended.
STAGES = {
    "seq": [["a"], ["b"], ["c"]],
    "par": [["p1", "p2", "p3"], ["join"]],
    "mixed": [["a"], ["p1", "p2"], ["each[0]", "each[1]"], ["flaky"], ["slowfirst"], ["guard"], ["fallback"]],
}


def task_phases(kind: str, status: dict[str, Any]) -> str | None:
    """In a run that must succeed, every task ended as designed: Succeeded (guard: Failed)."""
    tasks = status.get("tasks") or {}
    wrong = [f"{k} {t.get('phase')}" for k, t in sorted(tasks.items())
             if t.get("phase") != ("Failed" if k == "guard" else "Succeeded")]
    return f"tasks not ended as designed in a succeeded run: {', '.join(wrong)}" if wrong else None


def out_of_order(kind: str, status: dict[str, Any]) -> str | None:
    tasks = status.get("tasks") or {}
    stages = STAGES.get(kind, [])
    for before, after in zip(stages, stages[1:]):
        for a in before:
            ended = _ts((tasks.get(a) or {}).get("finishedAt"))
            for b in after:
                began = _ts((tasks.get(b) or {}).get("startedAt"))
                if ended and began and began < ended:
                    return (f"task {b} started ({tasks[b]['startedAt']}) before task {a} ended "
                            f"({tasks[a]['finishedAt']}, attempt {tasks[a].get('attempt')}): {a} ran again, "
                            f"or its end was recorded late")
    return None


def check_result(run: Run, faults: list[Fault]) -> str | None:
    """What is wrong with an ended run's result, or None."""
    phase, output = expected(run.kind, run.n)
    st = run.status
    if st.get("phase") != phase:
        return f"phase {st.get('phase')} (expected {phase}): {st.get('message')}"
    if phase == "Succeeded":
        got = st.get("output")
        if got != output:
            return f"output {json.dumps(got)} (expected {json.dumps(output)})"
        return task_phases(run.kind, st) or out_of_order(run.kind, st)
    # deadline: Failed because task `wait` timed out on both attempts (or a fault ended the last one)
    err = st.get("error") or {}
    wait = (st.get("tasks") or {}).get("wait") or {}
    if err.get("task") != "wait" or wait.get("attempt") != 2:
        return (f"failed on task {err.get('task')} after {wait.get('attempt')} attempts (expected wait after 2): "
                f"{st.get('message')}")
    if err.get("reason") != "Timeout":
        last = {"task": "wait", **wait}
        if classify(last, faults) in ("designed", "unexplained"):
            return f"failed with {err.get('reason')}: {err.get('message')} (expected Timeout)"
    return None


@dataclass
class Report:
    seed: int
    seconds: float
    executions: int
    kinds: dict[str, int]
    phases: dict[str, int]
    faults: dict[str, int]
    fault_log: list[dict[str, Any]]
    lost: list[str]
    duplicated: dict[str, int]
    stuck: dict[str, str]
    wrong: dict[str, str]
    unexplained: list[dict[str, Any]]
    pods_left: list[str]
    tool_runs: int
    attempts_failed: dict[str, int]
    unrecorded: list[str]
    unrecorded_excused: list[str]  # ran just before COMPOZY_STATE was deleted: their events may be gone
    recovery: dict[str, dict[str, Any]]
    operator_crashes: int
    restart_failures: list[str]
    final_restart: bool
    out: str
    text: str = ""

    MUST_BE_ZERO = ("lost", "duplicated", "stuck", "wrong", "unrecorded", "unexplained", "pods_left")

    def failures(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in self.MUST_BE_ZERO if getattr(self, k)}

    @classmethod
    def build(cls, chaos: Chaos, faults_end: float, stuck: list[str], stuck_detail: dict[str, str], lost: list[str],
              restarted: bool, pods_left: list[str]) -> Report:
        runs = chaos.tracker.runs
        faults = chaos.faults
        done = [f for f in faults if not f.skipped]
        # recovery: fault end -> every affected run's next status change
        carried: set[str] = set()  # runs still held up when the next fault (of all runs) began
        for i, f in enumerate(done):
            prev_end = done[i - 1].end if i else 0.0
            later = next((g.start for g in done[i + 1:] if g.affected is None), float("inf"))
            if f.affected is None:
                affected = {n for n in chaos.tracker.in_flight(at=f.end) if runs[n].progressed(prev_end, f.start)}
                affected |= carried  # (a run that did not move since the fault before is that one's)
                carried = set()
            else:
                affected = set(f.affected)
            worst, considered = 0.0, 0
            for name in sorted(affected):
                run = runs.get(name)
                if run is None or (run.ended is not None and run.ended <= f.end):
                    continue  # it had ended already (e.g. its deleted pod had reported)
                nxt = next((t for t in run.changes if t > f.end), None)
                if nxt is not None and nxt > later:
                    carried.add(name)  # the next fault began first: measured from that one's end
                    f.carried += 1
                    continue
                considered += 1
                if nxt is None:
                    f.not_recovered.append(name)
                elif nxt - f.end >= worst:
                    worst, f.slowest = nxt - f.end, name
            f.recovery = worst if considered else None
        recovery: dict[str, dict[str, Any]] = {}
        for kind in dict.fromkeys(f.kind for f in faults):
            measured = [f for f in done if f.kind == kind and f.recovery is not None and not f.not_recovered]
            values = [f.recovery for f in measured]
            recovery[kind] = {"faults": sum(1 for f in done if f.kind == kind),
                              "p50": percentile(values, 50) if values else None,
                              "max": max(values) if values else None,
                              "slowest": max(measured, key=lambda f: f.recovery).slowest if measured else None,
                              "not_recovered": sum(1 for f in done if f.kind == kind and f.not_recovered),
                              "carried": sum(f.carried for f in done if f.kind == kind)}
        counted = tool_runs(chaos.out / "runs.log")
        duplicated = {f"{e} {t} {a}": c for (e, t, a), c in counted.items() if c > 1}
        ended = [r for r in runs.values() if r.name not in lost]
        wrong = {}
        for r in ended:
            if (problem := check_result(r, faults)) is not None:
                wrong[r.name] = problem + chaos.faults_during(r)
        attempts: Counter[str] = Counter()
        unexplained = []
        known: set[tuple[str, str, int]] = set()
        for r in runs.values():
            for key, t in (r.status.get("tasks") or {}).items():
                known.update((r.name, key, rec["attempt"]) for rec in t.get("attempts") or [])
                if t.get("attempt"):
                    known.add((r.name, key, t["attempt"]))
            for rec in failed_attempts(r.status):
                why = classify(rec, faults, chaos.tracker.first_seen)
                attempts[why] += 1
                if why == "unexplained":
                    err = rec.get("error") or {}
                    unexplained.append({"execution": r.name, "task": rec["task"], "attempt": rec.get("attempt"),
                                        "pod": rec.get("podName"), "reason": err.get("reason"),
                                        "message": (err.get("message") or "")[:300],
                                        "finishedAt": rec.get("finishedAt")})
        # an attempt that ran shortly before COMPOZY_STATE was deleted may have lost its events with it
        state_gone = [f.start for f in done if f.kind == "stream-delete" and f.detail.startswith(STATE_STREAM)]
        times = tool_run_times(chaos.out / "runs.log")
        unrecorded, unrecorded_excused = [], []
        for (e, t, a) in sorted(counted):
            if (e, t, a) in known:
                continue
            gone = any(d - 40 <= when <= d + 5 for d in state_gone for when in times[(e, t, a)])
            (unrecorded_excused if gone else unrecorded).append(f"{e} {t} {a}")
        report = cls(
            seed=chaos.seed, seconds=time.time() - chaos.started, executions=len(runs),
            kinds=dict(Counter(r.kind for r in runs.values())),
            phases=dict(Counter(r.phase for r in runs.values())),
            faults=dict(Counter(f.kind for f in done)),
            fault_log=[{**asdict(f), "start": round(f.start - chaos.started, 2), "end": round(f.end - chaos.started, 2),
                        "affected": len(f.affected) if f.affected is not None else "all in flight"} for f in faults],
            lost=lost, duplicated=duplicated, stuck={n: stuck_detail[n] for n in stuck}, wrong=wrong,
            unexplained=unexplained, pods_left=pods_left, tool_runs=sum(counted.values()),
            attempts_failed=dict(attempts), unrecorded=unrecorded, unrecorded_excused=unrecorded_excused,
            recovery=recovery,
            operator_crashes=len(chaos.crashes), restart_failures=chaos.restart_failures, final_restart=restarted,
            out=str(chaos.out))
        report.text = report.render(chaos)
        return report

    def render(self, chaos: Chaos) -> str:
        cfg = chaos.cfg
        lines = [f"chaos run, seed {self.seed}, {self.seconds:.0f}s; output in {self.out}"]
        must_fail = self.kinds.get("deadline", 0)
        lines.append(f"executions: {self.executions} (" + ", ".join(f"{k} {v}" for k, v in self.kinds.items())
                     + "); ended " + ", ".join(f"{k} {v}" for k, v in sorted(self.phases.items()))
                     + f" (expected: Succeeded {self.executions - must_fail}, Failed {must_fail})")
        by_kind = defaultdict(list)
        for f in chaos.faults:
            if not f.skipped:
                by_kind[f.kind].append(f)
        parts = []
        for kind, fs in by_kind.items():
            extra = ""
            if kind in ("nats-outage", "stream-delete"):
                extra = " (" + ", ".join(f.detail.split(" ")[0] for f in fs) + ")"
            parts.append(f"{kind} {len(fs)}{extra}")
        skipped = [f for f in chaos.faults if f.skipped]
        lines.append(f"faults: {sum(len(v) for v in by_kind.values())} — " + ", ".join(parts)
                     + (f"; {len(skipped)} skipped" if skipped else ""))
        lines.append("must be zero:")
        lines.append(f"  lost            {len(self.lost):4d}   never reached an end"
                     + (" (not even after a final clean operator restart)" if self.final_restart else ""))
        lines.append(f"  duplicated      {len(self.duplicated):4d}   tool attempts run more than once "
                     f"({self.tool_runs} tool runs counted)")
        lines.append(f"  stuck           {len(self.stuck):4d}   not ended {cfg.stuck_deadline:g}s after the faults "
                     f"stopped ({len(self.stuck) - len(self.lost)} ended after the final restart)")
        lines.append(f"  wrong results   {len(self.wrong):4d}   phase or output not what the run must give")
        lines.append(f"  unrecorded      {len(self.unrecorded):4d}   attempts that ran but are in no status "
                     f"(neither current nor in tasks.*.attempts)"
                     + (f"; not counted: {len(self.unrecorded_excused)} that ran just before COMPOZY_STATE was "
                        f"deleted" if self.unrecorded_excused else ""))
        lines.append(f"  unexplained     {len(self.unexplained):4d}   failed attempts no injected fault explains")
        lines.append(f"  pods left       {len(self.pods_left):4d}   task pods of ended runs still there after "
                     f"{cfg.pods_wait:g}s")
        lines.append("failed attempts: " + ", ".join(f"{k} {v}" for k, v in sorted(self.attempts_failed.items()))
                     if self.attempts_failed else "failed attempts: none")
        lines.append(f"operator exits on its own: {self.operator_crashes}; restarts that failed: "
                     f"{len(self.restart_failures)}")
        lines.append("recovery (fault end -> every affected run's next status change), per fault kind:")
        for kind, r in self.recovery.items():
            figures = (f"p50 {r['p50']:5.1f}s  max {r['max']:5.1f}s" if r["p50"] is not None else "      -")
            lines.append(f"  {kind:20s} {figures}   ({r['faults']} faults; slowest run {r['slowest']}"
                         + (f"; {r['carried']} runs carried to the next fault" if r["carried"] else "")
                         + (f"; {r['not_recovered']} with runs that never changed again" if r["not_recovered"] else "")
                         + ")")
        details = [("lost", self.lost), ("stuck", [f"{k}: {v}" for k, v in self.stuck.items()]),
                   ("duplicated", [f"{k}: {v} runs" for k, v in self.duplicated.items()]),
                   ("wrong results", [f"{k}: {v}" for k, v in self.wrong.items()]),
                   ("unrecorded attempts (execution task attempt)", self.unrecorded),
                   ("unexplained attempt failures", [f"{u['execution']} {u['task']}#{u['attempt']} ({u['pod']}): "
                                                     f"{u['reason']}: {u['message']}" for u in self.unexplained]),
                   ("pods left", self.pods_left), ("faults skipped", [f"{f.kind}: {f.skipped}" for f in skipped]),
                   ("restart failures", self.restart_failures)]
        for title, items in details:
            if items:
                lines.append(f"{title}:")
                lines += [f"  {x}" for x in items[:25]]
                if len(items) > 25:
                    lines.append(f"  ... {len(items) - 25} more in report.json")
        fails = self.failures()
        lines.append("RESULT: " + ("all must-be-zero counts are zero" if not fails else
                                   "FAILED: " + ", ".join(f"{k} {v}" for k, v in fails.items())))
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({k: v for k, v in asdict(self).items() if k != "text"}, indent=2, default=str))


# ---- entry points ------------------------------------------------------------------------------


def run(cfg: Config, out: Path, log: Callable[[str], None] = print, keep: bool = False) -> Report:
    """Start a local cluster of its own, run the chaos, return the report (also in ``out``)."""
    out.mkdir(parents=True, exist_ok=True)
    chaos = Chaos(cfg, out, log)
    env = DevEnvironment.start(nodes=cfg.nodes)
    env.keep_workdir = keep
    try:
        report = chaos.run(env)
    finally:
        for w in getattr(chaos, "watches", []):
            w.stop.set()
        if hasattr(chaos, "bus"):
            chaos.bus.close()
        if hasattr(chaos, "op"):
            chaos.op.stop()
        for src in [env.workdir / "logs", env.nats.workdir / "nats-server.log"]:
            if src.is_dir():
                shutil.copytree(src, out / "logs", dirs_exist_ok=True)
            elif src.exists():
                shutil.copy(src, out / "logs" / src.name)
        env.stop()
    report.write(out / "report.json")
    with chaos.tracker.lock:
        runs = {r.name: {**asdict(r), "created": round(r.created - chaos.started, 2),
                         "ended": round(r.ended - chaos.started, 2) if r.ended else None,
                         "changes": [round(t - chaos.started, 2) for t in r.changes]}
                for r in chaos.tracker.runs.values()}
    (out / "runs.json").write_text(json.dumps(runs, indent=1, default=str))
    # the state events the harness saw (core NATS, in arrival order) of every run with a problem
    troubled = {*report.lost, *report.stuck, *report.wrong, *(u["execution"] for u in report.unexplained),
                *(x.split()[0] for x in [*report.unrecorded, *report.duplicated])}
    if troubled and hasattr(chaos, "bus"):
        (out / "events").mkdir(exist_ok=True)
        for name in troubled:
            with (out / "events" / f"{name}.jsonl").open("w") as f:
                for subject, data, msg_id in chaos.bus.recorded(name):
                    f.write(json.dumps({"subject": subject, "msgId": msg_id,
                                        "event": data.decode(errors="replace")}) + "\n")
    (out / "report.txt").write_text(report.text + "\n")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="the short run of `make test`")
    parser.add_argument("--executions", type=int)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--kinds", help=f"workflow kinds, comma-separated (default: {','.join(KINDS)})")
    parser.add_argument("--kills", type=int)
    parser.add_argument("--nats-outages", help="seconds, comma-separated (e.g. 3,20,60); empty for none")
    parser.add_argument("--node-restarts", type=int)
    parser.add_argument("--pod-deletes", type=int)
    parser.add_argument("--consumer-deletes", type=int)
    parser.add_argument("--stream-deletes", help="stream names, comma-separated; empty for none")
    parser.add_argument("--malformed", type=int)
    parser.add_argument("--duplicates", type=int)
    parser.add_argument("--out-of-order", type=int)
    parser.add_argument("--stuck-deadline", type=float)
    parser.add_argument("--final-wait", type=float)
    parser.add_argument("--nodes", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--out", type=Path, help="output directory (default: a new one under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the local cluster's run directory")
    args = parser.parse_args()
    cfg = SHORT if args.short else Config()
    changes: dict[str, Any] = {}
    for name in ("executions", "concurrency", "kills", "node_restarts", "pod_deletes", "consumer_deletes",
                 "malformed", "duplicates", "out_of_order", "stuck_deadline", "final_wait", "nodes", "seed"):
        if getattr(args, name) is not None:
            changes[name] = getattr(args, name)
    if args.kinds:
        changes["kinds"] = tuple(args.kinds.split(","))
        if unknown := set(changes["kinds"]) - set(KINDS):
            parser.error(f"unknown kinds: {', '.join(sorted(unknown))}")
    if args.nats_outages is not None:
        changes["nats_outages"] = tuple(float(x) for x in args.nats_outages.split(",") if x)
    if args.stream_deletes is not None:
        changes["stream_deletes"] = tuple(x for x in args.stream_deletes.split(",") if x)
    cfg = replace(cfg, **changes)
    if cfg.node_restarts and cfg.nodes < 2:
        parser.error("--node-restarts needs --nodes 2 or more (the restarted node must not be the only one)")
    out = args.out or Path(f"/tmp/compozy-chaos-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    report = run(cfg, out, keep=args.keep)
    print(report.text, flush=True)
    return 1 if report.failures() else 0


if __name__ == "__main__":
    sys.exit(main())
