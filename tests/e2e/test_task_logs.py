"""Logs that outlive pods: every line a task attempt produces is a LogEmitted event in the
COMPOZY_LOGS stream, by execution uid, read here straight from JetStream (api.Service serves the
same stream); the container's own stdout shows the same lines; deleting a run purges its lines,
and only its own (a re-created run of the same name keeps its)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from compozy_operator.events import LOG_STREAM, execution_logs
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl, wait_for

from .conftest import execution_status, wait_finished
from .test_workflows import apply, execution, workflow

PY_NOISY = """
import os, subprocess, sys, warnings
def run(input, ctx):
    ctx.log.info("from ctx.log %d", ctx.attempt)
    print("from print")
    sys.stderr.write("from stderr\\n")
    warnings.warn("from warnings")
    subprocess.run(["sh", "-c", "echo from a subprocess; echo from its stderr >&2"], check=True)
    os.write(1, b"from fd 1 without a newline")
    print()
    print("x" * 40000)  # a long line: cut into pieces, none lost
    return {"ok": True}
"""
COMMAND = ["sh", "-c", "echo cmd stderr line >&2; echo cmd stdout line; echo '{\"ok\": true}'"]
FAILING = ["sh", "-c", "echo why it failed >&2; exit 3"]
PY_WAIT = "import time\ndef run(input, ctx):\n    print('waiting now', flush=True)\n    time.sleep(60)\n    return {}\n"


def stored(devenv: DevEnvironment, subject: str) -> list[dict[str, Any]]:
    """Every LogEmitted stored under ``subject`` (a wildcard), in stream order."""
    async def read() -> list[dict[str, Any]]:
        nc = await nats.connect(devenv.nats.url, token=devenv.nats.token)
        try:
            js = nc.jetstream()
            sub = await js.pull_subscribe(subject, stream=LOG_STREAM, config=ConsumerConfig(
                deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30))
            out: list[dict[str, Any]] = []
            while (pending := (await sub.consumer_info()).num_pending) > 0:
                try:
                    batch = await sub.fetch(min(pending, 256), 5)
                except nats.errors.TimeoutError:  # purged between the count and the fetch: count again
                    continue
                out += [{**json.loads(m.data), "_subject": m.subject} for m in batch]
            await sub.unsubscribe()
            return out
        finally:
            await nc.close()
    return asyncio.run(read())


def _uid(kubectl: Kubectl, namespace: str, name: str) -> str:
    return json.loads(kubectl.ok("get", "wfx", name, "-n", namespace, "-o", "json"))["metadata"]["uid"]


def _lines(devenv: DevEnvironment, namespace: str, name: str, uid: str) -> list[dict[str, Any]]:
    return stored(devenv, execution_logs(namespace, name, uid))


def test_every_line_of_an_attempt_is_a_log_event(operator: OperatorProcess, kubectl: Kubectl, devenv: DevEnvironment,
                                                namespace: str) -> None:
    apply(kubectl, namespace,
          workflow("noisy", [{"id": "py", "tool": "noisy", "with": {}, "onSuccess": {"next": "cmd"}},
                             {"id": "cmd", "tool": "cmd", "with": {}, "onSuccess": {"next": "bad"}},
                             {"id": "bad", "tool": "bad", "with": {}}],
                   tools=[{"id": "noisy", "python": PY_NOISY}, {"id": "cmd", "command": COMMAND},
                          {"id": "bad", "command": FAILING}]),
          execution("noisy-1", "noisy"))
    status = wait_finished(kubectl, namespace, "noisy-1")
    assert status["phase"] == "Failed" and status["tasks"]["cmd"]["phase"] == "Succeeded", status
    assert "why it failed" in status["tasks"]["bad"]["error"]["message"]
    uid = _uid(kubectl, namespace, "noisy-1")
    lines = wait_for(lambda: (got := _lines(devenv, namespace, "noisy-1", uid))
                     and any("why it failed" in m["data"]["message"] for m in got) and got, 10, "the last lines")
    said = {(m["data"].get("task"), m["data"]["component"], m["data"]["message"]) for m in lines}
    for expected in [("py", "runtime", "from ctx.log 1"), ("py", "stdout", "from print"),
                     ("py", "stderr", "from stderr"), ("py", "stdout", "from a subprocess"),
                     ("py", "stderr", "from its stderr"), ("py", "stdout", "from fd 1 without a newline"),
                     ("cmd", "stderr", "cmd stderr line"), ("cmd", "stdout", "cmd stdout line"),
                     ("bad", "stderr", "why it failed")]:
        assert expected in said, (expected, sorted(said))
    assert any(t == "py" and c == "stderr" and "UserWarning: from warnings" in text for t, c, text in said)
    long_pieces = [m["data"]["message"] for m in lines if set(m["data"]["message"]) == {"x"}]
    assert "".join(long_pieces) == "x" * 40000 and len(long_pieces) == 3
    components = {m["data"]["component"] for m in lines}
    assert {"orchestrator", "task-executor", "runtime", "stdout", "stderr"} <= components
    assert not any('{"ok": true}' in text for _, _, text in said)  # the result is not a log line
    for m in lines:
        assert m["data"]["uid"] == uid and m["type"] == "LogEmitted"
        if m["data"]["component"] != "orchestrator":
            assert m["_subject"].startswith(f"compozy.log.{namespace}.noisy-1.{uid}.task.{m['data']['task']}.1.")


def test_the_container_stdout_shows_the_same_lines(operator: OperatorProcess, kubectl: Kubectl,
                                                   devenv: DevEnvironment, namespace: str) -> None:
    apply(kubectl, namespace, workflow("waits", [{"id": "w", "tool": "wait", "with": {}}],
                                       tools=[{"id": "wait", "python": PY_WAIT}]),
          execution("waits-1", "waits"))
    uid = wait_for(lambda: (execution_status(kubectl, namespace, "waits-1").get("tasks", {}).get("w", {})
                            .get("phase") == "Running") and _uid(kubectl, namespace, "waits-1"), 60, "the task to run")
    pod = json.loads(kubectl.ok("get", "pod", "waits-1-w-1", "-n", namespace, "-o", "json"))
    log_file = next(Path(devenv.workdir, "nodes").glob(f"*/pods/{pod['metadata']['uid']}/logs/*.log"))
    shown = wait_for(lambda: "waiting now" in (text := log_file.read_text()) and text, 20, "the line in the pod's log")
    line = next(t for t in shown.splitlines() if t.endswith("waiting now"))
    assert line.split()[1:] == ["stdout", "w[1]", "info", "waiting", "now"]
    assert any(m["data"]["message"] == "waiting now" for m in _lines(devenv, namespace, "waits-1", uid))
    kubectl.ok("patch", "wfx", "waits-1", "-n", namespace, "--type=merge", "-p", '{"spec": {"cancel": true}}')
    assert wait_finished(kubectl, namespace, "waits-1")["phase"] == "Cancelled"


def test_deleting_a_run_purges_its_lines_not_those_of_a_new_run_of_the_same_name(
        operator: OperatorProcess, kubectl: Kubectl, devenv: DevEnvironment, namespace: str) -> None:
    apply(kubectl, namespace, workflow("again", [{"id": "a", "tool": "ok", "with": {"v": 1}}]),
          execution("again-1", "again"))
    assert wait_finished(kubectl, namespace, "again-1")["phase"] == "Succeeded"
    old = _uid(kubectl, namespace, "again-1")
    wait_for(lambda: any(m["data"]["component"] == "runtime" for m in _lines(devenv, namespace, "again-1", old)),
             10, "the first run's lines")
    kubectl.ok("delete", "wfx", "again-1", "-n", namespace, "--wait=true")
    apply(kubectl, namespace, execution("again-1", "again", {"second": True}))  # at once: the purge may come later
    # (how it ends is not this test's business: its attempt 1 may find the deleted run's claim,
    # which is kept by execution name)
    wait_finished(kubectl, namespace, "again-1")
    new = _uid(kubectl, namespace, "again-1")
    assert new != old
    wait_for(lambda: not _lines(devenv, namespace, "again-1", old), 20, "the deleted run's lines to be purged")
    mine = wait_for(lambda: _lines(devenv, namespace, "again-1", new), 10, "the new run's lines")
    assert all(m["data"]["uid"] == new for m in mine)
    assert any(m["data"]["component"] == "task-executor" for m in mine), mine
    # and the new run's lines go when it goes
    kubectl.ok("delete", "wfx", "again-1", "-n", namespace)
    wait_for(lambda: not _lines(devenv, namespace, "again-1", new), 20, "the second run's lines to be purged")
