"""What the orchestrator remembers about one execution (a cache, never the truth), and the
"virtual" status it decides from: the status plus the facts the status may not show yet."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from ..resources.models import WorkflowExecutionStatus, WorkflowSpec
from ..bus import Bus
from ..events import STATE_STREAM, Event, EventType
from ..executor import RunContext, epoch
from ..reducer import fold_all, shows

SOURCE = "compozy/orchestrator"
REPUBLISH_AFTER = 15.0  # seconds an event decided from may stay unseen in the status before it is published again
CLOCK_SKEW = 5.0  # seconds between the clocks of the event's publisher and nats-server that are tolerated


@dataclass
class Run:
    uid: str
    namespace: str
    name: str
    spec: WorkflowSpec | None = None
    context: RunContext | None = None
    overlay: list[tuple[int, Event]] = field(default_factory=list)  # our own events, until the status has them
    sent: dict[str, float] = field(default_factory=dict)  # overlay event id -> when last published
    history: list[tuple[int, Event]] = field(default_factory=list)  # replayed from the stream at load
    # Others' events decided from (replayed, or folded by the state manager but maybe not written):
    # id -> (event, since when), until a status read from the API server shows them.
    facts: dict[str, tuple[Event, float]] = field(default_factory=dict)
    loaded: bool = False
    cancel: bool = False  # spec.cancel was seen (sticky: a stale copy of the object cannot undo it)
    wanted: int = 0  # the highest spec.retry seen: the retry round asked for
    obj: dict[str, Any] = field(default_factory=dict)  # the latest object seen, for timers
    generation: int | None = None  # the highest metadata.generation seen: the spec acted on
    outputs: dict[str, Any] = field(default_factory=dict)  # object-store values already fetched
    limits: dict[str, tuple[str, int]] | None = None  # child key prefix -> (parent, maxWorkers)
    pods: set[tuple[str, int]] = field(default_factory=set)  # (task key, attempt) whose pod exists or existed
    acted: set[tuple[str, str, int]] = field(default_factory=set)  # actions known done (published)
    newest: WorkflowExecutionStatus | None = None  # the newest status received (watch copies can lag)
    status: WorkflowExecutionStatus | None = None  # the (virtual) status last decided from
    stopped: set[str] = field(default_factory=set)  # pods of ended attempts whose delete was sent
    grace: set[str] = field(default_factory=set)  # pods of failed attempts given time to exit by themselves
    failures: int = 0  # consecutive failed reconciles (back-off)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def virtual(self, status: WorkflowExecutionStatus) -> WorkflowExecutionStatus:
        """The status plus the replayed history and our own events it does not show yet.

        The reducer is order-independent and idempotent, so folding facts the status already has
        changes nothing; those the status shows are dropped here (by their facts: after a crash,
        redelivered events are folded after later ones, so a sequence proves nothing)."""
        self.overlay = [(seq, ev) for seq, ev in self.overlay if not shows(status, ev)]
        self.history = [(seq, ev) for seq, ev in self.history if not shows(status, ev)]
        self.learn([ev for _, ev in self.history])
        if not self.history and not self.overlay:
            return status
        return fold_all(status, [(ev, seq) for seq, ev in [*self.history, *self.overlay]])

    def retrying(self) -> bool:
        """Is a retry round's WorkflowExecutionRetried decided from but not in the status yet? (Call
        after :meth:`virtual`, which drops what the status shows.)"""
        return any(ev.type == EventType.WORKFLOW_RETRIED for _, ev in [*self.history, *self.overlay])

    async def publish(self, bus: Bus, event: Event) -> int:
        """Publish one of this run's state events and decide from it at once (the overlay).

        Except a task's failure: it races the attempt's own report (a timeout against a success
        that is on its way), and the stream's order decides which one is the attempt's end. So the
        orchestrator waits for the status to say, rather than retry an attempt that succeeded."""
        seq = await bus.publish_event(event)
        if event.type != EventType.TASK_FAILED:
            self.overlay.append((seq, event))
            self.sent[event.id] = time.time()
        return seq

    def learn(self, events: list[Event], now: float | None = None) -> None:
        """Remember events of others that decisions are made from, until the stored status shows them."""
        for ev in events:
            self.facts.setdefault(ev.id, (ev, now or time.time()))

    def confirm(self, stored: WorkflowExecutionStatus) -> None:
        """``stored`` was read from the API server: the facts it shows are safe."""
        self.facts = {k: (ev, t) for k, (ev, t) in self.facts.items() if not shows(stored, ev)}

    async def republish(self, bus: Bus, now: float, everything: bool = False) -> float | None:
        """Publish again (same id: a no-op while the stream has it) what the stored status still does
        not show after a while (``everything``: now, before the run ends): a deleted stream loses
        events nobody had folded yet, and a decision made from them must not outlive them. Returns
        when to look again."""
        due = [ev for _, ev in self.overlay
               if everything or now - self.sent.get(ev.id, now) >= REPUBLISH_AFTER]
        due += [ev for ev, since in self.facts.values() if everything or now - since >= REPUBLISH_AFTER]
        if due:  # only what a deleted stream may have taken: the rest is in it (republishing reaches
            # every core subscriber again)
            created = await bus.stream_created(STATE_STREAM)
            due = [ev for ev in due if created is None or created.timestamp() >= epoch(ev.time) - CLOCK_SKEW]
        for ev in due:
            await bus.publish_event(ev)
            self.sent[ev.id] = now
            if ev.id in self.facts:
                self.facts[ev.id] = (ev, now)
        self.sent = {ev.id: self.sent.get(ev.id, now) for _, ev in self.overlay}
        times = [*self.sent.values(), *(since for _, since in self.facts.values())]
        return min(times) + REPUBLISH_AFTER if times else None

    async def once(self, key: tuple[str, str, int], effect: Any) -> None:
        """Carry out ``effect`` (an awaitable factory) unless it is known done; it is marked done only
        after it succeeded, so a failure leaves it to the next decision."""
        if key in self.acted:
            return
        await effect()
        self.acted.add(key)
