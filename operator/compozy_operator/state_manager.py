"""state.Manager: folds state events from JetStream into WorkflowExecution status.

A durable pull consumer reads ``COMPOZY_STATE``. Each batch is grouped by execution; each group
becomes at most one status PATCH (a merge patch of only what changed), and progress-only events
wait briefly to share a PATCH with what follows; a task's or run's end is decided on at once and
written with the events that decision published (the next dispatch, the run's end). Messages are
acked only after their PATCH succeeded, so an operator crash re-delivers them (after ``ACK_WAIT``), and the reducer's
transition checks make the re-delivery a no-op. This is the only writer of the status.

Nothing an event says can stop it: an event that can never be folded (malformed, or one whose
body disagrees with its subject: identity comes from the subject, which only the attempt or the
operator it names may publish on, see events.parse_state_event) is terminated, counted and
logged once; a failure that may pass (Kubernetes API, NATS) is nak'ed and redelivered with a
growing delay, never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from . import failpoints
from .resources.models import TERMINAL_PHASES, WorkflowExecutionStatus
from .resources.paths import executions_path
from .bus import Bus
from .events import STATE_CONSUMER, STATE_STREAM, Event, EventType, InvalidEvent, parse_state_event
from .kube import ApiException, Kube, merge_patch_diff
from .monitoring import EVENTS, REJECTED_EVENTS, STATUS_PATCHES, EventRecorder, observe, observe_event
from .reducer import fold_all

log = logging.getLogger(__name__)
DURABLE = STATE_CONSUMER
# Events a crashed operator had fetched are redelivered after this long: it bounds the status lag
# after a crash. A batch that takes longer keeps its events with in-progress acks.
ACK_WAIT = 8.0
MAX_NAK_DELAY = 30.0
# Batches folded at once. Folded one after another, every execution's events waited for the slowest
# PATCH of the batch before (under load: 0.6 s p50, 2 s p99, so events sat 1.4-2.3 s in the stream).
MAX_BATCHES = 8
# After an urgent event the orchestrator decides at once, and the status write waits for that
# decision (at most DECISION_WAIT) and LINGER more: the events it published (the next task's
# TaskDispatched, the run's end) then share the PATCH of the event that caused them, one PATCH per
# hop instead of two or three. Live progress does not wait for it (the event stream never does).
DECISION_WAIT = 1.0
LINGER = 0.05
Key = tuple[str, str]  # namespace, execution name
Item = tuple[Msg, Event, int]  # a message, its event, its stream sequence
# (the object with its status folded, not yet written; the events folded into it since the last write)
OnStatus = Callable[[dict[str, Any], list[Event]], Awaitable[None]]


def consumer_config(start_seq: int | None = None) -> ConsumerConfig:
    """The durable consumer: from the stream's first event, or from ``start_seq`` when it is recreated."""
    return ConsumerConfig(
        name=DURABLE, durable_name=DURABLE, filter_subject="compozy.state.>", ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL if start_seq is None else DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=start_seq, ack_wait=ACK_WAIT, max_ack_pending=20_000)


def nak_delay(num_delivered: int) -> float:
    """Delay before redelivering after a transient failure: 0.5 s, doubling with each delivery, at most 30 s."""
    return min(MAX_NAK_DELAY, 0.5 * 2 ** min(max(num_delivered - 1, 0), 10))


def one_line(text: object, limit: int = 300) -> str:
    """``text`` as one bounded log line (exception texts may span many lines)."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[:limit - 3] + "..."


def why(e: Exception) -> str:
    """An error for a log line (an ApiException's text holds the whole response)."""
    return f"{e.status} {e.reason}" if isinstance(e, ApiException) else one_line(e) or type(e).__name__


def fold_each(status: WorkflowExecutionStatus,
              items: list[Item]) -> tuple[WorkflowExecutionStatus, list[Item], list[tuple[Msg, str]]]:
    """Fold the events one at a time, each on a copy, leaving out those whose fold raises.

    Returns the status, the items folded, and the messages left out with the error."""
    folded, bad = [], []
    for m, ev, seq in items:
        try:
            status = fold_all(status, [(ev, seq)])
            folded.append((m, ev, seq))
        except Exception as e:  # noqa: BLE001 - whatever the event made the reducer raise
            bad.append((m, f"folding it raised {type(e).__name__}: {one_line(e)}"))
    return status, folded, bad


async def _settle(msgs: list[Msg], how: Callable[[Msg], Awaitable[None]], what: str) -> None:
    """Ack, nak or term each message not settled yet. A NATS failure only logs: JetStream redelivers."""
    results = await asyncio.gather(*(how(m) for m in msgs if not m.is_acked), return_exceptions=True)
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        log.warning("could not %s %d state event(s) (%s); they will be redelivered", what, len(errors),
                    one_line(errors[0]))


async def ack(msgs: list[Msg]) -> None:
    await _settle(msgs, lambda m: m.ack(), "ack")


async def nak(msgs: list[Msg]) -> None:
    await _settle(msgs, lambda m: m.nak(delay=nak_delay(m.metadata.num_delivered)), "nak")


async def keep_in_progress(msgs: list[Msg]) -> None:
    """Until cancelled, tell JetStream the messages are still being worked on (no redelivery)."""
    while True:
        await asyncio.sleep(ACK_WAIT / 2)
        await asyncio.gather(*(m.in_progress() for m in msgs if not m.is_acked), return_exceptions=True)


# Events that change what the orchestrator decides (or end something) are written at once; the
# others (TaskDispatched, TaskExecutionStarted, Tool*/Agent* progress) wait up to `defer` seconds
# to share a PATCH with what follows, so a fast task costs about one status write.
URGENT = frozenset({
    EventType.TASK_SUCCESS, EventType.TASK_FAILED, EventType.TASK_RETRY_SCHEDULED, EventType.WORKFLOW_SUCCESS,
    EventType.WORKFLOW_FAILED, EventType.WORKFLOW_TIMED_OUT, EventType.WORKFLOW_CANCELLED,
    EventType.TASK_POD_WAITING,  # rare, and the user is waiting to read why
    EventType.WORKFLOW_RETRIED,  # the round waits for it (orchestrator.core)
})


@dataclass
class Pending:
    """Events folded for one execution but not written yet."""

    obj: dict[str, Any]
    before: WorkflowExecutionStatus
    after: WorkflowExecutionStatus
    msgs: list[Msg] = field(default_factory=list)
    fresh: list[Event] = field(default_factory=list)  # events not folded before (for metrics once written)
    events: list[Event] = field(default_factory=list)  # every event folded since the last write
    timer: asyncio.TimerHandle | None = None
    due: bool = False  # an urgent event's write is on its way (after its decision): no timer needed
    # the status as each urgent event left it: the milestones between them are observed one by one
    # (a failed attempt and its retry, folded into one write, still make a TaskFailed Event)
    marks: list[WorkflowExecutionStatus] = field(default_factory=list)


class Pipeline:
    """Batches folded side by side, up to ``limit`` at once, so one execution's slow PATCH holds up no
    other's events. One execution's events still fold in stream order: a batch is started (its groups'
    tasks made, each taking its execution's lock first thing) before the next one, and the locks are
    first come, first served. A batch that fails fails the pipeline at the next :meth:`submit`, as a
    batch folded in line failed the loop (its supervisor restarts it)."""

    def __init__(self, limit: int) -> None:
        self.room = asyncio.Semaphore(limit)
        self.tasks: set[asyncio.Task[None]] = set()
        self.failure: BaseException | None = None

    async def submit(self, start: Callable[[], Awaitable[None]]) -> None:
        """Wait for room, then ``start()`` a batch (see :meth:`StateManager.start_batch`)."""
        await self.room.acquire()
        if self.failure is not None:
            self.room.release()
            raise self.failure
        task = asyncio.ensure_future(start())
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.room.release()
        if not task.cancelled() and task.exception() is not None and self.failure is None:
            self.failure = task.exception()

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()


class StateManager:
    def __init__(self, bus: Bus, kube: Kube, on_status: OnStatus, batch: int = 256, defer: float = 2.0) -> None:
        self.bus = bus
        self.kube = kube
        self.on_status = on_status
        self.batch = batch
        self.defer = defer
        self.cache: dict[Key, dict[str, Any]] = {}  # last object this manager wrote (it is the only writer)
        self.pending: dict[Key, Pending] = {}
        self.locks: dict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)
        self.fetch_error: str | None = None  # why the last fetch failed, until one succeeds
        self.position: tuple[datetime | None, int] | None = None  # (stream created, ack floor) last seen
        self.recorder = EventRecorder(kube)  # Kubernetes Events of the milestones, aggregated
        self.writes: set[asyncio.Task[None]] = set()  # urgent writes waiting for their decision

    def problem(self) -> str | None:
        """Why the manager cannot read events right now (for /readyz), or None."""
        return f"state manager cannot fetch events: {self.fetch_error}" if self.fetch_error else None

    async def run(self) -> None:
        """Fetch and fold until cancelled. Raises if it cannot subscribe (its supervisor restarts it)."""
        await self.resume()
        # Creating the consumer updates an existing one to this config (e.g. an older ack_wait).
        sub = await self.bus.durable_pull(STATE_STREAM, consumer_config())
        batches = Pipeline(MAX_BATCHES)
        try:
            while True:
                try:
                    msgs = await sub.fetch(1, timeout=5)  # returns as soon as one event is there
                except asyncio.TimeoutError:
                    self.fetch_error = None
                    continue
                except Exception as e:  # noqa: BLE001 - NATS reconnecting, consumer or stream gone: try again
                    self._fetch_failed(e)
                    await asyncio.sleep(0.5)
                    continue
                self.fetch_error = None
                try:  # then whatever else is already waiting, without lingering
                    msgs += await sub.fetch(self.batch - 1, timeout=0.002)
                except asyncio.TimeoutError:
                    pass
                await batches.submit(lambda: self.start_batch(msgs))
        finally:
            batches.cancel()  # what they had not acknowledged is redelivered
            self.drop_pending()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def resume(self) -> None:
        """Take up at the first event not acknowledged. Events a predecessor fetched and never
        acknowledged (it crashed, or lost its leadership, between a fold and its PATCH) would come
        back only after ACK_WAIT, and the status would lag them meanwhile (a run could end showing a
        task still running): the consumer is made again from its ack floor, so they come at once.
        Events after the floor that were acknowledged come again too, and fold to nothing new."""
        position = await self.bus.unacknowledged(STATE_STREAM, DURABLE)
        if position is None or position[1] == 0:
            return
        floor, outstanding = position
        await self.bus.delete_consumer(STATE_STREAM, DURABLE)
        await self.bus.create_consumer(STATE_STREAM, consumer_config(floor + 1))
        log.info("state consumer taken up again from its ack floor (%d): %d event(s) fetched and not "
                 "acknowledged before come again now", floor, outstanding)

    def _fetch_failed(self, e: Exception) -> None:
        text = why(e)
        if text != self.fetch_error:  # once per distinct failure, not twice a second
            log.warning("state consumer fetch failed: %s", text)
        self.fetch_error = text

    async def check_consumer(self) -> bool:
        """Recreate the durable consumer if it is gone; return True when it was.

        A recreated consumer resumes after the ack floor last seen on the same stream (what was
        acked then is in the status; the rest is redelivered, harmlessly), or from the stream's
        start when the stream is new (its sequences restarted) or the floor is unknown."""
        position = await self.bus.consumer_position(STATE_STREAM, DURABLE)
        if position is not None:
            self.position = position
            return False
        created, start = await self.bus.stream_created(STATE_STREAM), None
        if self.position is not None and created is not None and self.position[0] == created:
            start = self.position[1] + 1
        await self.bus.create_consumer(STATE_STREAM, consumer_config(start))
        self.position = None
        return True

    async def apply_batch(self, msgs: list[Msg]) -> None:
        await self.start_batch(msgs)

    def start_batch(self, msgs: list[Msg]) -> Awaitable[None]:
        """Start folding ``msgs``; the result is done when they all are. Each execution's group is a
        task started here, before anything is awaited, and takes its execution's lock first thing:
        so of two batches started one after the other, the first folds each execution's events first
        (Pipeline)."""
        groups: dict[Key, list[Item]] = defaultdict(list)
        invalid: list[tuple[Msg, InvalidEvent]] = []
        for m in msgs:
            try:
                ev = parse_state_event(m.subject, m.data)
            except InvalidEvent as e:
                invalid.append((m, e))
                continue
            EVENTS.labels(ev.type).inc()
            groups[(ev.namespace, ev.execution)].append((m, ev, m.metadata.sequence.stream))
        work = [asyncio.ensure_future(self.apply_group(k, items)) for k, items in groups.items()]
        work += [asyncio.ensure_future(self.reject(m, e.reason, e.problem)) for m, e in invalid]
        keepalive = asyncio.ensure_future(keep_in_progress(msgs))

        async def done() -> None:
            try:
                await asyncio.gather(*work)
            finally:
                keepalive.cancel()
        return done()

    @staticmethod
    async def reject(m: Msg, reason: str, problem: str) -> None:
        """Terminate an event that can never be folded: counted, logged once, never redelivered."""
        REJECTED_EVENTS.labels(reason).inc()
        log.warning("rejected the state event on %s: %s", m.subject, one_line(problem))
        await _settle([m], lambda m: m.term(), "terminate")

    async def _current(self, key: Key) -> dict[str, Any] | None:
        if key in self.cache:
            return self.cache[key]
        try:
            return await asyncio.to_thread(self.kube.get, executions_path(*key))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def _pending(self, key: Key) -> Pending | None:
        """What is pending for ``key``, started from the stored object; None when the execution is gone."""
        p = self.pending.get(key)
        if p is None:
            obj = await self._current(key)
            if obj is None:
                return None
            status = WorkflowExecutionStatus.model_validate(obj.get("status") or {})
            p = self.pending[key] = Pending(obj, status, status)
        return p

    async def apply_group(self, key: Key, items: list[Item]) -> None:
        msgs = [m for m, _, _ in items]
        async with self.locks[key]:
            try:
                p = await self._pending(key)
            except Exception as e:  # noqa: BLE001 - the API server, or a status it holds: try again later
                self.cache.pop(key, None)
                log.warning("reading %s/%s failed (%s); its events will be redelivered", *key, why(e))
                await nak(msgs)
                return
            if p is None:  # the execution is gone; its events have nowhere to go
                await ack(msgs)
                return
            uid = p.obj["metadata"]["uid"]
            # events of an earlier execution with the same name are dropped (acked with the rest)
            mine = [(m, ev, seq) for m, ev, seq in items if ev.data["uid"] == uid]
            last = p.after.state_seq
            try:
                p.after, folded = fold_all(p.after, [(ev, seq) for _, ev, seq in mine]), mine
            except Exception:  # noqa: BLE001 - a safety net: validation should have caught the event
                p.after, folded, bad = fold_each(p.after, mine)
                for m, problem in bad:
                    await self.reject(m, "fold_failed", problem)
                rejected = {id(m) for m, _ in bad}
                msgs = [m for m in msgs if id(m) not in rejected]
            p.fresh += [ev for _, ev, seq in folded if seq > last]
            p.events += [ev for _, ev, _ in folded]
            p.msgs += msgs
            # Redelivered events are late already (a crash, a failed PATCH): they wait no longer.
            urgent = any(ev.type in URGENT or m.metadata.num_delivered > 1 for m, ev, _ in folded)
            if urgent:
                p.marks.append(p.after)  # (a fold makes a new status: this one stays as it is)
            if not urgent and self.defer > 0:
                if p.timer is None and not p.due:
                    p.timer = asyncio.get_running_loop().call_later(
                        self.defer, lambda: asyncio.ensure_future(self._flush_later(key)))
                return
            # The orchestrator decides from the folded status at once, before the PATCH: the
            # events are already durable in the stream, which is what it replays after a
            # restart, so nothing is decided that a crash could lose.
            decided = asyncio.create_task(self.on_status({**p.obj, "status": p.after.dump()}, p.events))
            decided.add_done_callback(lambda task: self._decision_failed(key, task))
            if self.defer > 0:
                if not p.due:
                    p.due = True
                    if p.timer is not None:  # the urgent write takes the deferred events with it
                        p.timer.cancel()
                        p.timer = None
                    self._write_after(key, decided)
                return
            await self._flush(key)
        await asyncio.wait({decided})

    def drop_pending(self) -> None:
        """Forget every folded, unwritten event (the loop stops; its supervisor may start it again):
        none is acknowledged, so each is redelivered and folded again, as after a crash. Nothing is
        left marked as being written by a write that will never come."""
        for task in self.writes:
            task.cancel()
        for p in self.pending.values():
            if p.timer is not None:
                p.timer.cancel()
        self.pending.clear()

    def _write_after(self, key: Key, decided: asyncio.Task[None]) -> None:
        """Flush ``key`` once ``decided`` is done (or DECISION_WAIT has passed) and LINGER more."""
        async def write() -> None:
            await asyncio.wait({decided}, timeout=DECISION_WAIT)  # (a timeout leaves the decision going)
            await asyncio.sleep(LINGER)
            await self._flush_later(key)
        task = asyncio.ensure_future(write())
        self.writes.add(task)
        task.add_done_callback(self.writes.discard)

    @staticmethod
    def _decision_failed(key: Key, decided: asyncio.Task[None]) -> None:
        """Log a decision that raised: the status gets written, and its watch event brings the
        orchestrator back to it."""
        if not decided.cancelled() and (e := decided.exception()) is not None:
            log.error("the orchestrator failed to decide on %s/%s", *key, exc_info=e)

    async def _flush_later(self, key: Key) -> None:
        async with self.locks[key]:
            await self._flush(key)

    async def _flush(self, key: Key) -> dict[str, Any] | None:
        """Write what is pending for ``key`` (one PATCH, only if the status really changed), then ack.

        Returns the written object, or None when nothing was written."""
        p = self.pending.pop(key, None)
        if p is None:
            return None
        if p.timer is not None:
            p.timer.cancel()
        try:
            written = await self._write(key, p)
        except Exception as e:  # noqa: BLE001 - every failure ends in ack or nak, never in silence
            self.cache.pop(key, None)
            if isinstance(e, ApiException) and e.status == 404:  # the execution is gone
                await ack(p.msgs)
                return None
            log.warning("status patch of %s/%s failed (%s); events will be redelivered", *key, why(e))
            await nak(p.msgs)
            return None
        failpoints.point("ack.state:before")
        await ack(p.msgs)
        failpoints.point("ack.state:after")
        for ev in p.fresh:
            observe_event(ev)
        if p.after.phase in TERMINAL_PHASES:
            self.cache.pop(key, None)
            self.locks.pop(key, None)
        return written

    async def _write(self, key: Key, p: Pending) -> dict[str, Any] | None:
        """PATCH the status if the folded one differs from the stored one; post the milestones' Events."""
        if p.after.model_copy(update={"state_seq": p.before.state_seq}) == p.before:
            return None
        patch = merge_patch_diff(p.obj.get("status") or {}, p.after.dump())
        STATUS_PATCHES.inc()
        written = await asyncio.to_thread(self.kube.merge_patch, executions_path(*key) + "/status", {"status": patch})
        self.cache[key] = written
        chain = [p.before, *p.marks, p.after]
        for before, after in zip(chain, chain[1:]):
            for etype, reason, message in observe(key[0], before, after):
                asyncio.get_running_loop().run_in_executor(None, self.recorder.post, written, etype, reason, message)
        return written

    def forget(self, key: Key) -> None:
        """The execution was deleted: drop its cached object (pending events still flush: the
        PATCH answers 404 and they are acked)."""
        self.cache.pop(key, None)
