"""The status reducer: (status, state event) -> status. Pure and idempotent.

Idempotency has two layers: an event whose JetStream sequence is not above ``status.stateSeq``
was folded already and is skipped; and every transition checks the state it moves from (a task
event for an older attempt, or for a task already finished, changes nothing), so the same fact
delivered twice under different sequences is harmless too.
"""

from __future__ import annotations

from datetime import datetime

from .resources.models import (AttemptRecord, Condition, ErrorInfo, OutputRef, Snapshot, TaskStatus, TERMINAL_PHASES,
                         TokenUsage, WorkflowExecutionStatus)
from .events import Event, EventType

TASK_TERMINAL = frozenset({"Succeeded", "Failed", "Skipped", "Cancelled"})
# A task a retry round reset: it runs again (its next attempt) when the walk reaches it, and stays
# Skipped if the round ends without reaching it (docs/retry.md). Not counted as done in progress.
RESET = "Skipped"
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
    done = sum(1 for t in status.tasks.values() if t.phase in TASK_TERMINAL and t.phase != RESET)
    if total is None:
        known = status.progress.split("/")[1] if status.progress and "/" in status.progress else "0"
        total = max(int(known), len(status.tasks))
    return f"{done}/{total}"


def _condition(status: str, reason: str, message: str, at: str) -> Condition:
    return Condition(type="Succeeded", status=status, reason=reason, message=message, last_transition_time=at)


def _error(data: dict) -> ErrorInfo:
    err = data.get("error") or {}
    return ErrorInfo(task=err.get("task") or data.get("task"), reason=err.get("reason"), message=err.get("message"))


def _usage_total(status: WorkflowExecutionStatus) -> TokenUsage | None:
    """Tokens of every attempt: the failed ones' records, plus each task's current attempt."""
    parts = []
    for t in status.tasks.values():
        records = t.attempts or []
        parts += [r.usage for r in records if r.usage]
        if t.usage and not any(r.attempt == t.attempt for r in records):
            parts.append(t.usage)
    return sum(parts[1:], parts[0]) if parts else None


def fold(status: WorkflowExecutionStatus, event: Event, seq: int = 0) -> WorkflowExecutionStatus:
    """Return the status after ``event`` (stream sequence ``seq``); ``status`` is not modified.

    Order does not matter: each task attempt only moves forward (Pending -> Running -> an end),
    a newer attempt replaces an older one, and facts that arrive late only fill in what is
    missing. Folding the same event again changes nothing but ``stateSeq`` (the highest sequence
    folded)."""
    return fold_all(status, [(event, seq)])


def fold_all(status: WorkflowExecutionStatus, events: list[tuple[Event, int]]) -> WorkflowExecutionStatus:
    """:func:`fold` for many events, copying the status once (a large status is costly to copy)."""
    s = status.model_copy(deep=True)
    for event, seq in events:
        _apply(s, event, seq)
    return s


def shows(s: WorkflowExecutionStatus, event: Event) -> bool:
    """Does ``s`` already show ``event`` (folding it again would move nothing forward)?

    Decided by the facts, not by sequence numbers: a redelivered event can be folded after later
    ones, so a status's ``stateSeq`` does not prove that every earlier event is in it."""
    try:
        etype = EventType(event.type)
    except ValueError:
        return True
    if etype == EventType.WORKFLOW_STARTED:
        return s.phase != "Pending"
    if etype == EventType.WORKFLOW_RETRIED:
        return (s.retries or 0) >= _round(event)
    if etype in _WORKFLOW_END:
        return (s.retries or 0) > _round(event) or ((s.retries or 0) == _round(event) and s.phase in TERMINAL_PHASES)
    target = _TASK_TARGET.get(etype)
    if etype == EventType.TASK_FAILED and (event.data.get("error") or {}).get("reason") == CANCELLED_REASON:
        target = "Cancelled"
    if not event.task or target is None:
        return True
    current = s.tasks.get(event.task)
    if current is None:
        return False
    attempt = int(event.attempt or 1)
    return attempt < current.attempt or (attempt == current.attempt and _rank(current.phase) >= _rank(target))


def _apply(s: WorkflowExecutionStatus, event: Event, seq: int) -> WorkflowExecutionStatus:
    """Fold ``event`` into ``s`` in place."""
    s.state_seq = max(s.state_seq, seq)
    try:
        etype = EventType(event.type)
    except ValueError:
        return s
    data = event.data
    if etype in (EventType.WORKFLOW_STARTED, EventType.WORKFLOW_RETRIED, *_WORKFLOW_END) \
            and isinstance(data.get("generation"), int):
        s.observed_generation = max(s.observed_generation or 0, data["generation"])  # the spec acted on
    if etype == EventType.WORKFLOW_STARTED:
        s.workflow = s.workflow or data.get("workflow")
        s.started_at = s.started_at or event.time
        if data.get("retry"):  # created with spec.retry set: rounds count from there
            s.retries = max(s.retries or 0, data["retry"])
        if s.snapshot is None:
            s.snapshot = Snapshot(spec=data.get("spec"), spec_ref=data.get("specRef"), input=data.get("input"),
                                  input_ref=data.get("inputRef"), timeout_seconds=data.get("timeoutSeconds"),
                                  ttl_seconds_after_finished=data.get("ttlSecondsAfterFinished"))
        if s.phase == "Pending":
            s.phase = "Running"
            s.progress = _progress(s, data.get("taskCount", 0))
            s.message = "running"
            s.conditions = [_condition("Unknown", "Running", "the workflow is running", event.time)]
        return s
    if etype == EventType.WORKFLOW_RETRIED:
        _retry(s, event)
        return s
    if etype in _WORKFLOW_END:
        if _round(event) < (s.retries or 0) or (_round(event) == (s.retries or 0) and s.phase in TERMINAL_PHASES):
            return s  # an earlier round's end (redelivered), or this round's again
        s.retries = max(s.retries or 0, _round(event)) or None  # the round's Retried may come later
        phase, cond, reason = _WORKFLOW_END[etype]
        s.phase = phase  # type: ignore[assignment]
        s.finished_at = event.time
        s.started_at = s.started_at or event.time
        s.duration = format_duration((_parse_time(event.time) - _parse_time(s.started_at)).total_seconds())
        if etype == EventType.WORKFLOW_SUCCESS:
            s.output = data.get("output")
            if data.get("outputRef"):
                s.output_ref = OutputRef.model_validate(data["outputRef"])
            done = _progress(s).split("/")[0]
            s.progress = f"{done}/{done}"
            s.message = "succeeded"
            s.conditions = [_condition(cond, reason, s.message, event.time)]
            _show_handled(s, event.time)
            return s
        else:
            s.error = _error(data)
            s.message = s.error.message or reason
            for task in s.tasks.values():  # nothing stays in flight once the run has ended
                if _rank(task.phase) < 2:
                    task.phase = "Cancelled"
                    task.finished_at = task.finished_at or event.time
        s.conditions = [_condition(cond, reason, s.message or reason, event.time)]
        return s
    return _fold_task(s, etype, event)


_TASK_TARGET = {
    EventType.TASK_RETRY_SCHEDULED: "Waiting",
    EventType.TASK_DISPATCHED: "Pending",
    EventType.TASK_STARTED: "Running",
    EventType.TASK_SUCCESS: "Succeeded",
    EventType.TASK_FAILED: "Failed",
}
_RANK = {"Waiting": -1, "Pending": 0, "Running": 1}  # every other phase is an end (rank 2)
CANCELLED_REASON = "Cancelled"  # a TaskExecutionFailed with this reason ends the task Cancelled


def _rank(phase: str) -> int:
    return _RANK.get(phase, 2)


def _fold_task(s: WorkflowExecutionStatus, etype: EventType, event: Event) -> WorkflowExecutionStatus:
    name, attempt, data = event.task, int(event.attempt or 1), event.data
    if etype == EventType.TASK_POD_WAITING:
        _fold_waiting(s, event)
        return s
    target = _TASK_TARGET.get(etype)
    if etype == EventType.TASK_FAILED and (data.get("error") or {}).get("reason") == CANCELLED_REASON:
        target = "Cancelled"
    if not name or target is None:
        return s  # Tool*/Agent* progress is in the event stream, not in the status
    current = s.tasks.get(name)
    if current is not None and attempt < current.attempt:
        _late_record(current, target, attempt, event)  # the replaced attempt's end arrived after its retry
        return s
    if current is None or attempt > current.attempt:
        history = (current.attempts or None) if current else None
        prior = current.prior_attempts if current else None
        current = s.tasks[name] = TaskStatus(phase="Waiting", attempt=attempt, attempts=history, prior_attempts=prior)
    current.pod_name = current.pod_name or data.get("podName")
    if etype == EventType.TASK_RETRY_SCHEDULED:
        current.not_before = current.not_before or data.get("notBefore")
    if etype == EventType.TASK_DISPATCHED and _rank(current.phase) < 2:  # an ended attempt has no deadline
        current.dispatched_at = current.dispatched_at or event.time
    if etype == EventType.TASK_STARTED:
        current.started_at = current.started_at or event.time
    for record in current.attempts or []:  # the failed attempt's record gets the late facts too
        if record.attempt == attempt:
            record.pod_name = record.pod_name or current.pod_name
            record.started_at = record.started_at or current.started_at
    s.progress = _progress(s)
    swept = current.phase == "Cancelled" and current.error is None  # by the run's end, not by a report
    if _rank(target) <= _rank(current.phase) and not (swept and target == "Succeeded"):
        return s  # already there or past it: late facts only filled in the blanks above
    current.phase = target  # type: ignore[assignment]
    if current.message and _rank(target) >= 1:  # the pod started (or the attempt ended): no longer waiting
        current.message = None
        if s.message and s.message.startswith(_waiting_prefix(name)):
            s.message = "running"
    if _rank(target) == 2:
        current.dispatched_at = None  # only needed for the timeout of an attempt in flight
    if data.get("usage"):
        current.usage = TokenUsage.model_validate(data["usage"])
    if etype == EventType.TASK_SUCCESS:
        current.finished_at = event.time
        current.output = data.get("output")
        if data.get("outputRef"):
            current.output_ref = OutputRef.model_validate(data["outputRef"])
    elif etype == EventType.TASK_FAILED:  # Failed or Cancelled
        current.finished_at = event.time
        err = data.get("error") or {}
        current.error = ErrorInfo(reason=err.get("reason"), message=err.get("message"), retry_after=err.get("retryAfter"))
        if not any(r.attempt == attempt for r in current.attempts or []):
            record = AttemptRecord(attempt=attempt, pod_name=current.pod_name, phase=target, error=current.error,
                                   started_at=current.started_at, finished_at=current.finished_at,
                                   usage=current.usage)
            current.attempts = [*(current.attempts or []), record]
    if s.phase in TERMINAL_PHASES - {"Succeeded"} and _rank(current.phase) < 2:  # late news of an ended run
        current.phase = "Cancelled"
        current.finished_at = current.finished_at or s.finished_at
        current.dispatched_at = None
    s.progress = _progress(s)
    if current.usage:
        s.usage = _usage_total(s)
    if s.phase == "Succeeded" and current.phase == "Failed":  # a failure's event folded after the end
        _show_handled(s, event.time)
    return s


def _round(event: Event) -> int:
    """The retry round a workflow-level event belongs to (0: the run's first)."""
    value = event.data.get("round")
    return value if isinstance(value, int) else 0


def _retry(s: WorkflowExecutionStatus, event: Event) -> None:
    """Retry round ``round`` begins: the run is Running again, with a fresh deadline; the tasks the
    event names (decided by executor.retry_plan) are reset, their attempts kept in the history.

    Any order: a task whose later attempt was folded first (this round's news, ahead of its
    Retried after a redelivery) is not reset again, and if the ended round had swept that attempt
    to Cancelled, it is in flight again."""
    r = _round(event)
    if r <= (s.retries or 0):
        return  # this round (or a later one) began already
    # a run that never started (refused at its start: no snapshot) is started again
    s.retries, s.retried_at, s.phase = r, event.time, "Running" if s.snapshot is not None else "Pending"
    s.finished_at = s.duration = s.output = s.output_ref = s.error = None
    reset = []
    for key, attempt in (event.data.get("tasks") or {}).items():
        t = s.tasks.get(key)
        if t is not None and t.attempt == attempt:
            _reset(t, r, event.time)
            reset.append(key)
        elif t is not None and t.attempt > attempt and t.phase == "Cancelled" and t.error is None:
            t.phase, t.finished_at = "Running", None  # swept by the ended round it does not belong to
    s.progress = _progress(s)
    where = f"; {len(reset)} task(s) run again from {reset[0]}" if reset else ""
    s.message = f"retry {r}: running again{where}" if s.phase == "Running" else f"retry {r}: starting again"
    s.conditions = [_condition("Unknown", "Retried", f"retry {r} of the run (spec.retry){where}", event.time)]


def _reset(t: TaskStatus, r: int, at: str) -> None:
    """A task of an earlier round: its attempt goes to the history, and it runs again with the next."""
    if not any(rec.attempt == t.attempt for rec in t.attempts or []):
        phase = t.phase if _rank(t.phase) == 2 else "Cancelled"
        t.attempts = [*(t.attempts or []), AttemptRecord(
            attempt=t.attempt, pod_name=t.pod_name, phase=phase, error=t.error, started_at=t.started_at,
            finished_at=t.finished_at or (at if phase == "Cancelled" else None), usage=t.usage)]
    t.phase, t.prior_attempts = RESET, t.attempt  # type: ignore[assignment]
    t.pod_name = t.not_before = t.dispatched_at = t.started_at = t.finished_at = None
    t.output = t.output_ref = t.error = t.usage = None
    t.message = f"retry {r}: runs again (attempt {t.attempt + 1}) when the run reaches it"


HANDLED = "FailuresHandled"  # condition of a Succeeded run in which some task failed (e.g. onError)
_HANDLED_SHOWN = 3  # tasks named in the run's message


def _show_handled(s: WorkflowExecutionStatus, at: str) -> None:
    """A Succeeded run in which tasks failed (handled by ``onError``, a ``bestEffort`` parallel task,
    a ``race``) says so in its message and a ``FailuresHandled`` condition: the success stays, the
    failure stays visible at the top."""
    failed = sorted((k, t) for k, t in s.tasks.items() if t.phase == "Failed")
    if not failed:
        return
    named = ", ".join(f"{k} ({(t.error and t.error.reason) or 'Failed'})" for k, t in failed[:_HANDLED_SHOWN])
    more = f" and {len(failed) - _HANDLED_SHOWN} more" if len(failed) > _HANDLED_SHOWN else ""
    s.message = f"succeeded; handled failure of {named}{more}"
    first_key, first = failed[0]
    detail = f"task {first_key} failed: {(first.error and first.error.message) or 'no message'}"
    condition = Condition(type=HANDLED, status="True", reason=(first.error and first.error.reason) or "TaskFailed",
                          message=f"{len(failed)} task(s) failed and the run went on: {detail}"[:1000],
                          last_transition_time=at)
    s.conditions = [c for c in s.conditions if c.type != HANDLED] + [condition]


WAITING_MESSAGE = 1000  # characters of a waiting pod's reason and message kept in the status


def _waiting_prefix(task: str) -> str:
    return f"task {task} waits: "


def _fold_waiting(s: WorkflowExecutionStatus, event: Event) -> None:
    """A pending attempt's pod does not start: the task's message, and the run's, say why."""
    current = s.tasks.get(event.task or "")
    if current is None or current.attempt != int(event.attempt or 1) or current.phase != "Pending":
        return  # a later attempt, or this one started or ended meanwhile
    current.message = f"{event.data.get('reason')}: {event.data.get('message')}"[:WAITING_MESSAGE]
    if s.phase == "Running":
        s.message = _waiting_prefix(event.task or "") + current.message


def _late_record(current: TaskStatus, target: str, attempt: int, event: Event) -> None:
    """Keep the record of an earlier attempt whose end arrives after its successor started
    (e.g. redelivered after a crash), so the same events give the same history in any order."""
    if target not in ("Failed", "Cancelled") or any(r.attempt == attempt for r in current.attempts or []):
        return
    err = event.data.get("error") or {}
    record = AttemptRecord(attempt=attempt, pod_name=event.data.get("podName"), phase=target,
                           error=ErrorInfo(reason=err.get("reason"), message=err.get("message"),
                                           retry_after=err.get("retryAfter")),
                           finished_at=event.time)
    current.attempts = sorted([*(current.attempts or []), record], key=lambda r: r.attempt)
