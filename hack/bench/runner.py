"""A task pod's own start: CPU of ``compozy task run`` up to its first NATS request (the command
fetch), and of a whole no-op attempt, beside ``python3 -c pass``. Part of ``make bench``; alone:

    .venv/bin/python hack/bench/runner.py --attempts 20

The runner runs as the process node runs it (the ``compozy`` entry point, the pod's environment),
against a nats-server of its own; CPU is read from /proc when the command fetch reaches NATS, and
from the process's rusage at its exit. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import nats

from compozy_operator.bus import Bus
from compozy_operator.events import command_subject
from compozy_operator.testenv.natsserver import NatsServer
from compozy_operator.testenv.workdir import find_binaries

from common import TICK, _stat, percentile

NS, RUN, UID, NONCE = "bench", "runner", "uid-runner", "nonce"
NOOP = {"id": "noop", "python": "def run(input, ctx):\n    return {}\n"}


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


async def runner_start(url: str, token: str, attempts: int, workdir: Path) -> dict[str, list[float]]:
    """CPU seconds of each attempt: ``first request`` (to its command fetch), ``attempt`` (all of it),
    and of ``python3 -c pass`` run as many times."""
    bus = Bus(url, token, "bench-runner")
    await bus.connect(attempts=3)
    nc = await nats.connect(url, token=token)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    first: dict[str, float] = {}

    async def on_fetch(msg: Any) -> None:  # a copy of each command fetch (JetStream answers it)
        task = msg.subject.rsplit(".", 2)[-2]
        if task in procs and task not in first and (f := _stat(procs[task].pid)) is not None:
            first[task] = sum(int(x) for x in f[11:13]) / TICK

    await nc.subscribe(f"$JS.API.DIRECT.GET.COMPOZY_COMMANDS.compozy.cmd.{NS}.{RUN}.task.execute.>", cb=on_fetch)
    await nc.flush()
    bindir = Path(sys.executable).parent  # as on the process node: the venv's programs first on the PATH
    path = f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    whole, bare = [], []
    for i in range(attempts):
        task = f"t{i}"
        await bus.publish_command(command_subject(NS, RUN, task, 1), {
            "namespace": NS, "execution": RUN, "uid": UID, "task": task, "attempt": 1, "nonce": NONCE,
            "tool": NOOP, "input": {}})
        env = {"PATH": path, "HOME": str(workdir), "COMPOZY_NAMESPACE": NS, "COMPOZY_EXECUTION": RUN,
               "COMPOZY_EXECUTION_UID": UID, "COMPOZY_TASK": task, "COMPOZY_ATTEMPT": "1", "POD_NAME": task,
               "POD_UID": f"uid-{task}", "COMPOZY_COMMAND_NONCE": NONCE, "COMPOZY_NATS_URL": url,
               "COMPOZY_NATS_TOKEN": token, "COMPOZY_TERMINATION_LOG": str(workdir / "termination")}
        before = children_cpu()
        procs[task] = subprocess.Popen([str(bindir / "compozy"), "task", "run"], env=env, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL)
        while procs[task].poll() is None:
            await asyncio.sleep(0.005)
        whole.append(children_cpu() - before)
        before = children_cpu()
        subprocess.run([str(bindir / "python3"), "-c", "pass"], check=True)
        bare.append(children_cpu() - before)
    await nc.close()
    await bus.close()
    return {"first request": list(first.values()), "attempt": whole, "python3 -c pass": bare}


def summary(cpu: dict[str, list[float]]) -> str:
    return ", ".join(f"{k} p50 {percentile(v, 50) * 1000:.0f} ms" for k, v in cpu.items() if v)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attempts", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, NatsServer(find_binaries(), Path(tmp) / "nats") as server:
        async def run() -> dict[str, list[float]]:
            bus = Bus(server.url, server.token, "bench")
            await bus.connect(attempts=3)
            await bus.ensure_streams()
            await bus.close()
            return await runner_start(server.url, server.token, args.attempts, Path(tmp))

        print(f"task runner CPU ({args.attempts} no-op attempts, one at a time): {summary(asyncio.run(run()))}")


if __name__ == "__main__":
    main()
