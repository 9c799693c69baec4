"""Stopping and resuming nats-server alone (an outage), in Python and with ``compozy dev nats``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from compozy_operator.bus import Bus
from compozy_operator.testenv import ComponentError, DevEnvironment
from compozy_operator.testenv.natsserver import NatsServer


def _refused(url: str) -> bool:
    host, port = url.rsplit("/", 1)[1].split(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


async def _jetstream_answers(url: str, token: str) -> bool:
    bus = Bus(url, token, "probe")
    await bus.connect(attempts=1)
    assert bus.js is not None
    await bus.js.account_info()
    await bus.close()
    return True


def test_resume_serves_the_same_url_and_data(devenv: DevEnvironment, tmp_path: Path) -> None:
    server = NatsServer(devenv.bindir, tmp_path / "nats").start()
    try:
        url = server.url

        async def scenario() -> tuple[bool, bytes, int]:
            bus = Bus(server.url, server.token, "resume-probe")
            await bus.connect(attempts=1)
            await bus.ensure_streams()
            assert bus.js is not None and bus.nc is not None
            await bus.publish_command("compozy.cmd.ns.run.task.execute.a.1", {"kept": True}, "m1")
            await asyncio.to_thread(server.stop)
            refused = _refused(url)
            await asyncio.to_thread(server.resume)
            await asyncio.wait_for(_until(lambda: bus.connected), 20)
            kept = (await bus.js.get_last_msg("COMPOZY_COMMANDS", "compozy.cmd.ns.run.task.execute.a.1",
                                              direct=True)).data
            reconnects = bus.nc.stats["reconnects"]
            await bus.close()
            return refused, kept, reconnects

        refused, kept, reconnects = asyncio.run(scenario())
        assert refused, "nats-server still answered after stop()"
        assert server.url == url
        assert json.loads(kept) == {"kept": True}
        assert reconnects == 1
        with pytest.raises(RuntimeError, match="running"):
            server.resume()
    finally:
        server.stop()


async def _until(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.05)


def test_check_alive_tolerates_a_stopped_nats_but_not_a_dead_one(devenv: DevEnvironment, tmp_path: Path) -> None:
    # the session's cluster, with a NATS of this test's own (never stop() this environment)
    env = DevEnvironment(tmp_path, devenv.bindir, devenv.cluster, NatsServer(devenv.bindir, tmp_path / "nats"))
    env.nats.start()
    try:
        env.write_state()
        env.stop_nats()
        env.check_alive()
        assert json.loads((tmp_path / "env.json").read_text())["nats"] == "stopped"
        env.resume_nats()
        env.check_alive()
        assert json.loads((tmp_path / "env.json").read_text())["nats"] == "running"
        assert env.nats.proc is not None
        env.nats.proc.signal_group(signal.SIGKILL)
        env.nats.proc.popen.wait(10)  # type: ignore[union-attr]
        with pytest.raises(ComponentError, match="nats-server: died"):
            env.check_alive()
    finally:
        env.nats.stop()


def test_compozy_dev_nats_stop_and_start(devenv: DevEnvironment, tmp_path: Path) -> None:
    env = {**os.environ, "COMPOZY_TESTENV_BIN": str(devenv.bindir), "COMPOZY_TESTENV_RUNS": str(tmp_path)}
    compozy = [sys.executable, "-m", "compozy_operator.cli"]
    up = subprocess.Popen([*compozy, "dev", "up"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines: list[str] = []
        while not any(line.startswith("kubectl get nodes") for line in lines):
            line = up.stdout.readline()  # type: ignore[union-attr]
            assert line, f"compozy dev up ended early: {''.join(lines)}"
            lines.append(line)
        exports = dict(line[len("export "):].strip().split("=", 1) for line in lines if line.startswith("export "))
        url, token = exports["NATS_URL"], exports["NATS_TOKEN"]

        stop = subprocess.run([*compozy, "dev", "nats", "stop"], capture_output=True, text=True, env=env, timeout=90)
        assert stop.returncode == 0, stop.stderr
        assert stop.stdout.strip() == f"nats-server stopped ({url})"
        assert _refused(url)
        nodes = subprocess.run([str(devenv.bindir / "kubectl"), "get", "nodes"], capture_output=True, text=True,
                               env={**env, "KUBECONFIG": exports["KUBECONFIG"]})
        assert "process-node-1   Ready" in nodes.stdout, nodes.stderr
        time.sleep(1)  # dev up checks its components every 0.2 s
        assert up.poll() is None, "compozy dev up ended when NATS stopped"

        start = subprocess.run([*compozy, "dev", "nats", "start"], capture_output=True, text=True, env=env, timeout=90)
        assert start.returncode == 0, start.stderr
        assert start.stdout.strip() == f"nats-server running ({url})"
        assert asyncio.run(_jetstream_answers(url, token))

        subprocess.run([*compozy, "dev", "down"], capture_output=True, text=True, env=env, check=True)
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            up.kill()


def test_compozy_dev_nats_without_a_dev_up(tmp_path: Path) -> None:
    env = {**os.environ, "COMPOZY_TESTENV_RUNS": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "compozy_operator.cli", "dev", "nats", "stop"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 1
    assert "no local cluster started with `compozy dev up` is running" in out.stderr
