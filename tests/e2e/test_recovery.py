"""Runs that used to hang forever now end: lost pods, lost streams, values too large or too deep,
durations out of range. Each test names the defect of issue 10 it covers."""

from __future__ import annotations

import json
from collections import Counter
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from compozy_operator.executor import epoch
from compozy_operator.kube import Kube
from compozy_operator.orchestrator.pod_watch import STOP_GRACE
from compozy_operator.pods import ANNOTATION_TASK, LABEL_ATTEMPT, LABEL_EXECUTION, LABEL_MANAGED, LABEL_TASK, MANAGER
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.admission import unchecked  # past the webhook: what the run does with it
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl, pid_of, wait_for

from .conftest import OPERATOR_ENV, execution_status, instead_of, jetstream, wait_finished
from .test_failpoints import DIR, TOOLS, tool_runs
from .test_workflows import apply, execution, workflow

ECHO = [{"id": "echo", "python": "def run(input, ctx):\n    return input\n"}]
BIG = [{"id": "big", "python": "def run(input, ctx):\n    return {'blob': 'x' * 1_200_000}\n"}]


@pytest.fixture
def own_operator(operator: OperatorProcess, devenv: DevEnvironment, tmp_path: Path) -> Iterator[OperatorProcess]:
    """An operator this test may stop and start (the session's is stopped meanwhile)."""
    with instead_of(operator, devenv, tmp_path / "operator.log") as op:
        yield op


def create(kubectl: Kubectl, namespace: str, *docs: dict) -> None:
    """``kubectl create`` (apply would copy a large object into an annotation of 256 KiB at most)."""
    kubectl.ok("create", "-n", namespace, "-f", "-", stdin="\n---\n".join(json.dumps(d) for d in docs))


def test_a_workflow_output_too_large_for_nats_is_stored_not_stuck(operator: OperatorProcess, kubectl: Kubectl,
                                                                    namespace: str) -> None:
    """Defect 2: a 1.2 MB workflow output gave MaxPayloadError once and a run that never ended."""
    apply(kubectl, namespace, workflow("huge-out", [{"id": "make", "tool": "big"}], tools=BIG,
                                       output={"copy": "{{ tasks.make.output.blob }}"}),
          execution("huge-out-1", "huge-out"))
    status = wait_finished(kubectl, namespace, "huge-out-1", 60)
    assert status["phase"] == "Succeeded", status.get("message")
    assert "output" not in status and status["outputRef"]["size"] > 1_200_000


def test_a_large_input_runs_and_only_its_snapshot_is_stored_apart(operator: OperatorProcess, kubectl: Kubectl,
                                                                   namespace: str) -> None:
    """Defect 4: a 1.3 MB input left the execution blank forever (MaxPayloadError at start). The webhook
    refuses inputs above COMPOZY_MAX_INPUT_BYTES (1 MiB) at apply; one stored past it (the webhook
    off) still runs."""
    create(kubectl, namespace, *unchecked(
        workflow("big-in", [{"id": "a", "tool": "echo", "with": {"n": "{{ workflow.input.n }}"}}],
                 tools=ECHO, output={"n": "{{ tasks.a.output.n }}"}),
        execution("big-in-1", "big-in", {"n": 7, "pad": "y" * 1_300_000})))
    status = wait_finished(kubectl, namespace, "big-in-1", 60)
    assert status["phase"] == "Succeeded" and status["output"] == {"n": 7}, status.get("message")
    assert status["snapshot"]["inputRef"]["size"] > 1_300_000 and "input" not in status["snapshot"]


def test_an_input_too_large_to_send_to_a_task_fails_that_task(operator: OperatorProcess, kubectl: Kubectl,
                                                               namespace: str) -> None:
    create(kubectl, namespace, *unchecked(
        workflow("big-with", [{"id": "a", "tool": "echo", "with": {"all": "{{ workflow.input }}"},
                              "retry": {"limit": 3}}], tools=ECHO),
        execution("big-with-1", "big-with", {"pad": "y" * 1_300_000})))  # stored past the webhook
    status = wait_finished(kubectl, namespace, "big-with-1", 60)
    assert status["phase"] == "Failed"
    a = status["tasks"]["a"]
    assert a["error"]["reason"] == "InputTooLarge" and a["attempt"] == 1  # not retried: it would never fit
    assert "rendered input is too large" in a["error"]["message"]


@pytest.mark.parametrize("depth", [400, 900])
def test_deep_input_fails_the_run_naming_the_field(depth: int, operator: OperatorProcess, kubectl: Kubectl,
                                                   namespace: str) -> None:
    """Defect 4: input nested 400 deep (serialization) or 900 deep (RecursionError) left a blank run."""
    deep: object = 1
    for _ in range(depth):
        deep = [deep]
    apply(kubectl, namespace, *unchecked(workflow("deep", [{"id": "a", "tool": "echo"}], tools=ECHO),
                                         execution("deep-1", "deep", {"v": deep})))
    status = wait_finished(kubectl, namespace, "deep-1", 30)
    assert status["phase"] == "Failed" and status["error"]["reason"] == "InvalidSpec"
    assert status["message"] == f"spec.input: nested {depth + 1} levels deep; at most 64 are allowed"


@pytest.mark.parametrize("depth", [1500, 9000])
def test_the_operator_survives_any_depth_the_api_server_stores(depth: int, operator: OperatorProcess,
                                                                kubectl: Kubectl, namespace: str) -> None:
    """Issue 11.1: an object nested past Python's recursion limit (stored with the webhook off or
    bypassed) crash-looped the operator's watch. Now the run fails naming the field; the operator
    keeps serving (a canary run after it succeeds)."""
    apply(kubectl, namespace, workflow("deep", [{"id": "a", "tool": "echo"}], tools=ECHO))
    # written by hand: json.dumps itself recurses and fails at this depth
    doc = json.dumps(unchecked(execution("deep-1", "deep", {"v": "DEEP"}))[0]).replace(
        '"DEEP"', "[" * (depth - 1) + "1" + "]" * (depth - 1))
    out = kubectl("create", "-n", namespace, "-f", "-", stdin=doc)
    assert out.returncode == 0, out.stderr
    status = wait_for(lambda: json.loads(kubectl("get", "wfx", "deep-1", "-n", namespace, "-o",
                                                 "jsonpath={.status}").stdout or "{}").get("phase") == "Failed"
                      and json.loads(kubectl("get", "wfx", "deep-1", "-n", namespace, "-o",
                                             "jsonpath={.status}").stdout), 60, "the deep run to fail")
    assert status["message"] == f"spec.input: nested {depth} levels deep; at most 64 are allowed"
    apply(kubectl, namespace, execution("canary-1", "deep", {"v": 1}))
    assert wait_finished(kubectl, namespace, "canary-1", 60)["phase"] == "Succeeded"
    assert operator.readyz()[0] == 200


@pytest.mark.parametrize("field,value,problem", [
    ("retry", {"limit": 1, "backoff": {"max": "999999999h"}}, "999999999h is longer than the limit of 8784h"),
    ("timeout", "0s", "must be greater than zero"),
])
def test_durations_out_of_range_fail_the_run_at_start(field: str, value: object, problem: str,
                                                      operator: OperatorProcess, kubectl: Kubectl,
                                                      namespace: str) -> None:
    """Defect 9: a schema-valid 999999999h back-off raised 'year out of range' forever; 0s never fired."""
    apply(kubectl, namespace, *unchecked(workflow("dur", [{"id": "a", "tool": "echo", field: value}], tools=ECHO),
                                         execution("dur-1", "dur")))
    status = wait_finished(kubectl, namespace, "dur-1", 30)
    assert status["phase"] == "Failed" and problem in status["message"], status["message"]
    assert "tasks[0]" in status["message"]


def test_a_run_survives_the_loss_of_its_state_stream(own_operator: OperatorProcess, devenv: DevEnvironment,
                                                     kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    """Defect 5: with its WorkflowExecutionStarted gone from the stream, a run stayed Running forever
    after a restart. Its snapshot now lives in its status."""
    apply(kubectl, namespace,
          workflow("lasting", [{"id": "a", "tool": "counted", "with": {"dir": DIR, "v": 1, "sleep": 4},
                                "onSuccess": {"next": "b"}},
                               {"id": "b", "tool": "counted", "with": {"dir": DIR, "v": "{{ tasks.a.output.v }}"}}],
                   tools=TOOLS, output={"b": "{{ tasks.b.output.v }}"}),
          execution("lasting-1", "lasting", {"dir": str(tmp_path)}))
    # a runs 4 s: its result is published after the stream is back (a result stored in the deleted
    # stream is the next test's case)
    wait_for(lambda: execution_status(kubectl, namespace, "lasting-1").get("snapshot"), 30, "the run to start")
    own_operator.stop()
    jetstream(devenv, lambda js: js.delete_stream("COMPOZY_STATE"))
    own_operator.start()
    status = wait_finished(kubectl, namespace, "lasting-1", 60)
    assert status["phase"] == "Succeeded" and status["output"] == {"b": 1}, status
    assert set(tool_runs(tmp_path, "lasting-1").values()) == {1}


def test_a_pod_deleted_while_the_operator_is_down_is_found_lost(own_operator: OperatorProcess, kubectl: Kubectl,
                                                                kube: Kube, namespace: str, tmp_path: Path) -> None:
    """A running attempt whose pod vanished while no operator watched: its DELETED event is never
    seen, so the restarted operator notices the missing pod, fails the attempt, and retries it."""
    apply(kubectl, namespace,
          workflow("orphaned", [{"id": "a", "tool": "counted", "with": {"dir": DIR, "sleep": 300},
                                 "retry": {"limit": 1}}], tools=TOOLS, output={"a": "{{ tasks.a.output.attempt }}"}),
          execution("orphaned-1", "orphaned", {"dir": str(tmp_path)}))
    wait_for(lambda: execution_status(kubectl, namespace, "orphaned-1").get("tasks", {}).get("a", {}).get("phase")
             == "Running", 30, "the attempt to run")
    own_operator.kill()
    os.kill(pid_of(kube.get(f"/api/v1/namespaces/{namespace}/pods/orphaned-1-a-1")), signal.SIGKILL)  # no report
    kubectl.ok("delete", "pod", "orphaned-1-a-1", "-n", namespace, "--grace-period=0", "--force")
    own_operator.start()
    status = wait_finished(kubectl, namespace, "orphaned-1", 60)
    assert status["phase"] == "Succeeded" and status["output"] == {"a": 2}, json.dumps(status, indent=1)
    first = status["tasks"]["a"]["attempts"][0]["error"]
    assert first["reason"] == "PodLost" and "no longer exists" in first["message"], first
    wait_for(lambda: not kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"], 30, "the pods to be removed")


def test_a_result_lost_with_the_stream_fails_the_attempt_instead_of_hanging(
        operator: OperatorProcess, devenv: DevEnvironment, kubectl: Kubectl, kube: Kube, namespace: str,
        tmp_path: Path) -> None:
    """The operator dies right after creating a's pod; the pod runs and stores its result; then the
    state stream is deleted with that result unread. The pod exited 0 but no result will ever come:
    after a grace period the attempt fails ResultLost, and its retry runs."""
    operator.stop()
    armed = OperatorProcess(devenv, extra_env={**OPERATOR_ENV, "COMPOZY_FAILPOINTS": "kube.create.pods:after"},
                            log_path=tmp_path / "armed.log")
    clean = OperatorProcess(devenv, extra_env=OPERATOR_ENV, log_path=tmp_path / "clean.log")
    try:
        armed.start()
        apply(kubectl, namespace,
              workflow("forgotten", [{"id": "a", "tool": "counted", "with": {"dir": DIR, "v": 5},
                                      "retry": {"limit": 1}}], tools=TOOLS, output={"a": "{{ tasks.a.output.attempt }}"}),
              execution("forgotten-1", "forgotten", {"dir": str(tmp_path)}))
        wait_for(lambda: not armed.proc.alive(), 30, "the operator to crash after the pod create")  # type: ignore[union-attr]
        wait_for(lambda: [p for p in kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"]
                          if p["status"].get("phase") == "Succeeded"], 30, "a's pod to succeed")
        jetstream(devenv, lambda js: js.delete_stream("COMPOZY_STATE"))
        clean.start()
        status = wait_finished(kubectl, namespace, "forgotten-1", 90)
    finally:
        armed.stop()
        clean.stop()
        operator.start()
    assert status["phase"] == "Succeeded" and status["output"] == {"a": 2}, json.dumps(status, indent=1)
    lost = status["tasks"]["a"]["attempts"][0]["error"]
    assert lost["reason"] == "ResultLost" and "exited successfully" in lost["message"]
    assert tool_runs(tmp_path, "forgotten-1") == Counter({("a", 1): 1, ("a", 2): 1})


def test_a_pod_still_going_after_its_run_ended_is_stopped_by_the_next_operator(
        operator: OperatorProcess, devenv: DevEnvironment, kubectl: Kubectl, kube: Kube, namespace: str,
        tmp_path: Path) -> None:
    """The chaos run's leftover: a replaced attempt's pod whose stop was lost (a NATS outage) and whose
    stop timer died with the operator, still running after its run ended. Made here as a pod of the
    ended run that just sleeps (the process node runs it), while no operator runs: the next operator
    stops it, the run having ended more than STOP_GRACE ago."""
    apply(kubectl, namespace, workflow("over", [{"id": "a", "tool": "counted", "with": {"dir": "/tmp"}}],
                                       tools=TOOLS), execution("over-1", "over"))
    assert wait_finished(kubectl, namespace, "over-1")["phase"] == "Succeeded"
    run = kube.get(f"/apis/compozy.dev/v1alpha1/namespaces/{namespace}/workflowexecutions/over-1")["metadata"]
    name = "over-1-a-7"
    with instead_of(operator, devenv, tmp_path / "operator.log") as op:
        op.kill()
        labels = {LABEL_MANAGED: MANAGER, "app.kubernetes.io/component": "task", LABEL_TASK: "a",
                  LABEL_ATTEMPT: "7", LABEL_EXECUTION: "over-1"}
        kube.create(f"/api/v1/namespaces/{namespace}/pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels, "annotations": {ANNOTATION_TASK: "a"},
                         "ownerReferences": [{"apiVersion": "compozy.dev/v1alpha1", "kind": "WorkflowExecution",
                                              "name": "over-1", "uid": run["uid"], "controller": True}]},
            "spec": {"containers": [{"name": "task", "image": "compozy/compozy-operator:parked",
                                     "command": ["python3", "-c", "import time; time.sleep(300)"]}]}})

        def phase() -> str | None:
            pods = kube.get(f"/api/v1/namespaces/{namespace}/pods", fieldSelector=f"metadata.name={name}")["items"]
            if not pods:
                return "Gone"
            return "Stopping" if pods[0]["metadata"].get("deletionTimestamp") else pods[0]["status"].get("phase")

        assert wait_for(lambda: phase() == "Running", 60, "the pod to run"), phase()
        time.sleep(max(0.0, epoch(execution_status(kubectl, namespace, "over-1")["finishedAt"]) + STOP_GRACE
                       - time.time()))
        op.start()
        wait_for(lambda: phase() in ("Stopping", "Gone"), 30, "the pod of the ended run to be stopped")
