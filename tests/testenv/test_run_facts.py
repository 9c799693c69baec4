"""A decision must not outlive the facts it rests on (issue 10, found by make chaos): events the
orchestrator decided from that no stored status shows yet go into the stream again, before the run
ends, even into a state stream deleted and recreated under it. Real nats-server, its own instance."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from compozy_operator.resources.models import WorkflowExecutionStatus
from compozy_operator.bus import STATE_STREAM, Bus
from compozy_operator.events import EventType, make_event
from compozy_operator.orchestrator.run import REPUBLISH_AFTER, Run
from compozy_operator.reducer import fold_all
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.natsserver import NatsServer

UID = "uid-facts"


def _events() -> list:
    started = make_event(EventType.WORKFLOW_STARTED, "test", "ns", "run", UID, workflow="w", taskCount=2)
    done = make_event(EventType.TASK_SUCCESS, "compozy/task-executor", "ns", "run", UID, "each[1]", 1, output={})
    return [started, done]


def test_learned_facts_are_dropped_once_a_stored_status_shows_them() -> None:
    started, done = _events()
    run = Run(UID, "ns", "run")
    run.learn([started, done], now=100.0)
    run.confirm(fold_all(WorkflowExecutionStatus(), [(started, 1)]))
    assert list(run.facts) == [done.id]
    run.confirm(fold_all(WorkflowExecutionStatus(), [(started, 1), (done, 2)]))
    assert run.facts == {}


def test_unconfirmed_facts_are_published_again_into_a_recreated_stream(devenv: DevEnvironment, tmp_path: Path) -> None:
    server = NatsServer(devenv.bindir, tmp_path / "nats").start()

    async def scenario() -> tuple[int, int, int, float | None]:
        bus = Bus(server.url, server.token, "facts-probe")
        await bus.connect(attempts=1)
        await bus.ensure_streams()
        assert bus.js is not None
        started, done = _events()
        for ev in (started, done):
            await bus.publish_event(ev)
        run = Run(UID, "ns", "run")
        now = time.time()
        run.learn([started, done], now=now)  # decided from, e.g. replayed after a restart
        run.confirm(fold_all(WorkflowExecutionStatus(), [(started, 1)]))  # the stored status lacks `done`
        await bus.js.delete_stream(STATE_STREAM)  # ... and the stream that had it is deleted
        await bus.ensure_streams()
        early = await run.republish(bus, now + 1)  # not due yet
        before_end = (await bus.js.stream_info(STATE_STREAM)).state.messages
        await run.republish(bus, now + 1, everything=True)  # what _finish does before the end
        after_end = (await bus.js.stream_info(STATE_STREAM)).state.messages
        msg = await bus.js.get_last_msg(STATE_STREAM, done.subject)
        await bus.close()
        return before_end, after_end, len(msg.data), early

    try:
        before_end, after_end, size, early = asyncio.run(scenario())
    finally:
        server.stop()
    assert before_end == 0 and after_end == 1 and size > 0
    assert early is not None and early > time.time() + REPUBLISH_AFTER - 5  # it looks again later
