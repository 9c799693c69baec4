"""The status reducer: (status, state event) -> status. Pure and idempotent.

Idempotency has two layers: an event whose JetStream sequence is not above ``status.stateSeq``
was folded already and is skipped; and every transition checks the state it moves from (a task
event for an older attempt, or for a task already finished, changes nothing), so the same fact
delivered twice under different sequences is harmless too.
"""

from __future__ import annotations

from datetime import datetime

from .api.models import (AttemptRecord, Condition, ErrorInfo, TaskStatus, TERMINAL_PHASES,
                         WorkflowExecutionStatus)
from .events import Event, EventType

TASK_TERMINAL = frozenset({"Succeeded", "Failed", "Skipped", "Cancelled"})
_WORKFLOW_END = {
    EventType.WORKFLOW_SUCCESS: ("Succeeded", "True", "Succeeded"),
    EventType.WORKFLOW_FAILED: ("Failed", "False", "Failed"),
    EventType.WORKFLOW_TIMED_OUT: ("TimedOut", "False", "TimedOut"),
    EventType.WORKFLOW_CANCELLED: ("Cancelled", "False", "Cancelled"),
}


def _parse_time(ts: str) -> datetime:
    return datetime.fromisoformat(ts.replace("Z", "+00:00"))


def format_duration(seconds: float) -> str:
    """1h2m3s style, as kubectl prints ages."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return (f"{h}h" if h else "") + (f"{m}m" if m or h else "") + f"{s}s"


def _progress(status: WorkflowExecutionStatus, total: int | None = None) -> str:
    done = sum(1 for t in status.tasks.values() if t.phase in TASK_TERMINAL)
    if total is None:
        known = status.progress.split("/")[1] if status.progress and "/" in status.progress else "0"
        total = max(int(known), len(status.tasks))
    return f"{done}/{total}"


def _condition(status: str, reason: str, message: str, at: str) -> Condition:
    return Condition(type="Succeeded", status=status, reason=reason, message=message, last_transition_time=at)


def _error(data: dict) -> ErrorInfo:
    err = data.get("error") or {}
    return ErrorInfo(task=err.get("task") or data.get("task"), reason=err.get("reason"), message=err.get("message"))


def fold(status: WorkflowExecutionStatus, event: Event, seq: int) -> WorkflowExecutionStatus:
    """Return the status after ``event`` (stream sequence ``seq``); ``status`` is not modified."""
    if seq and seq <= status.state_seq:
        return status
    s = status.model_copy(deep=True)
    if seq:
        s.state_seq = seq
    try:
        etype = EventType(event.type)
    except ValueError:
        return s
    if s.phase in TERMINAL_PHASES and etype != EventType.WORKFLOW_STARTED:
        # A finished run only takes late task facts (e.g. a pod that reported after a cancel).
        if etype not in (EventType.TASK_SUCCESS, EventType.TASK_FAILED):
            return s
    data = event.data
    if etype == EventType.WORKFLOW_STARTED:
        if s.phase == "Pending":
            s.phase = "Running"
            s.started_at = event.time
            s.workflow = data.get("workflow")
            s.progress = _progress(s, data.get("taskCount", 0))
            s.message = "running"
            s.conditions = [_condition("Unknown", "Running", "the workflow is running", event.time)]
        return s
    if etype in _WORKFLOW_END:
        if s.phase in TERMINAL_PHASES:
            return s
        phase, cond, reason = _WORKFLOW_END[etype]
        s.phase = phase  # type: ignore[assignment]
        s.finished_at = event.time
        s.started_at = s.started_at or event.time
        s.duration = format_duration((_parse_time(event.time) - _parse_time(s.started_at)).total_seconds())
        if etype == EventType.WORKFLOW_SUCCESS:
            s.output = data.get("output")
            s.message = "succeeded"
            done = _progress(s).split("/")[0]
            s.progress = f"{done}/{done}"
        else:
            s.error = _error(data)
            s.message = s.error.message or reason
        s.conditions = [_condition(cond, reason, s.message or reason, event.time)]
        return s
    return _fold_task(s, etype, event)


def _fold_task(s: WorkflowExecutionStatus, etype: EventType, event: Event) -> WorkflowExecutionStatus:
    data = event.data
    name, attempt = event.task, int(event.attempt or 1)
    if not name:
        return s
    current = s.tasks.get(name)
    if etype == EventType.TASK_DISPATCHED:
        if current is None or (attempt > current.attempt and current.phase in TASK_TERMINAL | {"Pending"}):
            previous = (current.attempts or []) if current else []
            s.tasks[name] = TaskStatus(phase="Pending", attempt=attempt, pod_name=data.get("podName"),
                                       attempts=previous or None)
            s.progress = _progress(s)
        return s
    if current is None and etype == EventType.TASK_FAILED:
        # failed before any pod ran (e.g. its input template did not render)
        current = s.tasks[name] = TaskStatus(phase="Pending", attempt=attempt)
    if current is None or attempt != current.attempt or current.phase in TASK_TERMINAL:
        return s  # a stale attempt, or a fact about a task that already ended
    if etype == EventType.TASK_STARTED:
        current.phase = "Running"
        current.started_at = current.started_at or event.time
        current.pod_name = data.get("podName") or current.pod_name
    elif etype == EventType.TASK_SUCCESS:
        current.phase = "Succeeded"
        current.finished_at = event.time
        current.output = data.get("output")
        current.error = None
    elif etype == EventType.TASK_FAILED:
        current.phase = "Failed"
        current.finished_at = event.time
        current.error = ErrorInfo(reason=(data.get("error") or {}).get("reason"),
                                  message=(data.get("error") or {}).get("message"))
        record = AttemptRecord(attempt=attempt, pod_name=current.pod_name, phase="Failed", error=current.error,
                               started_at=current.started_at, finished_at=current.finished_at)
        current.attempts = [*(current.attempts or []), record]
    s.progress = _progress(s)
    return s
