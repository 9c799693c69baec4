"""The state manager under faults, end to end: malformed and forged events, a deleted consumer or
stream, and a kill -9 while events are fetched but not acknowledged."""

from __future__ import annotations

import json
import re
import time
from typing import Any

from nats.js import JetStreamContext

from compozy_operator.events import EventType, make_event
from compozy_operator.state_manager import DURABLE
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl, wait_for

from .conftest import jetstream, wait_finished
from .test_workflows import apply, execution, workflow

STREAM = "COMPOZY_STATE"


def rejected(operator: OperatorProcess) -> dict[str, float]:
    return {m[0]: float(m[1]) for m in re.findall(r'^compozy_state_events_rejected_total\{reason="(\w+)"\} (\S+)$',
                                                  operator.metrics(), re.M)}


def not_ready_then_ready(operator: OperatorProcess, timeout: float = 30) -> list[str]:
    """Poll /readyz until it has answered 503 and then 200 again; return the 503 reasons seen."""
    reasons: list[str] = []

    def recovered() -> bool:
        code, text = operator.readyz()
        if code == 503 and text not in reasons:
            reasons.append(text)
        return bool(reasons) and code == 200

    wait_for(recovered, timeout, "/readyz to go 503 and back to 200", interval=0.05)
    return reasons


def run_to_success(kubectl: Kubectl, namespace: str, name: str, tasks: list[dict[str, Any]] | None = None) -> dict:
    apply(kubectl, namespace, workflow(name, tasks or [{"id": "a", "tool": "ok", "with": {"v": 1}}]),
          execution(f"{name}-1", name))
    status = wait_finished(kubectl, namespace, f"{name}-1", 60)
    assert status["phase"] == "Succeeded", status
    return status


def test_malformed_and_forged_events_stop_nothing(operator: OperatorProcess, kubectl: Kubectl, devenv,
                                                  namespace: str) -> None:
    before = rejected(operator)
    apply(kubectl, namespace,
          workflow("victim", [{"id": "a", "tool": "slow", "with": {"seconds": 3}}]), execution("victim-1", "victim"))
    uid = wait_for(lambda: kubectl.ok("get", "wfx", "victim-1", "-n", namespace, "-o", "jsonpath={.metadata.uid}"))
    empty = {**make_event(EventType.TASK_STARTED, "x", namespace, "victim-1", uid, "a", 1).model_dump(), "data": {}}
    attempt = make_event(EventType.TASK_DISPATCHED, "x", namespace, "victim-1", uid, "a", 1).model_dump()
    attempt["data"]["attempt"] = "one"
    # A run's end, for victim-1, published on another execution's subject (what its pods may publish on).
    forged = make_event(EventType.WORKFLOW_FAILED, "x", namespace, "victim-1", uid, error={"reason": "Forged"})
    forged_subject = f"compozy.state.{namespace}.forger-1.workflow.WorkflowExecutionFailed"
    bad = [(empty["subject"], json.dumps(empty).encode()), (attempt["subject"], json.dumps(attempt).encode()),
           (forged_subject, forged.model_dump_json().encode()),
           (f"compozy.state.{namespace}.victim-1.task.a.1.Garbage", b"\xff\x00 not json")]

    async def publish(js: JetStreamContext) -> None:
        for subject, body in bad:
            await js.publish(subject, body, stream=STREAM)

    jetstream(devenv, publish)
    status = wait_finished(kubectl, namespace, "victim-1", 60)
    assert status["phase"] == "Succeeded", status  # the forged failure was not folded
    run_to_success(kubectl, namespace, "after")  # nor did anything stop the state manager

    grew = {k: v - before.get(k, 0) for k, v in rejected(operator).items()}
    assert (grew.get("invalid"), grew.get("subject_mismatch"), grew.get("unparseable")) == (2, 1, 1), grew
    assert operator.readyz() == (200, "ready")
    log = operator.proc.log_path.read_text()  # type: ignore[union-attr]
    for subject, _ in bad:  # terminated, so logged once, not once per redelivery
        assert log.count(f"rejected the state event on {subject}:") == 1, subject


def test_a_deleted_consumer_is_recreated_without_a_restart(operator: OperatorProcess, kubectl: Kubectl, devenv,
                                                           namespace: str) -> None:
    jetstream(devenv, lambda js: js.delete_consumer(STREAM, DURABLE))
    reasons = not_ready_then_ready(operator)
    assert any(DURABLE in r or "state manager" in r for r in reasons), reasons
    run_to_success(kubectl, namespace, "after-consumer")
    info = jetstream(devenv, lambda js: js.consumer_info(STREAM, DURABLE))
    assert info.config.ack_wait <= 10


def test_a_deleted_state_stream_is_recreated_and_runs_complete(operator: OperatorProcess, kubectl: Kubectl, devenv,
                                                               namespace: str) -> None:
    jetstream(devenv, lambda js: js.delete_stream(STREAM))
    reasons = not_ready_then_ready(operator)
    assert any(STREAM in r for r in reasons), reasons
    run_to_success(kubectl, namespace, "after-stream",
                   [{"id": "a", "tool": "ok", "with": {"v": 1}, "onSuccess": {"next": "b"}},
                    {"id": "b", "tool": "ok", "with": {"v": 2}}])
    info = jetstream(devenv, lambda js: js.stream_info(STREAM))
    assert info.state.last_seq > 0


def test_status_catches_up_within_seconds_after_a_kill(operator: OperatorProcess, kubectl: Kubectl, devenv,
                                                       namespace: str) -> None:
    async def position(js: JetStreamContext) -> tuple[int, int, int]:
        """(last stream sequence, consumer ack floor, events delivered but not acked)"""
        info = await js.consumer_info(STREAM, DURABLE)
        return (await js.stream_info(STREAM)).state.last_seq, info.ack_floor.stream_seq, info.num_ack_pending

    assert jetstream(devenv, lambda js: js.consumer_info(STREAM, DURABLE)).config.ack_wait <= 10
    apply(kubectl, namespace, workflow("lag", [{"id": "a", "tool": "slow", "with": {"seconds": 4}}]),
          execution("lag-1", "lag"))
    # Progress events wait a moment for company before their PATCH: fetched, not acked yet.
    wait_for(lambda: jetstream(devenv, position)[2] > 0, 30, "events fetched and not acknowledged", interval=0.02)
    operator.kill()
    killed = time.monotonic()
    last_seq = jetstream(devenv, position)[0]
    operator.start()
    restarted = time.monotonic() - killed
    wait_for(lambda: jetstream(devenv, position)[1] >= last_seq, 60, "the events fetched before the kill to be acked",
             interval=0.1)
    lag = time.monotonic() - killed
    print(f"\nstatus lag after kill -9: {lag:.1f}s (operator ready again after {restarted:.1f}s)")
    assert lag < 30
    assert wait_finished(kubectl, namespace, "lag-1", 60)["phase"] == "Succeeded"
