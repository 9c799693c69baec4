"""What travels over NATS, without pydantic: the event envelope (CloudEvents attribute names), the
event types, ids and every NATS subject. A task pod imports this, not :mod:`.events` (the pydantic
model the operator validates received events with): docs/performance.md.

This module owns every NATS subject (docs/security.md, "Subjects and what they prove"). Tokens:
namespace, execution, then meaning; an event a task attempt publishes names its task and attempt,
so a per-attempt NATS identity can be scoped by subject alone:

* commands:     ``compozy.cmd.<ns>.<execution>.task.execute.<task>.<attempt>`` (operator only)
* claims:       ``compozy.cmd.<ns>.<execution>.task.claim.<task>.<attempt>`` (the attempt)
* cancel:       ``compozy.cmd.<ns>.<execution>.workflow.cancel`` (operator publishes, attempts receive)
* stop:         ``compozy.cmd.<ns>.<execution>.task.stop.<uid>.<task>.<attempt>`` (operator publishes, the
  pool runner running the attempt kills its process; kept, so a runner about to start it does not)
* pool queue:   ``compozy.pool.<ns>.<pool>`` (operator publishes "run attempt X"; the pool's runners
  take them from a work-queue stream: docs/pools.md)
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
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

STATE_STREAM = "COMPOZY_STATE"
STATE_CONSUMER = "compozy-state-manager"  # the state manager's durable consumer
LOG_STREAM = "COMPOZY_LOGS"
API_TRIGGER_SUBJECTS = "compozy.api.*.workflow.trigger"  # api.Service's NATS trigger; <ns> is the third token
LOG_MAX_AGE = 7 * 24 * 3600  # default retention of log lines, seconds (COMPOZY_LOG_MAX_AGE_SECONDS)
LOG_MAX_BYTES = 1024 ** 3  # default size bound of the log stream (COMPOZY_LOG_MAX_BYTES); the oldest lines go first
COMMAND_STREAM = "COMPOZY_COMMANDS"
POOL_STREAM = "COMPOZY_POOLS"  # work queue: what each pool's runners are to run
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
STATE_TYPES = frozenset(t.value for t in EventType if t != EventType.LOG_EMITTED)
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


def stop_subject(namespace: str, execution: str, uid: str, task: str, attempt: int) -> str:
    """Where the operator says "stop this attempt" (timed out, ...) to the pool runner running it; the
    command stream keeps it, so a runner that takes the attempt later does not start it (pool_runner)."""
    return f"compozy.cmd.{token(namespace)}.{token(execution)}.task.stop.{token(uid)}.{task_token(task)}.{attempt}"


def pool_subject(namespace: str, pool: str) -> str:
    """The work queue of one RunnerPool (pool names are DNS labels: one token)."""
    return f"compozy.pool.{token(namespace)}.{pool}"


def pool_consumer(namespace: str, pool: str) -> str:
    """The durable consumer a pool's runners pull from. ``_`` joins the names (namespaces and pool
    names are DNS labels, which never hold it), so no namespace's pool can name another's consumer
    (``pool-a-b-c`` was both a-b/c and a/b-c): a runner's NATS identity is scoped by this name."""
    return f"pool_{namespace}_{pool}"


def runner_inbox_prefix(namespace: str, pod: str) -> str:
    """The reply-subject prefix of a pool runner's own connection (its pulls and reads answer there)."""
    return f"_INBOX_runner.{token(namespace)}.{token(pod)}"


# A pooled attempt's process logs in with its runner pod's token as the password and this prefix and
# the attempt's queue message (pools.PoolWork as JSON) as the user: the callout grants it that
# attempt's identity once it has checked the message against the operator's command (nats_auth).
POOL_ATTEMPT_USER = "compozy-pool-attempt:"


def pool_attempt_user(work: dict[str, Any]) -> str:
    """The NATS user a pooled attempt's process connects as (see :data:`POOL_ATTEMPT_USER`)."""
    return POOL_ATTEMPT_USER + json.dumps(work, separators=(",", ":"), sort_keys=True)


def runner_permissions(namespace: str, pool: str, pod: str) -> dict[str, list[str]]:
    """What a pool runner's own connection uses, and nothing else: pull from and acknowledge its
    pool's consumer, receive its namespace's cancels and stops and read the kept stops (the only
    wildcards: the run, uid, task and attempt of a stop), and its own replies. It publishes no event,
    log or command and reads no command: its attempts' processes do that under their own identities."""
    consumer = f"{POOL_STREAM}.{pool_consumer(namespace, pool)}"
    stops = f"compozy.cmd.{token(namespace)}.*.task.stop.*.*.*"
    return {
        "publish": [f"$JS.API.CONSUMER.MSG.NEXT.{consumer}", f"$JS.ACK.{consumer}.>",
                    f"$JS.API.DIRECT.GET.{COMMAND_STREAM}.{stops}"],
        "subscribe": [f"compozy.cmd.{token(namespace)}.*.workflow.cancel", stops,
                      f"{runner_inbox_prefix(namespace, pod)}.>"],
    }


def inbox_prefix(namespace: str, execution: str, task: str, attempt: int) -> str:
    """The reply-subject prefix of a task attempt's connection (its JetStream acks and direct-get
    answers come back under it), so its identity need not subscribe to everyone's ``_INBOX.>``."""
    return f"_INBOX_compozy.{attempt_base(namespace, execution, task, attempt)}"


def output_prefix(namespace: str, execution: str, uid: str) -> str:
    return f"{namespace}/{execution}/{uid}/"


def output_key(namespace: str, execution: str, uid: str, task: str, attempt: int) -> str:
    """Object-store key of a task attempt's large output."""
    return f"{output_prefix(namespace, execution, uid)}{task}/{attempt}"


def rendered_key(namespace: str, execution: str, uid: str, task: str, attempt: int) -> str:
    """Object-store key of a task attempt's large rendered input (``_``: no task id starts with it)."""
    return f"{output_prefix(namespace, execution, uid)}_rendered/{task}/{attempt}"


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
        if etype not in STATE_TYPES or EventType(etype).entity != "workflow":
            return None
        return StateSubject(namespace, execution, None, None, None, etype)
    if kind not in (Publisher.ATTEMPT.value, Publisher.OPERATOR.value) or len(t) != 8:
        return None
    publisher, task, etype = Publisher(kind), untask_token(t[5]), t[7]
    if task is None or not t[6].isascii() or not t[6].isdigit() or (len(t[6]) > 1 and t[6][0] == "0"):
        return None
    allowed = ATTEMPT_TYPES if publisher == Publisher.ATTEMPT else OPERATOR_TASK_TYPES
    if etype not in STATE_TYPES or EventType(etype) not in allowed:
        return None
    return StateSubject(namespace, execution, publisher, task, int(t[6]) or None, etype)




def envelope(etype: EventType, source: str, namespace: str, execution: str, uid: str, task: str | None = None,
             attempt: int | None = None, id_extra: str = "", publisher: Publisher | None = None,
             **data: Any) -> dict[str, Any]:
    """One state event's envelope on its subject: the only definition of what an event holds
    (:func:`.events.make_event` is this, validated). Task-level events go to the attempt's own
    subject when ``publisher`` is :attr:`Publisher.ATTEMPT`, to the operator's (which no attempt can
    publish on) otherwise (default: see :func:`state_subject`)."""
    body: dict[str, Any] = {"namespace": namespace, "execution": execution, "uid": uid, **data}
    if task is not None:
        body["task"] = task
    if attempt is not None:
        body["attempt"] = attempt
    return {"specversion": "1.0", "id": event_id(uid, task, attempt, etype, id_extra), "source": source,
            "type": etype.value, "time": utcnow(),
            "subject": state_subject(namespace, execution, etype, task, attempt, publisher), "data": body}


def encode(event: dict[str, Any]) -> bytes:
    """An :func:`envelope` as the bytes published: compact JSON, as pydantic's ``model_dump_json``
    writes the :class:`.events.Event` of it (a float that is not finite becomes null there too, so
    the body stays JSON the operator can read)."""
    try:
        text = json.dumps(event, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(event), separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
