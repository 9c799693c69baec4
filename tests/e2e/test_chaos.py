"""The short chaos run (hack/chaos.py --short) on a local cluster of its own: 20 executions of the
mixed load while the operator is SIGKILLed 3 times, nats-server is stopped for 5 s, the state
consumer is deleted, a running task pod is deleted and malformed, duplicate and out-of-order
events are injected. Every run must end exactly once with its expected result: nothing lost,
stuck or wrong, no tool attempt run twice, every attempt that ran in its run's status, no failed
attempt without an injected cause, no task pod left. Times are printed, never asserted
(`make chaos` is the full run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[2] / "hack" / "chaos.py"


def load_harness():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("compozy_chaos", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(600)
def test_short_chaos_run_loses_duplicates_and_strands_nothing(tmp_path: Path) -> None:
    chaos = load_harness()
    report = chaos.run(chaos.SHORT, tmp_path / "chaos")
    print(report.text)
    assert report.executions >= chaos.SHORT.executions
    assert report.faults.get("operator-kill") == chaos.SHORT.kills and report.faults.get("nats-outage") == 1
    assert report.failures() == {}, report.text


# ---- the harness's own judgement, without a cluster: it must be able to say no ----------------


def _run(chaos, kind: str, n: int, status: dict):  # type: ignore[no-untyped-def]
    return chaos.Run(f"{kind}-{n:03d}", kind, n, 0.0, status=status)


def test_the_checks_refuse_wrong_phases_outputs_and_failures() -> None:
    chaos = load_harness()
    phase, output = chaos.expected("par", 5)
    assert chaos.check_result(_run(chaos, "par", 5, {"phase": phase, "output": output}), []) is None
    wrong = {"phase": "Succeeded", "output": {**output, "join": 0}}
    assert "output" in chaos.check_result(_run(chaos, "par", 5, wrong), [])
    assert "phase Failed" in chaos.check_result(_run(chaos, "seq", 1, {"phase": "Failed", "message": "x"}), [])

    timed_out = {"phase": "Failed", "error": {"task": "wait", "reason": "Timeout"},
                 "tasks": {"wait": {"phase": "Failed", "attempt": 2, "podName": "deadline-001-wait-2",
                                    "error": {"reason": "Timeout", "message": "exceeded"}}}}
    assert chaos.check_result(_run(chaos, "deadline", 1, timed_out), []) is None
    deleted = {**timed_out, "error": {"task": "wait", "reason": "PodDeleted"},
               "tasks": {"wait": {**timed_out["tasks"]["wait"], "error": {"reason": "PodDeleted"}}}}
    assert "expected Timeout" in chaos.check_result(_run(chaos, "deadline", 1, deleted), [])
    fault = chaos.Fault("pod-delete", start=1.0, end=2.0, pods=["deadline-001-wait-2"])
    assert chaos.check_result(_run(chaos, "deadline", 1, deleted), [fault]) is None

    # a task that ran again after its successor had started: right output, wrong run
    seq = {"phase": "Succeeded", "output": {"v": 4},
           "tasks": {"a": {"phase": "Succeeded", "attempt": 2, "finishedAt": "2026-01-01T00:00:11Z"},
                     "b": {"phase": "Succeeded", "startedAt": "2026-01-01T00:00:08Z", "finishedAt": "2026-01-01T00:00:09Z"},
                     "c": {"phase": "Succeeded", "startedAt": "2026-01-01T00:00:12Z"}}}
    assert "a ran again" in chaos.check_result(_run(chaos, "seq", 1, seq), [])
    seq["tasks"]["a"]["finishedAt"] = "2026-01-01T00:00:07Z"
    assert chaos.check_result(_run(chaos, "seq", 1, seq), []) is None
    # a task whose success was folded after the run's end, and left Cancelled
    seq["tasks"]["b"]["phase"] = "Cancelled"
    assert "b Cancelled" in chaos.check_result(_run(chaos, "seq", 1, seq), [])

    def rec(task: str, attempt: int, reason: str, message: str = "", pod: str | None = None) -> dict:
        return {"task": task, "attempt": attempt, "podName": pod, "error": {"reason": reason, "message": message},
                "startedAt": "2026-01-01T00:00:10Z", "finishedAt": "2026-01-01T00:00:20Z"}

    assert chaos.classify(rec("flaky", 1, "ToolError", "RuntimeError: planned failure of attempt 1"), []) == "designed"
    assert chaos.classify(rec("flaky", 2, "ToolError", "RuntimeError: planned failure of attempt 1"), []) == "unexplained"
    assert chaos.classify(rec("slowfirst", 1, "Timeout"), []) == "designed"
    assert chaos.classify(rec("slowfirst", 2, "Timeout"), []) == "unexplained"
    t0 = chaos._ts("2026-01-01T00:00:00Z")
    outage = chaos.Fault("nats-outage", "20s", start=t0 + 12, end=t0 + 32)
    assert chaos.classify(rec("slowfirst", 2, "Timeout"), [outage]) == "nats-outage"
    assert chaos.classify(rec("a", 1, "Error", "ConnectionResetError"), [outage]) == "unexplained"
    injected = chaos.Fault("inject-malformed", start=t0 + 12, end=t0 + 12)
    assert chaos.classify(rec("slowfirst", 2, "Timeout"), [injected]) == "unexplained"
    node = chaos.Fault("node-restart", start=t0 + 15, end=t0 + 25, pods=["seq-001-a-1"])
    assert chaos.classify(rec("a", 1, "ContainerLost", pod="seq-001-a-1"), [node]) == "node-restart"
    assert chaos.classify(rec("a", 1, "ContainerLost", pod="seq-001-b-1"), [node]) == "unexplained"
    # the STATE stream went while the attempt ran: its status has no start, the pod's first sight tells
    gone = chaos.Fault("stream-delete", "COMPOZY_STATE", start=t0 + 15, end=t0 + 15)
    late = {**rec("c", 1, "AttemptAlreadyClaimed", pod="seq-001-c-1"), "startedAt": None,
            "finishedAt": "2026-01-01T00:03:00Z"}
    assert chaos.classify(late, [gone]) == "unexplained"
    assert chaos.classify(late, [gone], {"seq-001-c-1": t0 + 14}) == "stream-delete"


def test_tool_runs_count_each_attempt_once(tmp_path: Path) -> None:
    chaos = load_harness()
    log = tmp_path / "runs.log"
    log.write_text("seq-001 a 1 1764633600.125\nseq-001 b 1 1764633601.5\ncoll-002 each[0] 1 1764633602.0\n"
                   "seq-001 a 1 1764633609.75\n")
    runs = chaos.tool_runs(log)
    assert runs[("seq-001", "a", 1)] == 2 and runs[("coll-002", "each[0]", 1)] == 1
    assert chaos.tool_run_times(log)[("seq-001", "a", 1)] == [1764633600.125, 1764633609.75]
