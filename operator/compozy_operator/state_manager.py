"""state.Manager: folds state events from JetStream into WorkflowExecution status.

A durable pull consumer reads ``COMPOZY_STATE``. Each batch is grouped by execution; each group
becomes at most one status PATCH (a merge patch of only what changed), and progress-only events
wait briefly to share a PATCH with what follows. Messages are acked only
after their PATCH succeeded, so an operator crash re-delivers them, and the reducer's
``stateSeq`` check makes the re-delivery a no-op. This is the only writer of the status.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from .api.models import GROUP, TERMINAL_PHASES, VERSION, WorkflowExecutionStatus
from .bus import Bus
from .events import STATE_STREAM, Event, EventType
from .kube import ApiException, Kube, merge_patch_diff
from .monitoring import EVENTS, STATUS_PATCHES, observe, observe_event, post_event
from .reducer import fold_all

log = logging.getLogger(__name__)
DURABLE = "compozy-state-manager"
Key = tuple[str, str]  # namespace, execution name
OnStatus = Callable[[dict[str, Any]], Awaitable[None]]


def execution_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/workflowexecutions/{name}"


# Events that change what the orchestrator decides (or end something) are written at once; the
# others (TaskDispatched, TaskExecutionStarted, Tool*/Agent* progress) wait up to `defer` seconds
# to share a PATCH with what follows, so a fast task costs about one status write.
URGENT = frozenset({
    EventType.TASK_SUCCESS, EventType.TASK_FAILED, EventType.TASK_RETRY_SCHEDULED, EventType.WORKFLOW_SUCCESS, EventType.WORKFLOW_FAILED, EventType.WORKFLOW_TIMED_OUT,
    EventType.WORKFLOW_CANCELLED,
})


@dataclass
class Pending:
    """Events folded for one execution but not written yet."""

    obj: dict[str, Any]
    before: WorkflowExecutionStatus
    after: WorkflowExecutionStatus
    msgs: list[Msg] = field(default_factory=list)
    fresh: list[Event] = field(default_factory=list)  # events not folded before (for metrics once written)
    timer: asyncio.TimerHandle | None = None


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
        self.running = True

    async def run(self) -> None:
        assert self.bus.js is not None
        sub = await self.bus.js.pull_subscribe(
            "compozy.state.>", durable=DURABLE, stream=STATE_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=60,
                                  max_ack_pending=20_000))
        while self.running:
            try:
                msgs = await sub.fetch(1, timeout=5)  # returns as soon as one event is there
            except asyncio.TimeoutError:
                continue
            except Exception as e:  # noqa: BLE001 - NATS reconnecting; try again
                log.warning("state consumer fetch failed: %s", e)
                await asyncio.sleep(0.5)
                continue
            try:  # then whatever else is already waiting, without lingering
                msgs += await sub.fetch(self.batch - 1, timeout=0.002)
            except asyncio.TimeoutError:
                pass
            await self.apply_batch(msgs)

    async def apply_batch(self, msgs: list[Msg]) -> None:
        groups: dict[Key, list[tuple[Msg, Event, int]]] = defaultdict(list)
        for m in msgs:
            try:
                ev = Event.model_validate_json(m.data)
            except ValueError:
                log.error("dropping a malformed state event on %s", m.subject)
                await m.term()
                continue
            EVENTS.labels(ev.type).inc()
            groups[(ev.namespace, ev.execution)].append((m, ev, m.metadata.sequence.stream))
        await asyncio.gather(*(self.apply_group(k, items) for k, items in groups.items()))

    async def _current(self, key: Key) -> dict[str, Any] | None:
        if key in self.cache:
            return self.cache[key]
        try:
            return await asyncio.to_thread(self.kube.get, execution_path(*key))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def apply_group(self, key: Key, items: list[tuple[Msg, Event, int]]) -> None:
        msgs = [m for m, _, _ in items]
        async with self.locks[key]:
            try:
                p = self.pending.get(key)
                if p is None:
                    obj = await self._current(key)
                    if obj is None:  # the execution is gone; its events have nowhere to go
                        await asyncio.gather(*(m.ack() for m in msgs))
                        return
                    status = WorkflowExecutionStatus.model_validate(obj.get("status") or {})
                    p = self.pending[key] = Pending(obj, status, status)
                uid = p.obj["metadata"]["uid"]
                # events of an earlier execution with the same name are dropped
                mine = [(ev, seq) for _, ev, seq in items if ev.data.get("uid") == uid]
                p.fresh += [ev for ev, seq in mine if seq > p.after.state_seq]
                p.after = fold_all(p.after, mine)
                p.msgs += msgs
            except Exception:  # noqa: BLE001
                self.pending.pop(key, None)
                self.cache.pop(key, None)
                log.exception("folding events into %s/%s failed; they will be re-delivered", *key)
                await asyncio.gather(*(m.nak(delay=1) for m in msgs))
                return
            if any(ev.type in URGENT for _, ev, _ in items) or self.defer <= 0:
                # The orchestrator decides from the folded status at once, in parallel with the
                # PATCH: the events are already durable in the stream, which is what it replays
                # after a restart, so nothing is decided that a crash could lose.
                decided = asyncio.create_task(self.on_status({**p.obj, "status": p.after.dump()}))
                await self._flush(key)
            else:
                if p.timer is None:
                    p.timer = asyncio.get_running_loop().call_later(
                        self.defer, lambda: asyncio.ensure_future(self._flush_later(key)))
                return
        await decided

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
        written = None
        try:  # every failure below ends in ack or nak, never in silence
            if p.after.model_copy(update={"state_seq": p.before.state_seq}) != p.before:
                patch = merge_patch_diff(p.obj.get("status") or {}, p.after.dump())
                STATUS_PATCHES.inc()
                written = await asyncio.to_thread(self.kube.merge_patch, execution_path(*key) + "/status",
                                                  {"status": patch})
                self.cache[key] = written
                for etype, reason, message in observe(p.before, p.after):
                    asyncio.get_running_loop().run_in_executor(None, post_event, self.kube, written, etype, reason,
                                                               message)
            await asyncio.gather(*(m.ack() for m in p.msgs))
            for ev in p.fresh:
                observe_event(ev)
        except ApiException as e:
            self.cache.pop(key, None)
            if e.status == 404:
                await asyncio.gather(*(m.ack() for m in p.msgs))
                return None
            log.warning("status patch of %s/%s failed (%s %s); events will be re-delivered", *key, e.status, e.reason)
            await asyncio.gather(*(m.nak(delay=1) for m in p.msgs))
            return None
        except Exception:  # noqa: BLE001
            self.cache.pop(key, None)
            log.exception("writing the status of %s/%s failed; events will be re-delivered", *key)
            await asyncio.gather(*(m.nak(delay=1) for m in p.msgs))
            return None
        if p.after.phase in TERMINAL_PHASES:
            self.cache.pop(key, None)
            self.locks.pop(key, None)
        return written

    def forget(self, key: Key) -> None:
        """The execution was deleted: drop its cached object (pending events still flush: the
        PATCH answers 404 and they are acked)."""
        self.cache.pop(key, None)
