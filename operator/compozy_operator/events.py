"""The event envelope (CloudEvents attribute names), the seed's event types and NATS subjects.

This module owns every NATS subject (docs/security.md, "Subjects and what they prove"). Tokens:
namespace, execution, then meaning; an event a task attempt publishes names its task and attempt,
so a per-attempt NATS identity can be scoped by subject alone:

* commands:     ``compozy.cmd.<ns>.<execution>.task.execute.<task>.<attempt>`` (operator only)
* claims:       ``compozy.cmd.<ns>.<execution>.task.claim.<task>.<attempt>`` (the attempt)
* cancel:       ``compozy.cmd.<ns>.<execution>.workflow.cancel`` (operator publishes, attempts receive)
* state events: ``compozy.state.<ns>.<execution>.workflow.<Type>`` (operator only),
  ``compozy.state.<ns>.<execution>.operator.<task>.<attempt>.<Type>`` (operator only: its task events),
  ``compozy.state.<ns>.<execution>.task.<task>.<attempt>.<Type>`` (the attempt's own)
* log events:   ``compozy.log.<ns>.<execution>.<uid>.<component>`` (operator),
  ``compozy.log.<ns>.<execution>.<uid>.task.<task>.<attempt>.<component>`` (the attempt's); the
  execution's uid is a token, so a re-created run of the same name never reads the old run's lines
  and deleting a run purges its own lines only (:func:`execution_logs`)

Event ids are deterministic per (execution uid, task, attempt, type), so a re-publish after a
crash is dropped by JetStream's de-duplication (``Nats-Msg-Id``) and by the status reducer.
Workflow-level events of a retry round add the round (:func:`round_id`): each round starts and
ends once.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from .resources.models import OutputRef, TokenUsage

STATE_STREAM = "COMPOZY_STATE"
STATE_CONSUMER = "compozy-state-manager"  # the state manager's durable consumer
LOG_STREAM = "COMPOZY_LOGS"
API_TRIGGER_SUBJECTS = "compozy.api.*.workflow.trigger"  # api.Service's NATS trigger; <ns> is the third token
LOG_MAX_AGE = 7 * 24 * 3600  # default retention of log lines, seconds (COMPOZY_LOG_MAX_AGE_SECONDS)
LOG_MAX_BYTES = 1024 ** 3  # default size bound of the log stream (COMPOZY_LOG_MAX_BYTES); the oldest lines go first
COMMAND_STREAM = "COMPOZY_COMMANDS"
COMMAND_NONCE_ENV = "COMPOZY_COMMAND_NONCE"  # a task pod's nonce: its TaskExecute command must carry it


class EventType(StrEnum):
    WORKFLOW_STARTED = "WorkflowExecutionStarted"
    WORKFLOW_SUCCESS = "WorkflowExecutionSuccess"
    WORKFLOW_FAILED = "WorkflowExecutionFailed"
    WORKFLOW_TIMED_OUT = "WorkflowExecutionTimedOut"
    WORKFLOW_CANCELLED = "WorkflowExecutionCancelled"
    WORKFLOW_RETRIED = "WorkflowExecutionRetried"  # an ended run continues (spec.retry raised; not in the seed)
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


class Publisher(StrEnum):
    """Who publishes a task-level state event; the value is the subject token after the execution."""

    OPERATOR = "operator"
    ATTEMPT = "task"


# What a task attempt may say about itself; everything else (workflow events, TaskDispatched,
# TaskRetryScheduled, TaskPodWaiting) only the operator may publish.
ATTEMPT_TYPES = frozenset({
    EventType.TASK_STARTED, EventType.TASK_SUCCESS, EventType.TASK_FAILED,
    EventType.AGENT_STARTED, EventType.AGENT_SUCCESS, EventType.AGENT_FAILED,
    EventType.TOOL_STARTED, EventType.TOOL_SUCCESS, EventType.TOOL_FAILED,
})
OPERATOR_TASK_TYPES = frozenset({
    EventType.TASK_DISPATCHED, EventType.TASK_SUCCESS, EventType.TASK_FAILED, EventType.TASK_RETRY_SCHEDULED,
    EventType.TASK_POD_WAITING,
})
_ONLY_ATTEMPT = ATTEMPT_TYPES - OPERATOR_TASK_TYPES
OUTPUT_BUCKET = "COMPOZY_OUTPUTS"
_TASK_TOKEN = re.compile(r"[a-zA-Z0-9-]|_[0-9a-f]{2}")


def token(name: str) -> str:
    """A Kubernetes name as one NATS subject token (names may hold dots; they never hold '_')."""
    return name.replace(".", "_")


def untoken(text: str) -> str:
    return text.replace("_", ".")


def task_token(task: str) -> str:
    """A task key as one NATS subject token, reversibly: every character but ``[A-Za-z0-9-]`` becomes
    ``_xx`` (its UTF-8 bytes in hex), so ``each[3]`` is ``each_5b3_5d`` and no key can look like
    another (task ids are DNS labels; a collection child's key is ``<id>[<index>]``)."""
    return "".join(c if c.isascii() and (c.isalnum() or c == "-") else
                   "".join(f"_{b:02x}" for b in c.encode()) for c in task)


def untask_token(text: str) -> str | None:
    """The task key of a :func:`task_token`, or None when ``text`` is not one."""
    parts = _TASK_TOKEN.findall(text)
    if not text or "".join(parts) != text:
        return None
    raw = b"".join(bytes.fromhex(p[1:]) if p.startswith("_") else p.encode() for p in parts)
    try:
        key = raw.decode()
    except UnicodeDecodeError:
        return None
    return key if task_token(key) == text else None


def attempt_base(namespace: str, execution: str, task: str, attempt: int | None) -> str:
    """``<ns>.<execution>.<task>.<attempt>``: the tokens that name one task attempt."""
    return f"{token(namespace)}.{token(execution)}.{task_token(task)}.{attempt or 0}"


def state_subject(namespace: str, execution: str, etype: EventType | None, task: str | None = None,
                  attempt: int | None = None, publisher: Publisher | None = None) -> str:
    """The subject of one event, or with ``etype=None`` the wildcard for all of an execution's.

    Workflow events: ``...workflow.<Type>``. Task, agent and tool events name the task and attempt,
    and who says it: ``...task.<task>.<attempt>.<Type>`` the attempt itself, ``...operator.<task>.
    <attempt>.<Type>`` the operator (default: the attempt for the types only it publishes)."""
    base = f"compozy.state.{token(namespace)}.{token(execution)}"
    if etype is None:
        return f"{base}.>"
    if etype.entity == "workflow":
        return f"{base}.workflow.{etype.value}"
    if task is None:
        raise ValueError(f"a {etype.value} event names its task")
    publisher = publisher or (Publisher.ATTEMPT if etype in _ONLY_ATTEMPT else Publisher.OPERATOR)
    allowed = ATTEMPT_TYPES if publisher == Publisher.ATTEMPT else OPERATOR_TASK_TYPES
    if etype not in allowed:
        raise ValueError(f"the {publisher.value} does not publish {etype.value}")
    return f"{base}.{publisher.value}.{task_token(task)}.{attempt or 0}.{etype.value}"


def attempt_state_subjects(namespace: str, execution: str, task: str, attempt: int) -> str:
    """The wildcard of every state subject one attempt may publish on (its own, nothing else)."""
    return f"compozy.state.{token(namespace)}.{token(execution)}.task.{task_token(task)}.{attempt}.*"


def log_subject(namespace: str, execution: str, uid: str, component: str, task: str | None = None,
                attempt: int | None = None) -> str:
    """An operator component's log subject for the run ``uid``, or with ``task`` a task attempt's."""
    base = f"compozy.log.{token(namespace)}.{token(execution)}.{token(uid)}"
    if task is None:
        return f"{base}.{component}"
    return f"{base}.task.{task_token(task)}.{attempt or 0}.{component}"


def execution_logs(namespace: str, execution: str, uid: str, task: str | None = None,
                   attempt: int | None = None) -> str:
    """The wildcard of a run's log lines: all of them, or one task's (every attempt, or ``attempt``'s).
    What api.Service reads and what deleting the run purges."""
    base = f"compozy.log.{token(namespace)}.{token(execution)}.{token(uid)}"
    if task is None:
        return f"{base}.>"
    return f"{base}.task.{task_token(task)}.{attempt if attempt else '*'}.*"


@dataclass(frozen=True)
class LogSubject:
    """What a log subject says: whose line (a run's operator component, or a task attempt's)."""

    namespace: str
    execution: str
    uid: str
    component: str
    task: str | None = None
    attempt: int | None = None


def parse_log_subject(subject: str) -> LogSubject | None:
    """The identity a log subject names (see :func:`log_subject`), or None when it is none. A reader
    believes it over the body, as the state manager believes state subjects."""
    t = subject.split(".")
    if len(t) < 6 or t[:2] != ["compozy", "log"] or not all(t):
        return None
    namespace, execution, uid = untoken(t[2]), untoken(t[3]), untoken(t[4])
    if len(t) == 6:
        return LogSubject(namespace, execution, uid, t[5])
    if len(t) != 9 or t[5] != "task" or not t[7].isascii() or not t[7].isdigit():
        return None
    task = untask_token(t[6])
    return None if task is None else LogSubject(namespace, execution, uid, t[8], task, int(t[7]))


def command_subject(namespace: str, execution: str, task: str, attempt: int) -> str:
    return f"compozy.cmd.{token(namespace)}.{token(execution)}.task.execute.{task_token(task)}.{attempt}"


def claim_subject(namespace: str, execution: str, uid: str, task: str, attempt: int) -> str:
    """Where a task attempt's claim is kept (see :meth:`.bus.Bus.claim`). The run's uid is in it: a
    run deleted and created again under the same name claims its attempts afresh."""
    return f"compozy.cmd.{token(namespace)}.{token(execution)}.task.claim.{token(uid)}.{task_token(task)}.{attempt}"


def cancel_subject(namespace: str, execution: str) -> str:
    return f"compozy.cmd.{token(namespace)}.{token(execution)}.workflow.cancel"


def inbox_prefix(namespace: str, execution: str, task: str, attempt: int) -> str:
    """The reply-subject prefix of a task attempt's connection (its JetStream acks and direct-get
    answers come back under it), so its identity need not subscribe to everyone's ``_INBOX.>``."""
    return f"_INBOX_compozy.{attempt_base(namespace, execution, task, attempt)}"


def output_prefix(namespace: str, execution: str, uid: str) -> str:
    return f"{namespace}/{execution}/{uid}/"


def output_key(namespace: str, execution: str, uid: str, task: str, attempt: int) -> str:
    """Object-store key of a task attempt's large output."""
    return f"{output_prefix(namespace, execution, uid)}{task}/{attempt}"


def output_meta_subject(key: str) -> str:
    """The object store's metadata subject of ``key`` (as every NATS client names it)."""
    return f"$O.{OUTPUT_BUCKET}.M.{base64.urlsafe_b64encode(key.encode()).decode()}"


def output_chunk_token(key: str) -> str:
    """The first token of the chunk subjects of ``key``'s object (see :meth:`.bus.Bus.put_output`):
    ``$O.COMPOZY_OUTPUTS.C.<this>.<nonce>``, so a permission can name one key's chunks."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def attempt_permissions(namespace: str, execution: str, uid: str, task: str, attempt: int) -> dict[str, list[str]]:
    """Every NATS subject a task attempt uses, and nothing else: what its identity must be allowed.

    ``publish``: its state and log events, its claim, its output's chunks and metadata (JetStream
    publishes), and two Direct Gets (its command, its claim) whose API subject names the subject
    read. ``subscribe``: its execution's cancel and its own reply subjects."""
    command = command_subject(namespace, execution, task, attempt)
    claim = claim_subject(namespace, execution, uid, task, attempt)
    key = output_key(namespace, execution, uid, task, attempt)
    return {
        "publish": [
            attempt_state_subjects(namespace, execution, task, attempt),
            execution_logs(namespace, execution, uid, task, attempt),
            claim,
            f"$JS.API.DIRECT.GET.COMPOZY_COMMANDS.{command}",
            f"$JS.API.DIRECT.GET.COMPOZY_COMMANDS.{claim}",
            f"$O.{OUTPUT_BUCKET}.C.{output_chunk_token(key)}.*",
            output_meta_subject(key),
        ],
        "subscribe": [
            cancel_subject(namespace, execution),
            f"{inbox_prefix(namespace, execution, task, attempt)}.>",
        ],
    }


def event_id(uid: str, task: str | None, attempt: int | None, etype: EventType | str, extra: str = "") -> str:
    """Deterministic id: the same fact always gets the same id."""
    raw = f"{uid}/{task or '-'}/{attempt or 0}/{etype}/{extra}"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def round_id(round: int | None) -> str:
    """The ``id_extra`` of a workflow-level event of retry round ``round``: each round starts and
    ends once, so its events need ids of their own (round 0 keeps the ids it always had)."""
    return f"retry-{round}" if round else ""


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
    publisher: Publisher | None = None,
    **data: Any,
) -> Event:
    """An event on its subject; task-level events go to the attempt's own subject when ``publisher``
    is :attr:`Publisher.ATTEMPT`, to the operator's (which no attempt can publish on) otherwise
    (default: see :func:`state_subject`)."""
    body: dict[str, Any] = {"namespace": namespace, "execution": execution, "uid": uid, **data}
    if task is not None:
        body["task"] = task
    if attempt is not None:
        body["attempt"] = attempt
    return Event(
        id=event_id(uid, task, attempt, etype, id_extra),
        source=source,
        type=etype.value,
        subject=state_subject(namespace, execution, etype, task, attempt, publisher),
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
    for key, minimum in (("attempt", 1), ("taskCount", 0), ("generation", 1), ("round", 0), ("retry", 0),
                         ("ttlSecondsAfterFinished", 0)):
        if d.get(key) is not None and not (_is_int(d[key]) and d[key] >= minimum):
            return f"data.{key} must be an integer >= {minimum}, not {_shown(d[key])}"
    if d.get("tasks") is not None and not (isinstance(d["tasks"], dict) and all(
            _is_int(n) and n >= 1 for n in d["tasks"].values())):
        return "data.tasks must map task keys to attempts (integers >= 1)"
    if d.get("spec") is not None and not isinstance(d["spec"], dict):
        return f"data.spec must be an object, not {_shown(d['spec'])}"
    if d.get("timeoutSeconds") is not None and not _is_number(d["timeoutSeconds"]):
        return f"data.timeoutSeconds must be a number, not {_shown(d['timeoutSeconds'])}"
    return _error_problem(d.get("error")) or _model_problem(d) or _seconds_problem(d.get("callSeconds"))


@dataclass(frozen=True)
class StateSubject:
    """What a state subject says: whose event of which type, about which execution, task and attempt."""

    namespace: str
    execution: str
    publisher: Publisher | None  # None: a workflow event (the operator's)
    task: str | None
    attempt: int | None
    type: str


def parse_state_subject(subject: str) -> StateSubject | None:
    """The identity a state subject names (see :func:`state_subject`), or None when it is none."""
    t = subject.split(".")
    if len(t) < 6 or t[:2] != ["compozy", "state"] or not all(t):
        return None
    namespace, execution, kind = untoken(t[2]), untoken(t[3]), t[4]
    if kind == "workflow" and len(t) == 6:
        etype = t[5]
        if etype not in _STATE_TYPES or EventType(etype).entity != "workflow":
            return None
        return StateSubject(namespace, execution, None, None, None, etype)
    if kind not in (Publisher.ATTEMPT.value, Publisher.OPERATOR.value) or len(t) != 8:
        return None
    publisher, task, etype = Publisher(kind), untask_token(t[5]), t[7]
    if task is None or not t[6].isascii() or not t[6].isdigit() or (len(t[6]) > 1 and t[6][0] == "0"):
        return None
    allowed = ATTEMPT_TYPES if publisher == Publisher.ATTEMPT else OPERATOR_TASK_TYPES
    if etype not in _STATE_TYPES or EventType(etype) not in allowed:
        return None
    return StateSubject(namespace, execution, publisher, task, int(t[6]) or None, etype)


def subject_problem(subject: str, event: Event) -> str | None:
    """Why ``subject`` is not where ``event`` (with valid data) belongs, or None.

    The subject is the truth (a per-attempt NATS identity can publish only on its own attempt's
    subjects): its namespace, execution, task, attempt and type must be the body's, and the type
    one its publisher may send (an attempt cannot send workflow events, TaskDispatched, ...)."""
    said = parse_state_subject(subject)
    if said is None:
        return f"subject {_shown(subject)} is not a state subject its publisher may send a {event.type} on"
    d = event.data
    for field, named, written in (("type", said.type, event.type), ("data.namespace", said.namespace, d["namespace"]),
                                  ("data.execution", said.execution, d["execution"]),
                                  ("data.task", said.task, d.get("task")),
                                  ("data.attempt", said.attempt, d.get("attempt")),
                                  ("subject", subject, event.subject)):
        if named != written:
            return f"{field} is {_shown(written)} but the subject {_shown(subject)} says {_shown(named)}"
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
