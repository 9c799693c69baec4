"""One pool runner alone (no cluster, no operator): where a pooled attempt's time goes. Part of
``make bench-pool``; alone:

    .venv/bin/python hack/bench/pool_runner.py --attempts 200 --concurrency 32

A real :class:`PoolRunner` against a nats-server of its own; attempts of a no-op python tool are
queued as the orchestrator queues them (the command, then the queue message), one at a time
(``--gap`` apart: an attempt's own latency) and then all at once (the runner's throughput). Each
step is timed where it reaches NATS, by a subscriber that sees the attempt's requests and events go
by, so nothing in the runner is instrumented:

* queued -> command fetch: the message's delivery, the stop look, the fork, the process's NATS connect;
* fetch -> claim -> TaskExecutionStarted -> tool started -> tool ended -> TaskExecutionSuccess (the
  events' own times), one attempt at a time;
* CPU per attempt: the processes' (the fork server reaps them: its children's CPU) and the runner's.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing.forkserver
import os
import secrets
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig

from compozy_operator.bus import Bus
from compozy_operator.events import POOL_STREAM, command_subject, event_id, pool_consumer, pool_subject
from compozy_operator.pool_runner import PoolRunner
from compozy_operator.pools import PoolWork
from compozy_operator.testenv.natsserver import NatsServer
from compozy_operator.testenv.workdir import find_binaries

from common import TICK, _stat, percentile

NS, POOL, RUN = "bench", "warm", "run"
NOOP = {"id": "noop", "python": "def run(input, ctx):\n    return {}\n"}
STEPS = ["queued", "fetch", "claim", "TaskExecutionStarted", "ToolExecutionStarted", "ToolExecutionSuccess",
         "TaskExecutionSuccess"]


def children_cpu(pid: int) -> float:
    f = _stat(pid)
    return sum(int(x) for x in f[13:15]) / TICK if f else 0.0


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Seen:
    """When each attempt's steps reached NATS."""

    def __init__(self) -> None:
        self.at: dict[str, dict[str, float]] = {}

    def mark(self, task: str, step: str, at: float | None = None) -> None:
        self.at.setdefault(task, {}).setdefault(step, at or time.time())

    async def watch(self, bus: Bus) -> None:
        assert bus.nc is not None

        async def fetch(msg: Any) -> None:
            self.mark(msg.subject.rsplit(".", 2)[-2], "fetch")

        async def claim(msg: Any) -> None:
            self.mark(msg.subject.rsplit(".", 2)[-2], "claim")

        async def event(msg: Any) -> None:
            ev = json.loads(msg.data)  # an event's own time: when the attempt made it
            self.mark(ev["data"]["task"], ev["type"], datetime.fromisoformat(ev["time"].replace("Z", "+00:00")).timestamp())

        await bus.nc.subscribe(f"$JS.API.DIRECT.GET.COMPOZY_COMMANDS.compozy.cmd.{NS}.{RUN}.task.execute.>", cb=fetch)
        await bus.nc.subscribe(f"compozy.cmd.{NS}.{RUN}.task.claim.>", cb=claim)
        await bus.nc.subscribe(f"compozy.state.{NS}.>", cb=event)
        await bus.nc.flush()

    def report(self, tasks: list[str]) -> list[str]:
        lines = []
        for a, b in zip(STEPS, STEPS[1:]):
            spans = [t[b] - t[a] for k in tasks if a in (t := self.at.get(k, {})) and b in t]
            if spans:
                lines.append(f"{a} -> {b}: p50 {percentile(spans, 50) * 1000:.1f} ms, p99 "
                             f"{percentile(spans, 99) * 1000:.1f} ms")
        return lines


async def queue(bus: Bus, seen: Seen, tasks: list[str], gap: float) -> None:
    for task in tasks:
        nonce = secrets.token_urlsafe(24)
        await bus.publish_command(command_subject(NS, RUN, task, 1), {
            "namespace": NS, "execution": RUN, "uid": "uid", "task": task, "attempt": 1, "nonce": nonce,
            "tool": NOOP, "input": {}})
        seen.mark(task, "queued")
        await bus.publish_pool_work(pool_subject(NS, POOL), PoolWork(NS, RUN, "uid", task, 1, nonce).dump(),
                                    event_id("uid", task, 1, "PoolWork", nonce))
        if gap:
            await asyncio.sleep(gap)


async def wait_done(seen: Seen, tasks: list[str], timeout: float) -> float:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all("TaskExecutionSuccess" in seen.at.get(t, {}) for t in tasks):
            break
        await asyncio.sleep(0.02)
    return max((seen.at.get(t, {}).get("TaskExecutionSuccess", 0.0) for t in tasks), default=0.0)


async def bench(url: str, token: str, attempts: int, concurrency: int, gap: float) -> list[str]:
    bus = Bus(url, token, "bench")
    await bus.connect(attempts=3)
    await bus.ensure_streams()
    await bus.create_consumer(POOL_STREAM, ConsumerConfig(
        durable_name=pool_consumer(NS, POOL), filter_subject=pool_subject(NS, POOL), ack_policy=AckPolicy.EXPLICIT,
        ack_wait=10, max_ack_pending=concurrency * 2))
    os.environ.update(COMPOZY_NATS_URL=url, COMPOZY_NATS_TOKEN=token)
    runner = PoolRunner(NS, POOL, concurrency, "runner-0", "uid-runner-0")
    running = asyncio.create_task(runner.run())
    seen = Seen()
    await seen.watch(bus)
    warm = ["warm-up"]
    await queue(bus, seen, warm, 0)
    await wait_done(seen, warm, 60)  # the fork server is up (it started with the runner)
    forkserver = multiprocessing.forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    lines = []
    for label, n, pause in (("one at a time", max(1, attempts // 10), gap), ("all at once", attempts, 0.0)):
        tasks = [f"{label[:3]}{i}" for i in range(n)]
        cpu0, own0, t0 = children_cpu(forkserver), own_cpu(), time.time()
        await queue(bus, seen, tasks, pause)
        end = await wait_done(seen, tasks, 60 + n)
        await asyncio.sleep(0.5)  # the last processes exit and are reaped
        procs, own = children_cpu(forkserver) - cpu0, own_cpu() - own0
        lines.append(f"{n} attempts {label}" + (f" ({pause * 1000:.0f} ms apart)" if pause else
                                                f": {n / (end - t0):.1f} attempts/s ({concurrency} slots)"))
        if pause:  # (at once, the steps of one attempt wait for the others' CPU)
            lines += ["  " + line for line in seen.report(tasks)]
        lines.append(f"  CPU per attempt: its process {procs / n * 1000:.1f} ms, the runner and this benchmark "
                     f"{own / n * 1000:.1f} ms")
    runner.stop()
    await running
    await bus.close()
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attempts", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--gap", type=float, default=0.1, help="seconds between attempts queued one at a time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, NatsServer(find_binaries(), Path(tmp) / "nats") as server:
        os.environ["COMPOZY_TERMINATION_LOG"] = str(Path(tmp) / "termination")
        for line in asyncio.run(bench(server.url, server.token, args.attempts, args.concurrency, args.gap)):
            print(line)


if __name__ == "__main__":
    main()
