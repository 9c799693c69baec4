"""An execution's state events (Server-Sent Events) and log lines (text), read from JetStream.

Both are an ordered push consumer on the run's subjects, from the first stored message (replay)
on to live ones, so there is no gap between the two. State events are kept only when their
``data.uid`` is the run's: a re-created run with the same name never shows the old one's. Log
subjects name the run's uid (events.execution_logs), so only its own lines are read. A line is
believed as its subject names it (events.parse_log_subject: task, attempt, component), as the state
manager believes state subjects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from ..bus import Bus
from ..events import LOG_STREAM, STATE_STREAM, Event, EventType, InvalidEvent, execution_logs, parse_log_subject, \
    parse_state_event, task_token, token
from ..resources.models import TERMINAL_PHASES
from .models import ApiError

log = logging.getLogger(__name__)
TERMINAL_EVENTS = frozenset({EventType.WORKFLOW_SUCCESS, EventType.WORKFLOW_FAILED, EventType.WORKFLOW_TIMED_OUT,
                             EventType.WORKFLOW_CANCELLED})
KEEPALIVE_SECONDS = 15.0  # an SSE comment after this much silence (proxies close idle connections)
CHECK_SECONDS = 5.0  # how often a quiet stream asks whether its run has ended (or been deleted)
INACTIVE_SECONDS = 30.0  # a consumer left behind (its reader gone with its process) is removed after this
SETTLE_SECONDS = 0.5  # after the terminal event: how often until the status says so too
MAX_MESSAGE = 16_000  # characters of one log message shown
MAX_CALLS = 1000  # model calls of one attempt shown
MAX_TEXT = 200  # characters of a model call's names and reasons shown

# (uid, phase) of the run now, or None once it is deleted
RunState = Callable[[], Awaitable[tuple[str, str] | None]]


@dataclass(frozen=True)
class LogLine:
    time: str
    component: str
    task: str | None
    attempt: int | None
    level: str
    message: str

    def text(self) -> str:
        """``<time> <component> <task>[<attempt>] <level> <message>``: one line (newlines in the
        message escaped as ``\\n``); ``-`` for a line about no task."""
        where = f"{self.task}[{self.attempt or 0}]" if self.task else "-"
        message = self.message[:MAX_MESSAGE].replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")
        return f"{self.time} {self.component} {where} {self.level} {message}\n"


def log_line(subject: str, body: bytes) -> LogLine | None:
    """A LogEmitted message as a line, or None when it is none. An attempt's subject says who wrote
    it; an operator component's names the task (if any) in its data."""
    try:
        event = json.loads(body)
    except ValueError:
        return None
    data = event.get("data") if isinstance(event, dict) else None
    origin = parse_log_subject(subject)
    if not isinstance(data, dict) or origin is None:
        return None
    task, attempt = origin.task, origin.attempt
    if task is None:
        named, number = data.get("task"), data.get("attempt")
        task = named if isinstance(named, str) and named else None
        attempt = number if isinstance(number, int) and not isinstance(number, bool) else None
    return LogLine(str(event.get("time") or "-").replace(" ", "_"), origin.component.replace(" ", "_"), task, attempt,
                   str(data.get("level") or "info").replace(" ", "_"), str(data.get("message") or ""))


def _short(value: Any) -> str | None:
    return value[:MAX_TEXT] if isinstance(value, str) and value else None


def _count(value: Any) -> int | float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    return value if ok else None


def model_calls(value: Any) -> list[dict[str, Any]] | None:
    """An agent attempt's report of its model calls (agents.loop.call_record), as far as it is well
    formed: the attempt wrote it (untrusted), so only the known fields, of the right types, bounded."""
    if not isinstance(value, list):
        return None
    calls = []
    for item in value[:MAX_CALLS]:
        if not isinstance(item, dict):
            continue
        record = {"model": _short(item.get("model")), "inputTokens": _count(item.get("inputTokens")),
                  "outputTokens": _count(item.get("outputTokens")), "seconds": _count(item.get("seconds")),
                  "finishReason": _short(item.get("finishReason"))}
        tools = item.get("toolCalls")
        record["toolCalls"] = [t[:MAX_TEXT] for t in tools[:MAX_CALLS] if isinstance(t, str)] \
            if isinstance(tools, list) else []
        calls.append(record)
    return calls


def attempt_facts(events: list[Event], uid: str) -> dict[str, Any]:
    """What one attempt's state events say about it, for ``/attempt``: its rendered input (the
    operator's TaskDispatched: ``rendered`` or ``renderedRef``, the latest if dispatched again) and
    an agent's model calls (its AgentExecutionSuccess/Failed). Another run's events (same name, an
    older uid) are left out. The subjects were checked (parse_state_event): only the operator sends
    TaskDispatched."""
    facts: dict[str, Any] = {"dispatched": False, "rendered": None, "renderedRef": None, "modelCalls": None}
    for event in events:
        if event.data.get("uid") != uid:
            continue
        if event.type == EventType.TASK_DISPATCHED:
            rendered = event.data.get("rendered")
            facts.update(dispatched=True, rendered=rendered if isinstance(rendered, dict) else None,
                         renderedRef=event.data.get("renderedRef"))
        elif event.type in (EventType.AGENT_SUCCESS, EventType.AGENT_FAILED):
            facts["modelCalls"] = model_calls(event.data.get("calls"))
    return facts


def wanted(line: LogLine, task: str | None, attempt: int | None) -> bool:
    """Whether ``line`` passes the ``task`` and ``attempt`` filters (a collection child ``each[2]``
    passes ``task=each``)."""
    if task is not None and line.task != task and not (line.task or "").startswith(f"{task}["):
        return False
    return attempt is None or line.attempt == attempt


async def over(state: RunState, uid: str, *, ended: bool) -> bool:
    """Whether a stream of the run ``uid`` is done: the run is deleted or re-created, or (with
    ``ended``) has ended. An API server that does not answer now is no reason to stop."""
    try:
        run = await state()
    except Exception as e:  # noqa: BLE001 - asked again at the next check
        log.debug("cannot read the run's state: %s", e)
        return False
    return run is None or run[0] != uid or (ended and run[1] in TERMINAL_PHASES)


def sse(sequence: int, etype: str, data: str) -> str:
    return f"id: {sequence}\nevent: {etype}\ndata: {data}\n\n"


class Streams:
    def __init__(self, bus: Bus, limit: int) -> None:
        """``limit``: most streams open at once (each holds a JetStream consumer); beyond it, 429."""
        self.bus, self.limit = bus, limit
        self.open = 0
        self._closing: set[asyncio.Task[None]] = set()

    async def _subscribe(self, stream: str, subject: str, config: ConsumerConfig) -> Any:
        if self.open >= self.limit:
            raise ApiError(429, "TooManyStreams", f"this api.Service serves at most {self.limit} event and log "
                           "streams at once; try again later")
        if self.bus.js is None:
            raise ConnectionError("NATS is not connected")
        config.inactive_threshold = INACTIVE_SECONDS
        self.open += 1
        try:
            return await self.bus.js.subscribe(subject, stream=stream, ordered_consumer=True, config=config)
        except BaseException:
            self.open -= 1
            raise

    def _close(self, stream: str, sub: Any) -> None:
        """Unsubscribe and delete the consumer, in a task of its own: a stream whose client went
        away is closed from a cancelled scope, where any await would be cancelled again (and the
        subscription, kept alive by its heartbeats, would outlive it)."""
        self.open -= 1
        task = asyncio.get_running_loop().create_task(self._unsubscribe(stream, sub))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _unsubscribe(self, stream: str, sub: Any) -> None:
        """Deleting the consumer at once, not leaving it to the server's inactivity timer, keeps a
        burst of short reads from piling them up."""
        try:
            name = (await sub.consumer_info()).name
            await sub.unsubscribe()
            if self.bus.js is not None:
                await self.bus.js.delete_consumer(stream, name)
        except Exception as e:  # noqa: BLE001 - NATS away: the inactivity timer removes it
            log.debug("closing a %s consumer: %s", stream, e)

    async def events(self, namespace: str, name: str, uid: str, state: RunState,
                     after: int | None = None) -> AsyncIterator[str]:
        """Every state event of the run ``uid`` as SSE (``after``: only those after that SSE id, a
        reconnecting client's ``Last-Event-ID``), replayed then live; ends after the terminal event
        once the run's status has ended too (a retried run goes on), or when it is deleted.
        Subscribed before it returns (a NATS failure is raised here, not in the middle of the answer)."""
        subject = f"compozy.state.{token(namespace)}.{token(name)}.>"
        config = (ConsumerConfig(deliver_policy=DeliverPolicy.ALL) if after is None else
                  ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after + 1))
        sub = await self._subscribe(STATE_STREAM, subject, config)
        return self._events(sub, uid, state)

    async def _events(self, sub: Any, uid: str, state: RunState) -> AsyncIterator[str]:
        ended = False  # the last workflow event seen was a terminal one
        checked = quiet = time.monotonic()
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=SETTLE_SECONDS if ended else 1.0)
                except nats.errors.TimeoutError:
                    now = time.monotonic()
                    if now - checked >= (SETTLE_SECONDS if ended else CHECK_SECONDS):
                        checked = now
                        if await over(state, uid, ended=True):
                            return
                    if now - quiet >= KEEPALIVE_SECONDS:
                        quiet = now
                        yield ": keepalive\n\n"
                    continue
                quiet = time.monotonic()
                try:
                    event = parse_state_event(msg.subject, msg.data)
                except InvalidEvent:
                    continue
                if event.data.get("uid") != uid:
                    continue
                if event.type.startswith("WorkflowExecution"):
                    ended = event.type in TERMINAL_EVENTS
                yield sse(msg.metadata.sequence.stream, event.type, event.model_dump_json())
        finally:
            self._close(STATE_STREAM, sub)

    async def attempt(self, namespace: str, name: str, task: str, attempt: int) -> list[Event]:
        """The state events stored now of one attempt (the operator's and its own), in order."""
        subject = f"compozy.state.{token(namespace)}.{token(name)}.*.{task_token(task)}.{attempt}.*"
        sub = await self._subscribe(STATE_STREAM, subject, ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        events = []
        try:
            info = await sub.consumer_info()
            pending = info.num_pending + (info.delivered.consumer_seq if info.delivered else 0)
            while pending:
                msg = await sub.next_msg(timeout=5.0)
                pending = msg.metadata.num_pending
                try:
                    events.append(parse_state_event(msg.subject, msg.data))
                except InvalidEvent:
                    continue
        finally:
            self._close(STATE_STREAM, sub)
        return events

    async def logs(self, namespace: str, name: str, uid: str, state: RunState, *,
                   task: str | None, attempt: int | None, follow: bool) -> AsyncIterator[str]:
        """The run's log lines; without ``follow`` those stored now, with it also the ones to come,
        until the run has ended (or is deleted) and its last lines are in. Subscribed before it returns."""
        sub = await self._subscribe(LOG_STREAM, execution_logs(namespace, name, uid),
                                    ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
        try:  # delivered already (a push consumer's messages come at once) or still to come
            info = await sub.consumer_info()
            stored = info.num_pending + (info.delivered.consumer_seq if info.delivered else 0)
        except BaseException:
            self._close(LOG_STREAM, sub)
            raise
        return self._logs(sub, uid, state, task, attempt, follow, stored)

    async def _logs(self, sub: Any, uid: str, state: RunState, task: str | None, attempt: int | None, follow: bool,
                    stored: int) -> AsyncIterator[str]:
        try:
            if not follow and stored == 0:
                return
            checked = time.monotonic()
            while True:
                try:
                    msg = await sub.next_msg(timeout=1.0)
                except nats.errors.TimeoutError:
                    if not follow:
                        return
                    checked = time.monotonic()
                    if await over(state, uid, ended=True):
                        return
                    continue
                line = log_line(msg.subject, msg.data)
                if line is not None and wanted(line, task, attempt):
                    yield line.text()
                if not follow and msg.metadata.num_pending == 0:
                    return
                if follow and time.monotonic() - checked >= CHECK_SECONDS:
                    checked = time.monotonic()
                    if await over(state, uid, ended=False):
                        return
        finally:
            self._close(LOG_STREAM, sub)
