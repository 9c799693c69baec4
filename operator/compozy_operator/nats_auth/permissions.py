"""What one task attempt may do on NATS: its exact publish and subscribe allow lists (pure).

ARCHITECTURE.md §10: an attempt fetches its own TaskExecute command, claims its attempt,
publishes its own state and log events, receives its execution's cancel and writes its own
output. Each grant is what the runner (task_executor.py, bus.py) does for that, and no more:

=================  =====================================================================================
fetch its command  pub ``$JS.API.DIRECT.GET.COMPOZY_COMMANDS.<its command subject>``: a direct get names
                   the subject it reads in the API subject. ``STREAM.MSG.GET`` carries its filter in the
                   body, where no permission sees it: never granted.
claim its attempt  pub ``<its claim subject>`` (a JetStream publish with
                   ``Nats-Expected-Last-Subject-Sequence: 0``) and a direct get of it (who holds it)
state events       pub the exact subject of each event type the runner publishes, built by
                   ``events.make_event`` as the runner builds it
log events         pub ``log_subject`` of the runner's two components (with its task and attempt,
                   where log subjects carry them)
cancel             sub ``cancel_subject`` of its execution
its output         pub the chunks (``$O.COMPOZY_OUTPUTS.C.<key's chunk token>.*`` where events.py scopes
                   chunk subjects per key, else ``...C.*``) and the meta
                   ``$O.COMPOZY_OUTPUTS.M.<base64url(output_key)>``. No ``STREAM.INFO``, no reads, no
                   purge (a purge names its subject in the body): nats-py's ``ObjectStore.put`` needs
                   all three, so the runner writes objects with plain JetStream publishes.
replies            sub ``<its inbox prefix>.>``: the connection's own prefix (nats-py
                   ``connect(inbox_prefix=...)``). ``_INBOX.>`` would show it every reply in the
                   account, other pods' commands among them.
=================  =====================================================================================

Subjects come from events.py's functions (``claim_subject`` from bus.py where events.py lacks
it), never spelled here, so they follow changes there; where a subject function takes
``task``/``attempt``/``publisher``, the attempt's are passed.
"""

from __future__ import annotations

import base64
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .. import events
from ..events import COMMAND_STREAM, EventType, cancel_subject, command_subject, log_subject, make_event, output_key

JS_API = "$JS.API"
OUTPUT_BUCKET = getattr(events, "OUTPUT_BUCKET", "COMPOZY_OUTPUTS")
# What the runner publishes (task_executor.TaskRunner.event and its Work classes).
RUNNER_EVENTS: tuple[EventType, ...] = (
    EventType.TASK_STARTED, EventType.TASK_SUCCESS, EventType.TASK_FAILED,
    EventType.AGENT_STARTED, EventType.AGENT_SUCCESS, EventType.AGENT_FAILED,
    EventType.TOOL_STARTED, EventType.TOOL_SUCCESS, EventType.TOOL_FAILED,
)
RUNNER_LOG_COMPONENTS = ("task-executor", "runtime")


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def may_publish(self, subject: str) -> bool:
        return allows(self.publish, subject)

    def may_subscribe(self, subject: str) -> bool:
        return allows(self.subscribe, subject)


def claim_subject(namespace: str, execution: str, task: str, attempt: int) -> str:
    fn = getattr(events, "claim_subject", None)
    if fn is None:  # before it moved to events.py
        from ..bus import claim_subject as fn  # noqa: PLC0415
    return fn(namespace, execution, task, attempt)


def inbox_prefix(namespace: str, execution: str, task: str, attempt: int) -> str:
    """The inbox prefix an attempt's connection uses: events.py's, where it defines one."""
    fn = getattr(events, "inbox_prefix", None)
    if fn is not None:
        return fn(namespace, execution, task, attempt)
    return f"_INBOX_compozy.{events.token(namespace)}.{events.token(execution)}.{events.token(task)}.{attempt}"


def output_meta_subject(key: str) -> str:
    """Where the object store keeps ``key``'s meta (nats-py and nats.go: padded base64url)."""
    fn = getattr(events, "output_meta_subject", None)
    return fn(key) if fn is not None else f"$O.{OUTPUT_BUCKET}.M.{base64.urlsafe_b64encode(key.encode()).decode()}"


def output_chunks_pattern(key: str) -> str:
    """The chunk subjects ``key``'s object may be written under."""
    fn = getattr(events, "output_chunk_token", None)
    return f"$O.{OUTPUT_BUCKET}.C.{fn(key)}.*" if fn is not None else f"$O.{OUTPUT_BUCKET}.C.*"


def direct_get_subject(stream: str, subject: str) -> str:
    """The API subject of a direct get of the last message on ``subject``."""
    return f"{JS_API}.DIRECT.GET.{stream}.{subject}"


def _with(fn: Callable[..., Any], *args: Any, **optional: Any) -> Any:
    """``fn(*args)`` plus those of ``optional`` that ``fn`` takes as keywords."""
    params = inspect.signature(fn).parameters
    return fn(*args, **{k: v for k, v in optional.items() if k in params})


def _attempt_publisher() -> Any:
    publisher = getattr(events, "Publisher", None)
    return publisher.ATTEMPT if publisher is not None else None


def state_subjects(namespace: str, execution: str, uid: str, task: str, attempt: int) -> list[str]:
    """The subjects of the runner's state events, built as the runner builds them."""
    return [_with(make_event, t, "compozy/task-executor", namespace, execution, uid, task, attempt,
                  publisher=_attempt_publisher()).subject for t in RUNNER_EVENTS]


def log_subjects(namespace: str, execution: str, task: str, attempt: int) -> list[str]:
    return [_with(log_subject, namespace, execution, c, task=task, attempt=attempt) for c in RUNNER_LOG_COMPONENTS]


def literal(subject: str) -> str:
    """``subject``, refused unless literal: a wildcard or blank in a name would widen a grant."""
    tokens = subject.split(".")
    if any(not t or t in ("*", ">") or any(c.isspace() for c in t) for t in tokens):
        raise ValueError(f"not a literal NATS subject: {subject!r}")
    return subject


def attempt_permissions(namespace: str, execution: str, uid: str, task: str, attempt: int) -> Permissions:
    """The exact allow lists of one task attempt (the server refuses everything else)."""
    if not all(isinstance(v, str) and v for v in (namespace, execution, uid, task)) \
            or isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError("an attempt needs a namespace, execution, uid, task and an attempt >= 1")
    command = command_subject(namespace, execution, task, attempt)
    claim = claim_subject(namespace, execution, task, attempt)
    key = output_key(namespace, execution, uid, task, attempt)
    publish = [literal(s) for s in dict.fromkeys([
        *state_subjects(namespace, execution, uid, task, attempt),
        *log_subjects(namespace, execution, task, attempt),
        claim,
        direct_get_subject(COMMAND_STREAM, command),
        direct_get_subject(COMMAND_STREAM, claim),
        output_meta_subject(key),
    ])]
    subscribe = [literal(_with(cancel_subject, namespace, execution, task=task, attempt=attempt))]
    # The two wildcards: chunks (written under a fresh id, which no attempt can read or learn: no
    # STREAM.INFO, no reads; a reader checks the digest in the meta, which only this attempt may
    # write), and replies (a prefix only this attempt's connection uses).
    publish.append(output_chunks_pattern(key))
    subscribe.append(literal(inbox_prefix(namespace, execution, task, attempt)) + ".>")
    return Permissions(tuple(publish), tuple(subscribe))


def matches(pattern: str, subject: str) -> bool:
    """Whether NATS delivers ``subject`` to ``pattern`` (``*`` one token, ``>`` one or more at the end)."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def allows(patterns: Iterable[str], subject: str) -> bool:
    """Whether an allow list grants ``subject``. A subscription to a wildcard is granted only by a
    pattern that covers all it could match (as nats-server checks it: ``compozy.>`` is not
    granted by ``compozy.state.a.>``)."""
    return any(_covers(p, subject) for p in patterns)


def _covers(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s):
            return False
        if s[i] == ">":
            return False
        if token != "*" and token != s[i]:
            return False
    return len(p) == len(s)
