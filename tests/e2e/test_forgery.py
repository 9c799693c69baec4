"""Forged state events and commands against a victim run, end to end (issue 12): the state manager
believes the subject, not the body; a task pod runs only the command the operator made for it.

The forger here is a raw client with the test NATS's full token (what every task pod had before
per-attempt identities): it can publish anywhere, so what is shown is what the operator and the
runner refuse by themselves, whatever the NATS server lets through."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from pathlib import Path
from typing import Any

import nats

from compozy_operator.events import EventType, Publisher, command_subject, event_id, make_event, state_subject
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl, wait_for

from .conftest import jetstream, wait_finished
from .test_state_faults import rejected
from .test_workflows import apply, execution, workflow

MARKER_TOOL = ("def run(input, ctx):\n"
               "    open(input['marker'], 'w').write('forged code ran')\n"
               "    return {'pwned': True}\n")


def uid_of(kubectl: Kubectl, namespace: str, name: str) -> str:
    return wait_for(lambda: kubectl.ok("get", "wfx", name, "-n", namespace, "-o", "jsonpath={.metadata.uid}"))


def forged_command(namespace: str, name: str, uid: str, task: str, marker: Path) -> dict[str, Any]:
    """A TaskExecute for the victim's attempt 1 of ``task``, naming it right, with a guessed nonce."""
    return {"namespace": namespace, "execution": name, "uid": uid, "task": task, "attempt": 1,
            "nonce": "guessed", "tool": {"id": "ok", "python": MARKER_TOOL}, "input": {"marker": str(marker)}}


def test_an_event_on_a_victims_attempt_subject_with_another_body_changes_nothing(
        operator: OperatorProcess, kubectl: Kubectl, devenv: Any, namespace: str) -> None:
    """What attempt 1 of task ``a`` may publish on, carrying another attempt's, another task's,
    another run's or the operator's events: each is refused (subject_mismatch), the run is untouched."""
    before = rejected(operator)
    apply(kubectl, namespace, workflow("victim", [{"id": "a", "tool": "slow", "with": {"seconds": 3}}],
                                       output={"a": "{{ tasks.a.output }}"}),
          execution("victim-2", "victim"))
    uid = uid_of(kubectl, namespace, "victim-2")
    own = state_subject(namespace, "victim-2", EventType.TASK_SUCCESS, "a", 1, Publisher.ATTEMPT)
    pwned = {"output": {"pwned": True}}
    bodies = [
        make_event(EventType.TASK_SUCCESS, "x", namespace, "victim-2", uid, "a", 2, **pwned),  # another attempt
        make_event(EventType.TASK_SUCCESS, "x", namespace, "victim-2", uid, "b", 1, **pwned),  # another task
        make_event(EventType.TASK_SUCCESS, "x", namespace, "other-run", uid, "a", 1, **pwned),  # another run
        make_event(EventType.TASK_SUCCESS, "x", "other-ns", "victim-2", uid, "a", 1, **pwned),  # another namespace
    ]
    forged = [(own, b.model_dump_json().encode()) for b in bodies]
    # the operator's events, on subjects of the attempt (its identity allows no others)
    base = own.rsplit(".", 1)[0]
    for etype, task, attempt in ((EventType.WORKFLOW_SUCCESS, None, None), (EventType.TASK_DISPATCHED, "a", 2),
                                 (EventType.TASK_RETRY_SCHEDULED, "a", 2)):
        body = make_event(etype, "x", namespace, "victim-2", uid, task, attempt, **pwned).model_dump()
        body["subject"] = f"{base}.{etype.value}"
        forged.append((f"{base}.{etype.value}", json.dumps(body).encode()))

    async def publish(js: Any) -> None:
        for subject, body in forged:  # no Nats-Msg-Id: nothing real is de-duplicated away
            await js.publish(subject, body, stream="COMPOZY_STATE")

    jetstream(devenv, publish)
    status = wait_finished(kubectl, namespace, "victim-2", 60)
    assert status["phase"] == "Succeeded", status
    assert status["output"] == {"a": {"slept": 3}}
    assert set(status["tasks"]) == {"a"} and status["tasks"]["a"]["attempt"] == 1
    assert not status["tasks"]["a"].get("attempts")
    grew = {k: v - before.get(k, 0) for k, v in rejected(operator).items()}
    assert grew.get("subject_mismatch") == len(forged), grew
    log = operator.proc.log_path.read_text()  # type: ignore[union-attr]
    assert log.count(f"rejected the state event on {own}:") == len(bodies)


def test_a_forged_command_published_before_the_operators_is_not_run(
        operator: OperatorProcess, kubectl: Kubectl, devenv: Any, namespace: str, tmp_path: Path) -> None:
    """Stored first, even under the Nats-Msg-Id the operator once used (which made the real command
    a duplicate, dropped): the operator's command replaces it, and the pod runs the real one."""
    marker = tmp_path / "forged-ran"
    apply(kubectl, namespace, workflow("pre", [{"id": "a", "tool": "slow", "with": {"seconds": 2},
                                                "onSuccess": {"next": "b"}},
                                               {"id": "b", "tool": "ok", "with": {"v": 2}}],
                                       output={"b": "{{ tasks.b.output }}"}),
          execution("pre-1", "pre"))
    uid = uid_of(kubectl, namespace, "pre-1")
    body = json.dumps(forged_command(namespace, "pre-1", uid, "b", marker)).encode()
    jetstream(devenv, lambda js: js.publish(command_subject(namespace, "pre-1", "b", 1), body,
                                            stream="COMPOZY_COMMANDS",
                                            headers={"Nats-Msg-Id": event_id(uid, "b", 1, "TaskExecute")}))
    status = wait_finished(kubectl, namespace, "pre-1", 60)
    assert status["phase"] == "Succeeded", status
    assert status["output"] == {"b": {"echo": {"v": 2}}}
    assert not marker.exists()


def test_a_forged_command_the_pod_finds_is_refused(operator: OperatorProcess, kubectl: Kubectl, devenv: Any,
                                                   namespace: str, tmp_path: Path) -> None:
    """Published the moment the operator's command is stored (before the pod even exists), the
    forged command is what the pod finds: it refuses to run it, and the run says why."""
    marker = tmp_path / "forged-ran"
    name = "refused-1"
    subject = command_subject(namespace, name, "a", 1)
    replaced = threading.Event()
    ready = threading.Event()
    stop = threading.Event()

    def forger() -> None:
        async def main() -> None:
            nc = await nats.connect(devenv.nats.url, token=devenv.nats.token)
            js = nc.jetstream()

            async def on_command(msg: Any) -> None:
                if replaced.is_set() or json.loads(msg.data).get("nonce") == "guessed":
                    return
                command = json.loads(msg.data)
                forged = forged_command(namespace, name, command["uid"], "a", marker)
                await js.publish(subject, json.dumps(forged).encode(), stream="COMPOZY_COMMANDS",
                                 headers={"Nats-Msg-Id": uuid.uuid4().hex})
                replaced.set()

            await nc.subscribe(subject, cb=on_command)
            await nc.flush()
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await nc.close()

        asyncio.run(main())

    thread = threading.Thread(target=forger, daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        apply(kubectl, namespace, workflow("refused", [{"id": "a", "tool": "ok", "with": {"v": 1},
                                                        "retry": {"limit": 2}}]),
              execution(name, "refused"))
        status = wait_finished(kubectl, namespace, name, 90)
    finally:
        stop.set()
        thread.join(10)
    assert replaced.is_set()
    assert status["phase"] == "Failed", status
    error = status["tasks"]["a"]["error"]
    assert error["reason"] == "CommandRefused", error  # and not retried: a new attempt would get a new nonce
    assert status["tasks"]["a"]["attempt"] == 1
    assert "does not carry the nonce this pod was created with" in error["message"]
    assert "command was refused" in status["message"], status["message"]
    assert not marker.exists()
