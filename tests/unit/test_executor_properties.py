"""Property tests: random valid workflows, driven to their end by a simulator.

The simulator plays the orchestrator and the pods: it folds the events each action stands for
through the real reducer, and lets hypothesis choose when pods end, how (success or failure), and
when the clock moves to a time a WakeAt asked for.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from compozy_operator.resources.models import TERMINAL_PHASES, WorkflowExecutionStatus, WorkflowSpec
from compozy_operator.events import EventType, make_event
from compozy_operator.executor import (IN_FLIGHT, Action, CompleteTask, Dispatch, FailTask, Finish, RunContext,
                                       ScheduleRetry, WakeAt, decide, retry_due, retry_plan, rfc3339)
from compozy_operator.reducer import RESET, TASK_TERMINAL, fold
from compozy_operator.validation import check_workflow, parse_workflow

T0 = 1_800_000_000.0
MAX_STEPS = 1000
_FINISH = {"Succeeded": EventType.WORKFLOW_SUCCESS, "Failed": EventType.WORKFLOW_FAILED,
           "TimedOut": EventType.WORKFLOW_TIMED_OUT, "Cancelled": EventType.WORKFLOW_CANCELLED}


def children_of(wf: WorkflowSpec, status: WorkflowExecutionStatus) -> dict[str, tuple[int | None, list[str]]]:
    """Per parallel task or collection: its worker limit and its children's status keys."""
    out = {}
    for t in wf.tasks:
        if t.type == "parallel":
            out[t.id] = (t.max_workers, [c.id for c in t.tasks or []])
        elif t.type == "collection":
            limit = 1 if t.mode == "sequential" else t.max_workers
            out[t.id] = (limit, [k for k in status.tasks if k.startswith(f"{t.id}[")])
    return out


class Sim:
    """The orchestrator and the pods, in memory, with a simulated clock."""

    def __init__(self, wf: WorkflowSpec, run: RunContext, now: float = T0) -> None:
        self.wf, self.run, self.now = wf, run, now
        self.seq = 0
        self.status = WorkflowExecutionStatus()
        self.pods: list[tuple[str, int]] = []  # attempts running in a pod, oldest first
        self.stopped: list[tuple[str, int]] = []  # pods stopped by a FailTask: their own end may still come
        self.dispatched: set[tuple[str, int]] = set()
        self.emit(EventType.WORKFLOW_STARTED, workflow="sim", taskCount=len(wf.tasks))

    def emit(self, etype: EventType, task: str | None = None, attempt: int | None = None, **data: Any) -> None:
        event = make_event(etype, "sim", "ns", "run", "uid", task, attempt, **data)
        event.time = rfc3339(self.now)
        self.seq += 1
        self.status = fold(self.status, event, self.seq)

    def decide(self) -> list[Action]:
        actions = decide(self.wf, self.status, self.run, self.now)
        assert actions == decide(self.wf, self.status, self.run, self.now), "decide is not deterministic"
        return actions

    def step(self) -> list[Action]:
        """One decide, its actions carried out; checks the rules every action set must keep."""
        actions = self.decide()
        for action in actions:
            self.apply(action)
        self.check_workers()
        return actions

    def apply(self, a: Action) -> None:
        current = self.status.tasks.get(a.task) if isinstance(a, (Dispatch, FailTask, CompleteTask)) else None
        if isinstance(a, Dispatch):
            assert (a.task, a.attempt) not in self.dispatched, f"{a.task} attempt {a.attempt} dispatched twice"
            earlier = [n for k, n in self.dispatched if k == a.task]
            assert a.attempt > max(earlier, default=0), f"{a.task} attempt {a.attempt} after attempts {earlier}"
            self.dispatched.add((a.task, a.attempt))
            self.emit(EventType.TASK_DISPATCHED, a.task, a.attempt, podName=f"{a.task}-{a.attempt}")
            self.emit(EventType.TASK_STARTED, a.task, a.attempt)
            self.pods.append((a.task, a.attempt))
        elif isinstance(a, FailTask):
            assert current is None or current.attempt < a.attempt or current.phase in IN_FLIGHT, \
                f"{a} for a task that already ended: {current}"
            assert a.stop_pod or (a.task, a.attempt) not in self.pods, f"{a} leaves its pod running"
            if (a.task, a.attempt) in self.pods:
                self.pods.remove((a.task, a.attempt))
                self.stopped.append((a.task, a.attempt))
            self.emit(EventType.TASK_FAILED, a.task, a.attempt, error={"reason": a.reason, "message": a.message})
        elif isinstance(a, CompleteTask):
            assert current is None or current.phase == RESET, f"{a} for a task that already has a status: {current}"
            assert a.attempt == (1 if current is None else current.attempt + 1), f"{a} after {current}"
            self.emit(EventType.TASK_SUCCESS, a.task, a.attempt, output=a.output)
        elif isinstance(a, ScheduleRetry):
            self.emit(EventType.TASK_RETRY_SCHEDULED, a.task, a.attempt, delay=a.delay, notBefore=a.not_before)
        elif isinstance(a, Finish):
            r = self.status.retries or 0
            self.emit(_FINISH[a.phase], output=a.output, error=a.error.dump() if a.error else None,
                      **({"round": r} if r else {}))
        else:
            assert a.at > self.now, f"{a} is not in the future (now {self.now})"

    def end_pod(self, index: int, ok: bool, output: Any = None) -> None:
        task, attempt = self.pods.pop(index)
        if ok:
            self.emit(EventType.TASK_SUCCESS, task, attempt, output=output)
        else:
            self.emit(EventType.TASK_FAILED, task, attempt, error={"reason": "ToolError", "message": "boom"})

    def check_workers(self) -> None:
        for parent, (limit, keys) in children_of(self.wf, self.status).items():
            busy = [k for k in keys if k in self.status.tasks and self.status.tasks[k].phase in IN_FLIGHT]
            assert limit is None or len(busy) <= limit, f"{parent}: {busy} in flight, maxWorkers {limit}"


def drive(sim: Sim, data: st.DataObject) -> int:
    """Run until the run ends; hypothesis picks what happens whenever there is a choice. Returns the steps."""
    for steps in range(MAX_STEPS):
        if sim.status.phase in TERMINAL_PHASES:
            return steps
        actions = sim.step()
        progressed = any(not isinstance(a, WakeAt) for a in actions)
        wakes = [a.at for a in actions if isinstance(a, WakeAt)]
        options = (["decide"] if progressed else []) + (["pod"] if sim.pods else []) + (["late"] if sim.stopped else [])
        options += ["clock"] if wakes and not progressed else []
        assert set(options) - {"late"}, f"stuck: nothing in flight and nothing to do; status {sim.status.tasks}"
        choice = data.draw(st.sampled_from(options))
        if choice == "pod":
            index = data.draw(st.integers(0, len(sim.pods) - 1))
            sim.end_pod(index, data.draw(st.integers(0, 3)) > 0, {"v": data.draw(st.integers(0, 9))})
        elif choice == "late":  # a stopped pod reports anyway: the reducer must keep the earlier end
            task, attempt = sim.stopped.pop(0)
            before = sim.status.tasks[task].model_copy()
            sim.emit(EventType.TASK_SUCCESS, task, attempt, output={"late": True})
            assert sim.status.tasks[task].phase == before.phase or sim.status.phase in TERMINAL_PHASES
        elif choice == "clock":
            sim.now = min(wakes)
    raise AssertionError(f"no end after {MAX_STEPS} steps; status {sim.status.tasks}")


# --- random workflows -----------------------------------------------------------------------------

WITHS = [{}, {"n": "{{ workflow.input.n }}"}, {"n": "{{ workflow.input.n }}"}, {"x": "{{ nope }}"}]
CONDITIONS = ["{{ workflow.input.flag }}", "{{ workflow.input.n }}", "{{ nope }}", "fixed"]
ITEMS = [[], [1, 2, 3], "{{ workflow.input.xs }}", "{{ workflow.input.n }}"]


@st.composite
def basic(draw: st.DrawFn, tid: str, with_items: bool = False) -> dict[str, Any]:
    withs = WITHS + ([{"v": "{{ item }}", "i": "{{ index }}"}, {"v": "{{ item.nope }}"}] if with_items else [])
    task: dict[str, Any] = {"id": tid, "tool": "t", "with": draw(st.sampled_from(withs))}
    if draw(st.booleans()):
        task["retry"] = {"limit": draw(st.integers(0, 2)), "backoff": {"initial": "1s", "factor": 2, "max": "4s"}}
    if draw(st.booleans()):
        task["timeout"] = "30s"
    return task


@st.composite
def task_at(draw: st.DrawFn, i: int, ids: list[str]) -> dict[str, Any]:
    tid = ids[i]
    later = ids[i + 1:]
    target = st.sampled_from(later) if later and draw(st.integers(0, 4)) else st.sampled_from(ids)
    maybe_target = st.one_of(st.none(), target)
    kind = draw(st.sampled_from(["basic", "router", "parallel", "collection"]))
    if kind == "basic":
        task = draw(basic(tid))
    elif kind == "router":
        keys = draw(st.lists(st.sampled_from(["true", "false", "3", "fixed"]), min_size=1, max_size=3, unique=True))
        task = {"id": tid, "type": "router", "condition": draw(st.sampled_from(CONDITIONS)),
                "routes": {k: draw(target) for k in keys}}
        if draw(st.booleans()):
            task["default"] = draw(target)
    elif kind == "parallel":
        n = draw(st.integers(1, 3))
        task = {"id": tid, "type": "parallel", "tasks": [draw(basic(f"{tid}c{j}")) for j in range(n)],
                "strategy": draw(st.sampled_from(["waitAll", "failFast", "bestEffort", "race"]))}
        if draw(st.booleans()):
            task["maxWorkers"] = draw(st.integers(1, 2))
    else:
        task = {"id": tid, "type": "collection", "items": draw(st.sampled_from(ITEMS)),
                "task": draw(basic("each", with_items=True)), "mode": draw(st.sampled_from(["parallel", "sequential"]))}
        if draw(st.booleans()):
            task["filter"] = "{{ item % 2 == 1 }}"
        if task["mode"] == "parallel" and draw(st.booleans()):
            task["maxWorkers"] = draw(st.integers(1, 2))
    if kind != "router":
        task["onSuccess"] = {"next": draw(maybe_target)}
        task["final"] = draw(st.sampled_from([None, True]))
    task["onError"] = {"next": draw(maybe_target)}
    return task


@st.composite
def workflows(draw: st.DrawFn) -> WorkflowSpec:
    ids = [f"t{i}" for i in range(draw(st.integers(1, 5)))]
    raw = {"tools": [{"id": "t", "python": "def run(i, c): return i"}],
           "tasks": [draw(task_at(i, ids)) for i in range(len(ids))],
           "output": draw(st.sampled_from([None, {"last": "{{ tasks | length }}"}]))}
    wf = parse_workflow(raw)
    assume(check_workflow(wf) == [])
    return wf


@st.composite
def runs(draw: st.DrawFn) -> RunContext:
    run_input = {"n": 3, "flag": draw(st.booleans()), "xs": draw(st.lists(st.integers(0, 5), max_size=4))}
    return RunContext(execution="run", input=run_input, timeout=draw(st.sampled_from([None, 120.0])))


SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])


@SETTINGS
@given(wf=workflows(), run=runs(), data=st.data())
def test_every_run_ends_and_keeps_the_rules(wf: WorkflowSpec, run: RunContext, data: st.DataObject) -> None:
    sim = Sim(wf, run)
    drive(sim, data)  # bounded, no double dispatch, maxWorkers, nothing ended twice (checked on the way)
    assert sim.status.phase in TERMINAL_PHASES
    assert decide(wf, sim.status, run, sim.now) == []
    if sim.status.phase == "Succeeded":
        assert all(t.phase in TASK_TERMINAL for t in sim.status.tasks.values()), sim.status.tasks
        assert not sim.pods, f"the run succeeded with pods running: {sim.pods}"


@SETTINGS
@given(wf=workflows(), run=runs(), data=st.data())
def test_attempts_never_exceed_the_retry_limit(wf: WorkflowSpec, run: RunContext, data: st.DataObject) -> None:
    sim = Sim(wf, run)
    drive(sim, data)
    tasks = {c.id: c for t in wf.tasks for c in [t, *(t.tasks or [])]}
    for key, attempt in sim.dispatched:
        task = tasks[key.split("[")[0]]
        task = task.task if task.type == "collection" and task.task else task
        assert attempt <= (task.retry.limit if task.retry else 0) + 1, f"{key} attempt {attempt}"


def succeeded_path(wf: WorkflowSpec, status: WorkflowExecutionStatus) -> list[str]:
    """The top-level tasks the run went through, from tasks[0], while they succeeded."""
    by_id, path = {t.id: t for t in wf.tasks}, []
    task = wf.tasks[0]
    while task is not None and task.id not in path:
        st = status.tasks.get(task.id)
        if st is None or st.phase != "Succeeded":
            break
        path.append(task.id)
        nxt = (st.output or {}).get("next") if task.type == "router" else \
            None if task.final or not task.on_success else task.on_success.next
        task = by_id.get(nxt) if nxt else None
    return path


def _parent(wf: WorkflowSpec, status: WorkflowExecutionStatus, key: str) -> str | None:
    return next((p for p, (_, keys) in children_of(wf, status).items() if key in keys), None)


def _reached(wf: WorkflowSpec, status: WorkflowExecutionStatus, key: str, path: list[str]) -> bool:
    """Is ``key`` the task the run stopped at (the one after its succeeded path)?"""
    if not path:
        return wf.tasks[0].id == key
    last = next(t for t in wf.tasks if t.id == path[-1])
    st = status.tasks[last.id]
    nxt = (st.output or {}).get("next") if last.type == "router" else \
        None if last.final or not last.on_success else last.on_success.next
    return nxt == key


@SETTINGS
@given(wf=workflows(), run=runs(), data=st.data())
def test_a_retried_run_keeps_what_succeeded_and_ends_once_per_round(wf: WorkflowSpec, run: RunContext,
                                                                      data: st.DataObject) -> None:
    """``argo retry``: rounds of the same run. What a round keeps (its succeeded prefix) is never
    dispatched again and stays as it was; everything else runs again with attempts above every
    earlier one (checked on each Dispatch); each round ends once; an earlier round's end, folded
    again, changes nothing."""
    sim = Sim(wf, run)
    drive(sim, data)
    for r in range(1, 4):
        ended = sim.status
        if not retry_due(ended, r):
            assert ended.phase == "Succeeded"
            break
        assert not retry_due(ended, r - 1), "a round already acted on is due again"
        plan = retry_plan(wf, ended)
        kept = {k: t for k, t in ended.tasks.items() if k not in plan}
        for key, task in kept.items():  # kept: what succeeded, or a child of a composite that did
            parent = _parent(wf, ended, key)
            assert task.phase == "Succeeded" or (parent and ended.tasks[parent].phase == "Succeeded"), (key, task)
        path = succeeded_path(wf, ended)
        assert set(path) <= set(kept), f"tasks that succeeded on the way run again: {sorted(set(path) - set(kept))}"
        for key, (_, children) in children_of(wf, ended).items():
            if key in path or _reached(wf, ended, key, path):
                assert {c for c in children if c in ended.tasks and ended.tasks[c].phase == "Succeeded"} <= set(kept), key
        before = set(sim.dispatched)
        sim.now += 1
        sim.emit(EventType.WORKFLOW_RETRIED, round=r, tasks=plan)
        assert (sim.status.phase, sim.status.retries) == ("Running", r)
        assert all(sim.status.tasks[k].phase == RESET for k in plan)
        end = next(e for e in _FINISH.values() if _FINISH[ended.phase] == e)
        again = sim.status
        sim.emit(end, **({"round": r - 1} if r > 1 else {}))  # the last round's end, redelivered
        assert sim.status.model_copy(update={"state_seq": again.state_seq}) == again
        drive(sim, data)
        rerun = {key for key, _ in sim.dispatched - before}
        assert not rerun & set(kept), f"kept tasks ran again: {sorted(rerun & set(kept))}"
        assert all(sim.status.tasks[k] == t for k, t in kept.items()), "a kept task's status changed"
        assert decide(wf, sim.status, run, sim.now) == []
        for key, task in sim.status.tasks.items():  # every attempt of earlier rounds is in the history
            if task.prior_attempts:
                assert {a.attempt for a in task.attempts or []} >= set(range(1, task.prior_attempts + 1)), (key, task)
