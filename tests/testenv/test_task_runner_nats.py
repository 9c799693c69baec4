"""The task runner (``compozy task run``) against a real nats-server: the exactly-once claim of an
attempt, and NATS outages while attempts are in flight. The runner is the real process a task pod
runs; it needs nothing of Kubernetes, so these tests give it the pod's environment directly."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import json

from compozy_operator.bus import Bus
from compozy_operator.events import Event, attempt_permissions, claim_subject, command_subject, event_id
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.natsserver import NatsServer
from tests.helpers import wait_for

NS, RUN, UID = "ns", "run-1", "uid-run-1"
# appends a line per run to input.file (so the test counts tool runs), then works for a while
COUNTED = ("import time\n"
           "def run(input, ctx):\n"
           "    with open(input['file'], 'a') as f:\n"
           "        f.write(f'{ctx.task} {ctx.attempt}\\n')\n"
           "    time.sleep(input['seconds'])\n"
           "    return {'task': ctx.task, 'attempt': ctx.attempt}\n")


@pytest.fixture
def server(devenv: DevEnvironment, tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(devenv.bindir, tmp_path / "nats") as s:
        asyncio.run(_ensure_streams(s))
        yield s


async def _bus(server: NatsServer, url: str | None = None) -> Bus:
    """A client of ``server`` (as the operator: its token, or the user named in ``url``)."""
    bus = Bus(url or server.url, None if url else server.token, "test")
    await bus.connect(attempts=3)
    return bus


async def _ensure_streams(server: NatsServer) -> None:
    bus = await _bus(server)
    await bus.ensure_streams()
    await bus.close()


def nonce_of(task: str, attempt: int) -> str:
    """The nonce a test's pod of ``task`` ``attempt`` is given (the operator's are random)."""
    return f"nonce-{task}-{attempt}"


def publish_command(server: NatsServer, task: str, file: Path, seconds: float, attempt: int = 1,
                    bus_url: str | None = None, **changes: Any) -> None:
    command = {"namespace": NS, "execution": RUN, "uid": UID, "task": task, "attempt": attempt,
               "nonce": nonce_of(task, attempt), "tool": {"id": "counted", "python": COUNTED},
               "input": {"file": str(file), "seconds": seconds}, **changes}

    async def publish() -> None:
        bus = await _bus(server, bus_url)
        await bus.publish_command(command_subject(NS, RUN, task, attempt), command,
                                  event_id(UID, task, attempt, "TaskExecute", command["nonce"]))
        await bus.close()

    asyncio.run(publish())


def start_runner(server: NatsServer, tmp_path: Path, task: str, pod_uid: str, attempt: int = 1,
                 python_args: tuple[str, ...] = ("-m", "compozy_operator.cli", "task", "run"),
                 **env: str) -> subprocess.Popen[bytes]:
    """The runner as a task pod runs it (its environment as the pod manifest gives it; ``pod_uid``
    "" leaves POD_UID unset, as in a pod manifest without it)."""
    pod = f"{RUN}-{task}-{attempt}"
    variables = {**os.environ, "COMPOZY_NAMESPACE": NS, "COMPOZY_EXECUTION": RUN, "COMPOZY_EXECUTION_UID": UID,
                 "COMPOZY_TASK": task, "COMPOZY_ATTEMPT": str(attempt), "POD_NAME": pod,
                 "COMPOZY_COMMAND_NONCE": nonce_of(task, attempt),
                 "COMPOZY_NATS_URL": server.url, "COMPOZY_NATS_TOKEN": server.token,
                 "COMPOZY_TERMINATION_LOG": str(tmp_path / f"{pod}-{pod_uid}.termination"), **env}
    if pod_uid:
        variables["POD_UID"] = pod_uid
    log = (tmp_path / f"{pod}-{pod_uid}.log").open("wb")
    return subprocess.Popen([sys.executable, *python_args], env=variables,
                            stdout=log, stderr=subprocess.STDOUT)


def state_events(server: NatsServer, bus_url: str | None = None) -> list[Event]:
    async def replay() -> list[Event]:
        bus = await _bus(server, bus_url)
        events = [e for _, e in await bus.replay(f"compozy.state.{NS}.{RUN}.>")]
        await bus.close()
        return events

    return asyncio.run(replay())


def runs_of(file: Path) -> Counter[str]:
    return Counter(file.read_text().splitlines()) if file.exists() else Counter()


def test_an_attempt_is_claimed_once(server: NatsServer) -> None:
    async def scenario() -> tuple[Any, ...]:
        bus = await _bus(server)
        subject = claim_subject(NS, RUN, UID, "a", 1)
        first = await bus.claim(subject, "uid-a", pod="pod-a")
        again = await bus.claim(subject, "uid-a", pod="pod-a")  # a retry whose first ack was lost
        other = await bus.claim(subject, "uid-b", pod="pod-b")
        racers = await asyncio.gather(*(bus.claim(claim_subject(NS, RUN, UID, "b", 1), f"uid-{i}") for i in range(8)))
        next_attempt = await bus.claim(claim_subject(NS, RUN, UID, "a", 2), "uid-b")
        await bus.close()
        return first, again, other, racers, next_attempt

    first, again, other, racers, next_attempt = asyncio.run(scenario())
    assert (first, again) == (None, None)
    assert (other["claimant"], other["pod"]) == ("uid-a", "pod-a")
    winners = [i for i, held in enumerate(racers) if held is None]
    assert len(winners) == 1, racers
    assert {held["claimant"] for held in racers if held is not None} == {f"uid-{winners[0]}"}
    assert next_attempt is None


@pytest.mark.parametrize("first_uid", ["uid-first", ""])
def test_a_second_pod_of_a_claimed_attempt_does_not_run_the_tool(server: NatsServer, tmp_path: Path,
                                                                  first_uid: str) -> None:
    """Also without POD_UID: each runner process is then a claimant of its own."""
    runs = tmp_path / "runs"
    publish_command(server, "a", runs, 0)
    first = start_runner(server, tmp_path, "a", first_uid)
    assert first.wait(60) == 0
    second = start_runner(server, tmp_path, "a", "uid-second")
    assert second.wait(60) == 0
    assert runs_of(runs) == {"a 1": 1}
    failed = [e for e in state_events(server) if e.type == "TaskExecutionFailed"]
    assert len(failed) == 1
    assert failed[0].data["error"]["reason"] == "AttemptAlreadyClaimed"
    holder = first_uid or f"{RUN}-a-1/"
    assert f"already claimed by pod {RUN}-a-1 (uid {holder}" in failed[0].data["error"]["message"]
    assert [e.type for e in state_events(server)].count("TaskExecutionSuccess") == 1


def test_an_attempt_loads_none_of_the_heavy_modules(server: NatsServer, tmp_path: Path) -> None:
    """A whole attempt (command, claim, tool, output, events, logs) through ``compozy task run``'s
    own entry, then what its process had loaded: nothing of the operator's or the client's
    (docs/performance.md: each of these is CPU every task pod would pay at its start)."""
    runs, loaded = tmp_path / "runs", tmp_path / "modules.json"
    publish_command(server, "a", runs, 0)
    entry = ("import atexit, json, sys\n"
             f"atexit.register(lambda: open({str(loaded)!r}, 'w').write(json.dumps(sorted(sys.modules))))\n"
             "from compozy_operator.cli import main\n"
             "sys.exit(main(['task', 'run']))\n")
    runner = start_runner(server, tmp_path, "a", "uid-a", python_args=("-c", entry))
    assert runner.wait(60) == 0, (tmp_path / f"{RUN}-a-1-uid-a.log").read_text()
    assert runs_of(runs) == {"a 1": 1}
    assert [e.type for e in state_events(server)].count("TaskExecutionSuccess") == 1
    modules = set(json.loads(loaded.read_text()))
    assert "nats.aio.client" in modules and "compozy_operator.task_executor" in modules
    heavy = ("aiohttp", "pydantic", "kubernetes", "yaml", "jsonschema", "jinja2", "openai", "anthropic", "kopf",
             "compozy_operator.events", "compozy_operator.resources", "compozy_operator.agents")
    assert sorted(m for m in modules if m.split(".")[0] in heavy or m.startswith(heavy)) == []


def test_attempts_in_flight_ride_out_a_20s_outage(server: NatsServer, tmp_path: Path) -> None:
    """Four attempts run their tools when nats-server stops for 20 s; a fifth pod starts during the
    outage. All five finish once NATS is back, each tool ran once, each event is stored once."""
    runs = tmp_path / "runs"
    tasks = [f"t{i}" for i in range(5)]
    for task in tasks:
        publish_command(server, task, runs, 4)
    runners = {task: start_runner(server, tmp_path, task, f"uid-{task}") for task in tasks[:4]}
    wait_for(lambda: len(runs_of(runs)) == 4, 30, "four tools to run")
    server.stop()
    try:
        runners[tasks[4]] = start_runner(server, tmp_path, tasks[4], f"uid-{tasks[4]}")
        time.sleep(20)
        assert all(r.poll() is None for r in runners.values()), "a runner gave up during the outage"
    finally:
        server.resume()
    resumed = time.monotonic()
    codes = {task: r.wait(60) for task, r in runners.items()}
    print(f"runners finished {time.monotonic() - resumed:.1f}s after NATS came back")
    assert codes == dict.fromkeys(tasks, 0), {t: (tmp_path / f"{RUN}-{t}-1-uid-{t}.log").read_text()
                                              for t, c in codes.items() if c}
    assert runs_of(runs) == {f"{t} 1": 1 for t in tasks}
    counts = Counter((e.task, e.type) for e in state_events(server))
    for task in tasks:
        for etype in ("TaskExecutionStarted", "ToolExecutionStarted", "ToolExecutionSuccess", "TaskExecutionSuccess"):
            assert counts[(task, etype)] == 1, (task, etype, counts)
    outputs = {e.task: e.data["output"] for e in state_events(server) if e.type == "TaskExecutionSuccess"}
    assert outputs == {t: {"task": t, "attempt": 1} for t in tasks}


def test_a_runner_gives_up_after_the_outage_budget(server: NatsServer, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    publish_command(server, "a", runs, 2)
    runner = start_runner(server, tmp_path, "a", "uid-a", COMPOZY_NATS_OUTAGE_SECONDS="3")
    wait_for(lambda: runs_of(runs), 30, "the tool to run")
    server.stop()
    stopped = time.monotonic()
    assert runner.wait(30) == 1
    assert time.monotonic() - stopped < 15
    message = (tmp_path / f"{RUN}-a-1-uid-a.termination").read_text()
    assert "publishing ToolExecutionSuccess: NATS unavailable for 3s" in message, message


def test_a_forged_command_is_refused_and_not_run(server: NatsServer, tmp_path: Path) -> None:
    """A command without the pod's nonce (published by someone else, first) is not run: the attempt
    fails with CommandRefused, saying why."""
    runs = tmp_path / "runs"
    publish_command(server, "a", runs, 0, nonce="guessed", tool={"id": "counted", "python": COUNTED})
    runner = start_runner(server, tmp_path, "a", "uid-a")
    assert runner.wait(60) == 1  # the attempt failed (reported): its pod ends Failed
    assert runs_of(runs) == {}
    failed = [e for e in state_events(server) if e.type == "TaskExecutionFailed"]
    assert [f.data["error"]["reason"] for f in failed] == ["CommandRefused"]
    assert "does not carry the nonce this pod was created with" in failed[0].data["error"]["message"]
    assert not any(e.type == "TaskExecutionStarted" for e in state_events(server))


class PermissionedNats(NatsServer):
    """nats-server whose clients are users with permissions: ``op`` may do anything, each other
    user exactly what ``users`` gives it (the real server enforces it)."""

    def __init__(self, bindir: Path, workdir: Path, users: dict[str, dict[str, list[str]]]) -> None:
        super().__init__(bindir, workdir)
        self.users = users

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        config["authorization"] = {"users": [
            {"user": "op", "password": self.token},
            *({"user": name, "password": self.token,
               "permissions": {"publish": {"allow": p["publish"]}, "subscribe": {"allow": p["subscribe"]}}}
              for name, p in self.users.items())]}
        return config

    def url_of(self, user: str) -> str:
        return f"nats://{user}:{self.token}@127.0.0.1:{self.port}"


BIG = ("def run(input, ctx):\n"
       "    ctx.log.info('writing a large output')\n"
       "    return {'blob': 'x' * 300_000, 'task': ctx.task}\n")


def test_a_runner_needs_only_its_attempts_subjects(devenv: DevEnvironment, tmp_path: Path) -> None:
    """The runner, connected as a user allowed exactly events.attempt_permissions() (of a collection
    child: its key is token-encoded), fetches and checks its command, claims its attempt, reports
    every event and log line, and stores a 300 KB output (3 chunks) that any NATS client reads
    back; the server refuses it everything else."""
    task = "each[3]"
    with PermissionedNats(devenv.bindir, tmp_path / "nats", {"a": attempt_permissions(NS, RUN, UID, task, 1)}) as srv:
        op = srv.url_of("op")

        async def setup() -> None:
            bus = await _bus(srv, op)
            await bus.ensure_streams()
            await bus.close()

        asyncio.run(setup())
        publish_command(srv, task, tmp_path / "runs", 0, bus_url=op, tool={"id": "big", "python": BIG},
                        outputInlineLimit=1024)
        runner = start_runner(srv, tmp_path, task, "uid-a", COMPOZY_NATS_URL=srv.url_of("a"), COMPOZY_NATS_TOKEN="")
        code = runner.wait(60)
        log = next(tmp_path.glob(f"{RUN}-*uid-a.log")).read_text()
        assert code == 0, log
        assert "ermission" not in log, log  # no Permissions Violation on the way
        events = state_events(srv, op)
        assert [e.type for e in events] == ["TaskExecutionStarted", "ToolExecutionStarted", "ToolExecutionSuccess",
                                            "TaskExecutionSuccess"]
        assert all(e.task == task and e.attempt == 1 for e in events)

        async def check() -> tuple[Any, int, list[str]]:
            bus = await _bus(srv, op)
            ref = events[-1].data["outputRef"]
            value = await bus.get_output(ref)
            logs = await bus.js.pull_subscribe(f"compozy.log.{NS}.{RUN}.>", stream="COMPOZY_LOGS")
            lines = [json.loads(m.data)["subject"] for m in await logs.fetch(50, timeout=2)]
            removed = await bus.delete_outputs(f"{NS}/{RUN}/{UID}/")
            await bus.close()
            return value, removed, lines

        value, removed, log_subjects = asyncio.run(check())
        assert value == {"blob": "x" * 300_000, "task": task} and removed == 1
        assert log_subjects and all(s.startswith(f"compozy.log.{NS}.{RUN}.{UID}.task.each_5b3_5d.1.") for s in log_subjects)

        async def attack() -> dict[str, bool]:
            """As the attempt's user: everything else is refused by the server."""
            errors: list[str] = []

            async def on_error(e: Exception) -> None:
                errors.append(str(e))

            import nats  # noqa: PLC0415

            nc = await nats.connect(srv.url_of("a"), error_cb=on_error, inbox_prefix="_INBOX_compozy.ns.run-1.each_5b3_5d.1")
            js = nc.jetstream(timeout=1)
            refused = {}
            for what, subject in (("a workflow event", f"compozy.state.{NS}.{RUN}.workflow.WorkflowExecutionSuccess"),
                                  ("an operator event", f"compozy.state.{NS}.{RUN}.operator.each_5b3_5d.1.TaskExecutionSuccess"),
                                  ("another attempt's", f"compozy.state.{NS}.{RUN}.task.each_5b3_5d.2.TaskExecutionSuccess"),
                                  ("a command", command_subject(NS, RUN, task, 2))):
                try:
                    await js.publish(subject, b"{}")
                    refused[what] = False
                except Exception:  # noqa: BLE001 - a timeout: the server dropped it
                    refused[what] = True
            for what, api in (("another command", f"$JS.API.DIRECT.GET.COMPOZY_COMMANDS.{command_subject(NS, RUN, task, 2)}"),
                              ("stream info", "$JS.API.STREAM.INFO.COMPOZY_STATE"),
                              ("a purge", "$JS.API.STREAM.PURGE.OBJ_COMPOZY_OUTPUTS")):
                try:
                    await nc.request(api, b"", timeout=1)
                    refused[what] = False
                except Exception:  # noqa: BLE001
                    refused[what] = True
            await nc.subscribe("compozy.>")
            await nc.flush()
            await asyncio.sleep(0.3)
            refused["subscribe compozy.>"] = any("compozy.>" in e for e in errors)
            await nc.close()
            return refused

        refused = asyncio.run(attack())
        assert all(refused.values()), refused


def test_outputs_written_twice_are_read_by_any_client_and_removed_whole(server: NatsServer) -> None:
    """put_output (no stream info, lookup or purge) writes what nats-py's object store reads; a
    second write of a key replaces it, and delete_outputs removes both writes' chunks."""
    key = f"{NS}/{RUN}/{UID}/_workflow/output"

    async def scenario() -> tuple[bytes, int, int]:
        bus = await _bus(server)
        await bus.put_output(key, b"first" * 100_000)
        ref = await bus.put_output(key, b"second" * 50_000)
        read = (await (await bus.js.object_store(ref["bucket"])).get(key)).data
        removed = await bus.delete_outputs(f"{NS}/{RUN}/{UID}/")
        left = (await bus.js.stream_info("OBJ_COMPOZY_OUTPUTS")).state.messages
        await bus.close()
        return read, removed, left

    read, removed, left = asyncio.run(scenario())
    assert read == b"second" * 50_000 and removed == 1
    assert left <= 1  # at most the delete marker of the key's metadata
