"""The event envelope (CloudEvents attribute names), the seed's event types and NATS subjects.

Subjects (ARCHITECTURE.md §5), tokens: namespace, execution, then meaning:

* commands:     ``compozy.cmd.<ns>.<execution>.task.execute.<task>.<attempt>``
* state events: ``compozy.state.<ns>.<execution>.<entity>.<EventType>``
* log events:   ``compozy.log.<ns>.<execution>.<component>``

Event ids are deterministic per (execution uid, task, attempt, type), so a re-publish after a
crash is dropped by JetStream's de-duplication (``Nats-Msg-Id``) and by the status reducer.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from .api.models import OutputRef, TokenUsage

STATE_STREAM = "COMPOZY_STATE"
LOG_STREAM = "COMPOZY_LOGS"
COMMAND_STREAM = "COMPOZY_COMMANDS"


class EventType(StrEnum):
    WORKFLOW_STARTED = "WorkflowExecutionStarted"
    WORKFLOW_SUCCESS = "WorkflowExecutionSuccess"
    WORKFLOW_FAILED = "WorkflowExecutionFailed"
    WORKFLOW_TIMED_OUT = "WorkflowExecutionTimedOut"
    WORKFLOW_CANCELLED = "WorkflowExecutionCancelled"
    TASK_DISPATCHED = "TaskDispatched"
    TASK_STARTED = "TaskExecutionStarted"
    TASK_SUCCESS = "TaskExecutionSuccess"
    TASK_FAILED = "TaskExecutionFailed"
    TASK_RETRY_SCHEDULED = "TaskRetryScheduled"
    TASK_POD_WAITING = "TaskPodWaiting"  # the attempt's pod does not start yet, and why (not in the seed)
    AGENT_STARTED = "AgentExecutionStarted"
    AGENT_SUCCESS = "AgentExecutionSuccess"
    AGENT_FAILED = "AgentExecutionFailed"
    TOOL_STARTED = "ToolExecutionStarted"
    TOOL_SUCCESS = "ToolExecutionSuccess"
    TOOL_FAILED = "ToolExecutionFailed"
    LOG_EMITTED = "LogEmitted"

    @property
    def entity(self) -> str:
        for prefix, entity in (("Workflow", "workflow"), ("Task", "task"), ("Agent", "agent"), ("Tool", "tool")):
            if self.value.startswith(prefix):
                return entity
        return "log"


def token(name: str) -> str:
    """A Kubernetes name as one NATS subject token (names may hold dots; they never hold '_')."""
    return name.replace(".", "_")


def state_subject(namespace: str, execution: str, etype: EventType | None) -> str:
    """The subject of one event type, or with ``etype=None`` the wildcard for all of an execution's."""
    if etype is None:
        return f"compozy.state.{token(namespace)}.{token(execution)}.>"
    return f"compozy.state.{token(namespace)}.{token(execution)}.{etype.entity}.{etype.value}"


def log_subject(namespace: str, execution: str, component: str) -> str:
    return f"compozy.log.{token(namespace)}.{token(execution)}.{component}"


def command_subject(namespace: str, execution: str, task: str, attempt: int) -> str:
    return f"compozy.cmd.{token(namespace)}.{token(execution)}.task.execute.{token(task)}.{attempt}"


def cancel_subject(namespace: str, execution: str) -> str:
    return f"compozy.cmd.{token(namespace)}.{token(execution)}.workflow.cancel"


def output_prefix(namespace: str, execution: str, uid: str) -> str:
    return f"{namespace}/{execution}/{uid}/"


def output_key(namespace: str, execution: str, uid: str, task: str, attempt: int) -> str:
    """Object-store key of a task attempt's large output."""
    return f"{output_prefix(namespace, execution, uid)}{task}/{attempt}"


def event_id(uid: str, task: str | None, attempt: int | None, etype: EventType | str, extra: str = "") -> str:
    """Deterministic id: the same fact always gets the same id."""
    raw = f"{uid}/{task or '-'}/{attempt or 0}/{etype}/{extra}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def utcnow() -> str:
    """RFC 3339 with milliseconds (status holds thousands of these; microseconds add nothing)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Event(BaseModel):
    """One state or log event. ``data`` always holds namespace, execution and uid."""

    specversion: str = "1.0"
    id: str
    source: str = Field(description="component that emitted it, e.g. compozy/orchestrator")
    type: str
    time: str = Field(default_factory=utcnow)
    subject: str
    data: dict[str, Any]

    @property
    def namespace(self) -> str:
        return self.data["namespace"]

    @property
    def execution(self) -> str:
        return self.data["execution"]

    @property
    def task(self) -> str | None:
        return self.data.get("task")

    @property
    def attempt(self) -> int | None:
        return self.data.get("attempt")


def make_event(
    etype: EventType,
    source: str,
    namespace: str,
    execution: str,
    uid: str,
    task: str | None = None,
    attempt: int | None = None,
    id_extra: str = "",
    **data: Any,
) -> Event:
    body: dict[str, Any] = {"namespace": namespace, "execution": execution, "uid": uid, **data}
    if task is not None:
        body["task"] = task
    if attempt is not None:
        body["attempt"] = attempt
    return Event(
        id=event_id(uid, task, attempt, etype, id_extra),
        source=source,
        type=etype.value,
        subject=state_subject(namespace, execution, etype),
        data=body,
    )


class InvalidEvent(ValueError):
    """A state event that can never be folded; ``reason`` is a metric label, ``problem`` one line for the log."""

    def __init__(self, reason: str, problem: str) -> None:
        super().__init__(problem)
        self.reason = reason
        self.problem = problem


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")  # as the reducer parses it
_STATE_TYPES = frozenset(t.value for t in EventType if t != EventType.LOG_EMITTED)
_OPTIONAL_STRINGS = ("task", "podName", "notBefore", "workflow", "reason", "message")
_MODELS = (("usage", TokenUsage), ("outputRef", OutputRef), ("specRef", OutputRef), ("inputRef", OutputRef))


def parse_state_event(subject: str, body: bytes) -> Event:
    """The state event ``body`` received on ``subject``, checked so that folding it cannot fail.

    Raises :class:`InvalidEvent` for anything the reducer or the status could not take, and for
    an event whose subject names another execution than its data (a forged event)."""
    try:
        event = Event.model_validate_json(body)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "body"
        raise InvalidEvent("unparseable", f"not a state event: {where}: {err['msg']}") from None
    problem = data_problem(event)
    if problem:
        raise InvalidEvent("invalid", problem)
    problem = subject_problem(subject, event)
    if problem:
        raise InvalidEvent("subject_mismatch", problem)
    return event


def data_problem(event: Event) -> str | None:
    """What makes ``event``'s attributes or data unusable, or None."""
    if event.type not in _STATE_TYPES:
        return f"type {_shown(event.type)} is not a state event type"
    d = event.data
    for key in ("namespace", "execution", "uid"):
        if not isinstance(d.get(key), str) or not d[key]:
            return f"data.{key} must be a non-empty string, not {_shown(d.get(key))}"
    for key in _OPTIONAL_STRINGS:
        if d.get(key) is not None and not isinstance(d[key], str):
            return f"data.{key} must be a string, not {_shown(d[key])}"
    if not _RFC3339.fullmatch(event.time) or _time(event.time) is None:
        return f"time must be an RFC 3339 timestamp, not {_shown(event.time)}"
    for key, minimum in (("attempt", 1), ("taskCount", 0), ("generation", 1)):
        if d.get(key) is not None and not (_is_int(d[key]) and d[key] >= minimum):
            return f"data.{key} must be an integer >= {minimum}, not {_shown(d[key])}"
    if d.get("spec") is not None and not isinstance(d["spec"], dict):
        return f"data.spec must be an object, not {_shown(d['spec'])}"
    if d.get("timeoutSeconds") is not None and not _is_number(d["timeoutSeconds"]):
        return f"data.timeoutSeconds must be a number, not {_shown(d['timeoutSeconds'])}"
    return _error_problem(d.get("error")) or _model_problem(d) or _seconds_problem(d.get("callSeconds"))


def subject_problem(subject: str, event: Event) -> str | None:
    """Why ``subject`` is not where ``event`` (with valid data) belongs:
    ``compozy.state.<ns>.<execution>.<entity>.<Type>``."""
    expected = state_subject(event.namespace, event.execution, EventType(event.type))
    if subject != expected:
        return f"subject does not match the event's namespace, execution and type (expected {expected})"
    return None


def _error_problem(error: Any) -> str | None:
    if error is None:
        return None
    if not isinstance(error, dict):
        return f"data.error must be an object, not {_shown(error)}"
    for key, value in error.items():
        if value is None:
            continue
        if key == "retryAfter" and not _is_number(value):
            return f"data.error.retryAfter must be a number, not {_shown(value)}"
        if key != "retryAfter" and not isinstance(value, str):
            return f"data.error.{key} must be a string, not {_shown(value)}"
    return None


def _model_problem(d: dict[str, Any]) -> str | None:
    for key, model in _MODELS:
        if d.get(key) is None:
            continue
        try:
            model.model_validate(d[key], strict=True)
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in (key, *err["loc"]))
            return f"data.{where}: {err['msg']}"
    return None


def _seconds_problem(seconds: Any) -> str | None:
    if seconds is None or (isinstance(seconds, list) and all(_is_number(s) for s in seconds)):
        return None
    return "data.callSeconds must be a list of numbers"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _shown(value: Any) -> str:
    """A value as a log line may show it (bounded)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
