"""The state event as the operator reads it: the pydantic model of the envelope (its fields are
:func:`.wire.envelope`'s) and the checks a received event passes before it is folded.

Subjects, event types and ids live in :mod:`.wire` (a task pod needs them without pydantic); they
are re-exported here for the operator's modules.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from .resources.models import OutputRef, TokenUsage
from .wire import (API_TRIGGER_SUBJECTS, COMMAND_NONCE_ENV, COMMAND_STREAM, LOG_MAX_AGE, LOG_MAX_BYTES, LOG_STREAM,
                   OUTPUT_BUCKET, POOL_STREAM, STATE_CONSUMER, STATE_STREAM, STATE_TYPES, EventType, LogSubject, Publisher,
                   StateSubject, attempt_permissions, attempt_state_subjects, cancel_subject, claim_subject,
                   command_subject, event_id, execution_logs, inbox_prefix, log_subject, output_chunk_token,
                   output_key, output_meta_subject, output_prefix, parse_log_subject, parse_state_subject,
                   pool_attempt_user, pool_consumer, pool_subject, rendered_key, round_id, runner_inbox_prefix,
                   runner_permissions, state_subject, stop_subject, task_token, token, untask_token, untoken, utcnow,
                   envelope)

__all__ = [  # the wire names, for the operator's modules, and this module's own
    "API_TRIGGER_SUBJECTS", "COMMAND_NONCE_ENV", "COMMAND_STREAM", "LOG_MAX_AGE", "LOG_MAX_BYTES", "LOG_STREAM",
    "OUTPUT_BUCKET", "POOL_STREAM", "STATE_CONSUMER", "STATE_STREAM", "STATE_TYPES", "EventType", "LogSubject", "Publisher",
    "StateSubject", "attempt_permissions", "attempt_state_subjects", "cancel_subject", "claim_subject",
    "command_subject", "event_id", "execution_logs", "inbox_prefix", "log_subject", "output_chunk_token",
    "output_key", "output_meta_subject", "output_prefix", "parse_log_subject", "parse_state_subject",
    "pool_attempt_user", "pool_consumer", "pool_subject", "rendered_key", "round_id", "runner_inbox_prefix",
    "runner_permissions", "state_subject", "stop_subject", "task_token", "token",
    "untask_token", "untoken", "utcnow", "Event", "InvalidEvent", "data_problem",
    "make_event", "parse_state_event", "subject_problem",
]


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


def make_event(etype: EventType, source: str, namespace: str, execution: str, uid: str, task: str | None = None,
               attempt: int | None = None, id_extra: str = "", publisher: Publisher | None = None,
               **data: Any) -> Event:
    """:func:`.wire.envelope` as the model (the operator's events; a task pod publishes the envelope)."""
    return Event(**envelope(etype, source, namespace, execution, uid, task, attempt, id_extra, publisher, **data))


class InvalidEvent(ValueError):
    """A state event that can never be folded; ``reason`` is a metric label, ``problem`` one line for the log."""

    def __init__(self, reason: str, problem: str) -> None:
        super().__init__(problem)
        self.reason = reason
        self.problem = problem


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")  # as the reducer parses it
_OPTIONAL_STRINGS = ("task", "podName", "notBefore", "workflow", "reason", "message")
_MODELS = (("usage", TokenUsage), ("outputRef", OutputRef), ("specRef", OutputRef), ("inputRef", OutputRef),
           ("renderedRef", OutputRef))


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
    if event.type not in STATE_TYPES:
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
