"""workflow.Executor: what to do next, from the workflow spec and the execution status alone.

Pure: no I/O, and the clock comes in as an argument. The orchestrator calls :func:`decide`
whenever the status may have moved (and at the times a :class:`WakeAt` asks for) and carries
out the actions; calling it twice on the same status and time gives the same actions, which the
orchestrator makes harmless (deterministic pod names and event ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .api.models import ErrorInfo, Task, TaskStatus, Tool, WorkflowExecutionStatus, WorkflowSpec, parse_duration
from .templates import TemplateError, render

# Failures that would fail the same way again: never retried.
NON_RETRYABLE = frozenset({"TemplateError", "ToolLoadError", "InvalidTool", "Cancelled"})


@dataclass(frozen=True)
class Dispatch:
    """Run one attempt of a task in a pod."""

    task: str
    attempt: int
    tool: Tool
    input: dict[str, Any]


@dataclass(frozen=True)
class FailTask:
    """The orchestrator itself fails an attempt: its input does not render, or it ran out of time
    (``stop_pod``: the attempt's pod must be stopped)."""

    task: str
    attempt: int
    reason: str
    message: str
    stop_pod: bool = False


@dataclass(frozen=True)
class CompleteTask:
    """A task that runs no pod of its own (router, parallel, collection) succeeded with ``output``."""

    task: str
    output: Any


@dataclass(frozen=True)
class ScheduleRetry:
    task: str
    attempt: int  # the attempt to run next
    delay: float  # seconds
    not_before: str  # delay added to the failure's time (RFC 3339)


@dataclass(frozen=True)
class Finish:
    phase: str  # Succeeded | Failed | TimedOut | Cancelled
    output: Any = None
    error: ErrorInfo | None = None


@dataclass(frozen=True)
class WakeAt:
    """Nothing to do now; decide again at ``at`` (epoch seconds) unless something happens first."""

    at: float


Action = Dispatch | FailTask | CompleteTask | ScheduleRetry | Finish | WakeAt


@dataclass(frozen=True)
class RunContext:
    """Facts of the run that are not in the status."""

    execution: str
    input: Any
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None  # whole-run timeout in seconds (execution spec, else workflow spec)
    cancel: bool = False  # spec.cancel


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def backoff_delay(task: Task, failed_attempt: int) -> float:
    """initial * factor^(n-1), capped at max; 0 without a backoff."""
    b = task.retry.backoff if task.retry else None
    if b is None:
        return 0.0
    return min(parse_duration(b.max), parse_duration(b.initial) * b.factor ** (failed_attempt - 1))


def template_context(wf: WorkflowSpec, status: WorkflowExecutionStatus, run: RunContext) -> dict[str, Any]:
    tasks = {}
    for tid, t in status.tasks.items():
        error = t.error or (t.attempts[-1].error if t.attempts else None)
        tasks[tid] = {"output": t.output, "status": t.phase, "error": error.dump() if error else None}
    return {"workflow": {"input": run.input, "id": run.execution}, "tasks": tasks, "env": {**(wf.env or {}), **run.env}}


def _tool(wf: WorkflowSpec, task: Task) -> Tool:
    for tool in wf.tools or []:
        if tool.id == task.tool:
            return tool
    raise LookupError(f"task {task.id}: tool {task.tool!r} is not defined")  # validation prevents this


def _start(wf: WorkflowSpec, task: Task, attempt: int, status: WorkflowExecutionStatus, run: RunContext) -> Action:
    try:
        rendered = render(task.with_ or {}, template_context(wf, status, run), f"tasks.{task.id}.with")
    except TemplateError as e:
        return FailTask(task.id, attempt, "TemplateError", str(e))
    return Dispatch(task.id, attempt, _tool(wf, task), rendered)


def _finish_success(wf: WorkflowSpec, status: WorkflowExecutionStatus, run: RunContext) -> Finish:
    if wf.output is None:
        return Finish("Succeeded", None)
    try:
        return Finish("Succeeded", render(wf.output, template_context(wf, status, run), "spec.output"))
    except TemplateError as e:
        return Finish("Failed", error=ErrorInfo(reason="TemplateError", message=str(e)))


def _in_flight(task: Task, st: TaskStatus, now: float) -> list[Action]:
    """A dispatched attempt: wait for it, or fail it when its timeout has passed."""
    if not task.timeout or not st.dispatched_at:
        return []
    limit = parse_duration(task.timeout)
    deadline = epoch(st.dispatched_at) + limit
    if now >= deadline:
        return [FailTask(task.id, st.attempt, "Timeout",
                         f"attempt {st.attempt} exceeded the task timeout of {task.timeout}", stop_pod=True)]
    return [WakeAt(deadline)]


def _failed(task: Task, st: TaskStatus) -> ScheduleRetry | None:
    """The retry to schedule after a failed attempt, if the policy allows one."""
    reason = st.error.reason if st.error else None
    limit = task.retry.limit if task.retry else 0
    if st.phase != "Failed" or reason in NON_RETRYABLE or st.attempt > limit:
        return None
    delay = backoff_delay(task, st.attempt)
    failed_at = epoch(st.finished_at) if st.finished_at else 0.0
    return ScheduleRetry(task.id, st.attempt + 1, delay, rfc3339(failed_at + delay))


def _run_timeout(status: WorkflowExecutionStatus, run: RunContext, now: float) -> list[Action]:
    if run.timeout is None or not status.started_at:
        return []
    deadline = epoch(status.started_at) + run.timeout
    if now >= deadline:
        return [Finish("TimedOut", error=ErrorInfo(reason="Timeout",
                                                   message=f"the workflow exceeded its timeout of {run.timeout:g}s"))]
    return [WakeAt(deadline)]


def decide(wf: WorkflowSpec, status: WorkflowExecutionStatus, run: RunContext, now: float) -> list[Action]:
    """The next actions of a Running execution (empty while tasks are in flight or after the end)."""
    if status.phase != "Running":
        return []
    if run.cancel:
        return [Finish("Cancelled", error=ErrorInfo(reason="Cancelled", message="cancelled by spec.cancel"))]
    timeout = _run_timeout(status, run, now)
    if timeout and isinstance(timeout[0], Finish):
        return timeout
    by_id = {t.id: t for t in wf.tasks}
    task: Task | None = wf.tasks[0]
    visited: set[str] = set()
    while task is not None:
        if task.id in visited:
            return [Finish("Failed", error=ErrorInfo(task=task.id, reason="Cycle",
                                                     message=f"task {task.id} would run a second time"))]
        visited.add(task.id)
        st = status.tasks.get(task.id)
        if st is None:
            return [_start(wf, task, 1, status, run)]
        if st.phase == "Waiting":
            if st.not_before and now < epoch(st.not_before):
                return [WakeAt(epoch(st.not_before)), *timeout]
            return [_start(wf, task, st.attempt, status, run)]
        if st.phase in ("Pending", "Running"):
            return [*_in_flight(task, st, now), *timeout]
        if st.phase == "Succeeded":
            nxt = task.on_success.next if task.on_success else None
            if task.final or not nxt:
                return [_finish_success(wf, status, run)]
            task = by_id[nxt]
            continue
        retry = _failed(task, st)
        if retry is not None:
            return [retry]
        nxt = task.on_error.next if task.on_error else None
        if nxt:
            task = by_id[nxt]
            continue
        err = st.error or ErrorInfo()
        attempts = f" after {st.attempt} attempts" if st.attempt > 1 else ""
        return [Finish("Failed", error=ErrorInfo(task=task.id, reason=err.reason,
                                                 message=f"task {task.id} failed{attempts}: "
                                                         f"{err.message or err.reason}"))]
    return []
