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
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

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
