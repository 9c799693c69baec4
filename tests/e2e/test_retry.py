"""Retry (``spec.retry``, ``argo retry``) and resubmit of ended runs, and the workflow label, on the
local cluster with the real operator.

The tool fails (or hangs) while a flag file exists, so a test ends a run the way it wants and then
lets the retry succeed; every tool run writes a line, so what ran again is counted by the tools
themselves, and a pod watch records every pod ever created.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from compozy_operator.execution_requests import (LABEL_CREATED, LABEL_RESUBMITTED_FROM, LABEL_WORKFLOW, created_value,
                                                 resubmission, retry_patch)
from compozy_operator.executor import epoch
from compozy_operator.kube import Kube
from compozy_operator.resources.models import GROUP, VERSION
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl, wait_for

from .conftest import execution_status, wait_finished
from .test_failpoints import tool_runs
from .test_workflows import Recorder, _pods_ever_created, apply, execution, workflow

FLAKY = ("import os, time\n"
         "def run(input, ctx):\n"
         "    with open(os.path.join(input['dir'], 'runs.log'), 'a') as f:\n"
         "        f.write(f'{ctx.execution} {ctx.task} {ctx.attempt}\\n')\n"
         "    flag = os.path.join(input['dir'], 'fail-' + str(input.get('key', ctx.task)))\n"
         "    if os.path.exists(flag):\n"
         "        time.sleep(300 if input.get('hang') else 0)\n"
         "        raise RuntimeError('fails while ' + os.path.basename(flag) + ' exists')\n"
         "    return {'task': ctx.task, 'attempt': ctx.attempt, 'v': input.get('v')}\n")
TOOLS = [{"id": "flaky", "python": FLAKY}]
DIR = "{{ workflow.input.dir }}"
LINE = [
    {"id": "a", "tool": "flaky", "with": {"dir": DIR, "v": 1}, "onSuccess": {"next": "b"}},
    {"id": "b", "tool": "flaky", "with": {"dir": DIR, "v": "{{ tasks.a.output.v + 1 }}"}, "retry": {"limit": 1},
     "onSuccess": {"next": "c"}},
    {"id": "c", "tool": "flaky", "with": {"dir": DIR, "v": "{{ tasks.b.output.v + 1 }}"}},
]
LINE_OUTPUT = {"b": "{{ tasks.b.output.attempt }}", "c": "{{ tasks.c.output.v }}"}
ENDS = ("WorkflowExecutionSuccess", "WorkflowExecutionFailed", "WorkflowExecutionTimedOut", "WorkflowExecutionCancelled")


def path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/workflowexecutions/{name}"


def retry(kube: Kube, namespace: str, name: str) -> None:
    """What ``compozy retry`` and api.Service send: execution_requests.retry_patch of the current object."""
    kube.merge_patch(path(namespace, name), retry_patch(kube.get(path(namespace, name))))


def round_end(kubectl: Kubectl, namespace: str, name: str, r: int = 1) -> dict[str, Any]:
    """The status once retry round ``r`` has ended."""
    last: dict[str, Any] = {}

    def ended() -> bool:
        last.clear()
        last.update(execution_status(kubectl, namespace, name))
        return last.get("retries") == r and last.get("phase") in ("Succeeded", "Failed", "TimedOut", "Cancelled")

    try:
        wait_for(ended, 90, f"retry {r} of {name} to end")
    except AssertionError:
        raise AssertionError(json.dumps(last, indent=1)) from None
    return last


def ends(rec: Recorder, name: str) -> set[tuple[int, str]]:
    """(round, type) of every end event published for ``name``: one per round means it ended once."""
    return {(m["data"].get("round", 0), m["type"]) for m in rec.of(name) if m["type"] in ENDS}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "runs"
    d.mkdir()
    return d


@pytest.fixture
def pods_seen(kube: Kube, namespace: str) -> Iterator[dict[str, set[str]]]:
    """Pod name -> uids of every pod created in the namespace while the test runs."""
    seen: dict[str, set[str]] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_pods_ever_created, args=(kube, namespace, stop, seen), daemon=True)
    watcher.start()
    yield seen
    stop.set()
    watcher.join(10)


def test_a_failed_run_continues_from_its_failed_task(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                     namespace: str, devenv: Any, workdir: Path,
                                                     pods_seen: dict[str, set[str]]) -> None:
    """a succeeds, b fails twice (its retry limit): the run fails. Retried: a is not run again (no
    pod), b runs its attempt 3 (its earlier attempts in the history), then c; the run succeeds with
    the right output, each round ending once. kubectl apply without labels: the operator adds the
    workflow's."""
    (workdir / "fail-b").touch()
    with Recorder(devenv.nats.url, devenv.nats.token) as rec:
        apply(kubectl, namespace, workflow("line", LINE, tools=TOOLS, output=LINE_OUTPUT),
              execution("line-1", "line", {"dir": str(workdir)}))
        failed = wait_finished(kubectl, namespace, "line-1", 90)
        assert failed["phase"] == "Failed" and failed["error"]["task"] == "b", json.dumps(failed, indent=1)
        (workdir / "fail-b").unlink()
        retry(kube, namespace, "line-1")
        status = round_end(kubectl, namespace, "line-1")
        wait_for(lambda: len(ends(rec, "line-1")) >= 2, 10, "the end events")
    assert status["phase"] == "Succeeded" and status["output"] == {"b": 3, "c": 3}, json.dumps(status, indent=1)
    b = status["tasks"]["b"]
    assert (b["attempt"], b["priorAttempts"]) == (3, 2)
    assert [(r["attempt"], r["phase"]) for r in b["attempts"]] == [(1, "Failed"), (2, "Failed")]
    assert status["tasks"]["a"]["attempt"] == 1 and status["progress"] == "3/3"
    assert tool_runs(workdir, "line-1") == Counter({("a", 1): 1, ("b", 1): 1, ("b", 2): 1, ("b", 3): 1, ("c", 1): 1})
    assert sorted(pods_seen) == ["line-1-a-1", "line-1-b-1", "line-1-b-2", "line-1-b-3", "line-1-c-1"]
    assert all(len(uids) == 1 for uids in pods_seen.values()), pods_seen
    assert ends(rec, "line-1") == {(0, "WorkflowExecutionFailed"), (1, "WorkflowExecutionSuccess")}
    obj = kube.get(path(namespace, "line-1"))
    assert obj["metadata"]["labels"][LABEL_WORKFLOW] == "line" and obj["spec"]["retry"] == 1
    assert kubectl.ok("get", "wfx", "-n", namespace, "-l", f"{LABEL_WORKFLOW}=line", "-o", "name").split() == [
        "workflowexecution.compozy.dev/line-1"]


def test_a_retry_in_a_collection_runs_only_its_failed_children(operator: OperatorProcess, kubectl: Kubectl,
                                                               kube: Kube, namespace: str, workdir: Path) -> None:
    (workdir / "fail-2").touch()
    each = [{"id": "each", "type": "collection", "items": [1, 2, 3], "maxWorkers": 2,
             "task": {"id": "one", "tool": "flaky", "with": {"dir": DIR, "key": "{{ item }}", "v": "{{ item }}"}}}]
    apply(kubectl, namespace, workflow("each", each, tools=TOOLS,
                                       output={"vs": "{{ tasks.each.output | map(attribute='v') | list }}"}),
          execution("each-1", "each", {"dir": str(workdir)}))
    failed = wait_finished(kubectl, namespace, "each-1", 90)
    assert failed["phase"] == "Failed" and failed["tasks"]["each[1]"]["phase"] == "Failed", json.dumps(failed)
    (workdir / "fail-2").unlink()
    retry(kube, namespace, "each-1")
    status = round_end(kubectl, namespace, "each-1")
    assert status["phase"] == "Succeeded" and status["output"] == {"vs": [1, 2, 3]}, json.dumps(status, indent=1)
    assert tool_runs(workdir, "each-1") == Counter({("each[0]", 1): 1, ("each[1]", 1): 1, ("each[2]", 1): 1,
                                                    ("each[1]", 2): 1})
    assert status["tasks"]["each"]["attempt"] == 2 and status["tasks"]["each[0]"]["attempt"] == 1


def test_a_cancelled_run_is_retried(operator: OperatorProcess, kubectl: Kubectl, kube: Kube, namespace: str,
                                    workdir: Path) -> None:
    """Cancelled while its task hangs: the retry (which removes spec.cancel) runs the task again."""
    (workdir / "fail-a").touch()
    apply(kubectl, namespace, workflow("hang", [{"id": "a", "tool": "flaky", "with": {"dir": DIR, "hang": True}}],
                                       tools=TOOLS, output={"a": "{{ tasks.a.output.attempt }}"}),
          execution("hang-1", "hang", {"dir": str(workdir)}))
    wait_for(lambda: tool_runs(workdir, "hang-1"), 60, "the task to start")
    kubectl.ok("patch", "wfx", "hang-1", "-n", namespace, "--type=merge", "-p", '{"spec":{"cancel":true}}')
    assert wait_finished(kubectl, namespace, "hang-1", 60)["phase"] == "Cancelled"
    (workdir / "fail-a").unlink()
    retry(kube, namespace, "hang-1")
    status = round_end(kubectl, namespace, "hang-1")
    assert status["phase"] == "Succeeded" and status["output"] == {"a": 2}, json.dumps(status, indent=1)
    assert [r["phase"] for r in status["tasks"]["a"]["attempts"]] == ["Cancelled"]
    assert "cancel" not in kube.get(path(namespace, "hang-1"))["spec"]


def test_a_timed_out_run_is_retried_with_a_fresh_deadline(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                         namespace: str, workdir: Path) -> None:
    (workdir / "fail-b").touch()
    tasks = [{"id": "a", "tool": "flaky", "with": {"dir": DIR, "v": 1}, "onSuccess": {"next": "b"}},
             {"id": "b", "tool": "flaky", "with": {"dir": DIR, "hang": True}}]
    apply(kubectl, namespace, workflow("late", tasks, tools=TOOLS, timeout="8s"),
          execution("late-1", "late", {"dir": str(workdir)}))
    timed_out = wait_finished(kubectl, namespace, "late-1", 60)
    assert timed_out["phase"] == "TimedOut", json.dumps(timed_out, indent=1)
    (workdir / "fail-b").unlink()
    retry(kube, namespace, "late-1")
    status = round_end(kubectl, namespace, "late-1")
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    assert status["retriedAt"] > timed_out["finishedAt"] and status["startedAt"] == timed_out["startedAt"]
    assert tool_runs(workdir, "late-1") == Counter({("a", 1): 1, ("b", 1): 1, ("b", 2): 1})


def test_a_retry_of_a_running_or_succeeded_run_is_refused(operator: OperatorProcess, kubectl: Kubectl,
                                                          namespace: str, workdir: Path) -> None:
    (workdir / "fail-a").touch()
    apply(kubectl, namespace, workflow("busy", [{"id": "a", "tool": "flaky", "with": {"dir": DIR, "hang": True}}],
                                       tools=TOOLS), execution("busy-1", "busy", {"dir": str(workdir)}))
    wait_for(lambda: execution_status(kubectl, namespace, "busy-1").get("phase") == "Running", 60, "Running")
    out = kubectl("patch", "wfx", "busy-1", "-n", namespace, "--type=merge", "-p", '{"spec":{"retry":1}}')
    assert out.returncode != 0 and "only a run that ended Failed, TimedOut or Cancelled can be retried; this one " \
        "is Running" in out.stderr, out.stderr
    (workdir / "fail-a").unlink()
    kubectl.ok("patch", "wfx", "busy-1", "-n", namespace, "--type=merge", "-p", '{"spec":{"cancel":true}}')
    assert wait_finished(kubectl, namespace, "busy-1", 60)["phase"] == "Cancelled"
    apply(kubectl, namespace, execution("busy-2", "busy", {"dir": str(workdir)}))
    assert wait_finished(kubectl, namespace, "busy-2", 60)["phase"] == "Succeeded"
    out = kubectl("patch", "wfx", "busy-2", "-n", namespace, "--type=merge", "-p", '{"spec":{"retry":1}}')
    assert out.returncode != 0 and "this one is Succeeded" in out.stderr, out.stderr


def test_resubmit_runs_again_with_the_same_input_and_labels(operator: OperatorProcess, kubectl: Kubectl,
                                                            kube: Kube, namespace: str, workdir: Path) -> None:
    """The old run failed; its resubmission (execution_requests.resubmission, created through the
    API as api.Service and the CLI do) is a new run of the same workflow and input, labelled."""
    (workdir / "fail-b").touch()
    apply(kubectl, namespace, workflow("line", LINE, tools=TOOLS, output=LINE_OUTPUT),
          execution("orig", "line", {"dir": str(workdir)}))
    assert wait_finished(kubectl, namespace, "orig", 90)["phase"] == "Failed"
    (workdir / "fail-b").unlink()
    new = kube.create(f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/workflowexecutions",
                      resubmission(kube.get(path(namespace, "orig"))))
    name = new["metadata"]["name"]
    assert name.startswith("line-") and new["spec"]["input"] == {"dir": str(workdir)}
    status = wait_finished(kubectl, namespace, name, 90)
    assert status["phase"] == "Succeeded" and status["output"] == {"b": 1, "c": 3}, json.dumps(status, indent=1)
    meta = kube.get(path(namespace, name))["metadata"]
    labels = meta["labels"]  # created without a guess of its creation second: the operator labelled it
    assert labels.pop(LABEL_CREATED) == created_value(epoch(meta["creationTimestamp"]))
    assert labels == {LABEL_WORKFLOW: "line", LABEL_RESUBMITTED_FROM: "orig"}
    assert tool_runs(workdir, name) == Counter({("a", 1): 1, ("b", 1): 1, ("c", 1): 1})


def test_an_inline_workflow_run_gets_no_workflow_label(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                       namespace: str, workdir: Path) -> None:
    inline = {"apiVersion": "compozy.dev/v1alpha1", "kind": "WorkflowExecution", "metadata": {"name": "inl"},
              "spec": {"workflow": {"tools": TOOLS, "tasks": [{"id": "a", "tool": "flaky", "with": {"dir": DIR}}]},
                       "input": {"dir": str(workdir)}}}
    apply(kubectl, namespace, inline)
    assert wait_finished(kubectl, namespace, "inl", 60)["phase"] == "Succeeded"
    assert LABEL_WORKFLOW not in (kube.get(path(namespace, "inl"))["metadata"].get("labels") or {})


def test_a_run_refused_at_its_start_is_started_again_by_a_retry(operator: OperatorProcess, kubectl: Kubectl,
                                                                kube: Kube, namespace: str, workdir: Path) -> None:
    """Its Workflow did not exist: the run failed before it started. Once the Workflow is there, a
    retry starts it (round 1)."""
    apply(kubectl, namespace, execution("early-1", "early", {"dir": str(workdir)}))
    refused = wait_finished(kubectl, namespace, "early-1", 60)
    assert refused["phase"] == "Failed" and "not found" in refused["error"]["message"], json.dumps(refused)
    apply(kubectl, namespace, workflow("early", [{"id": "a", "tool": "flaky", "with": {"dir": DIR, "v": 5}}],
                                       tools=TOOLS, output={"v": "{{ tasks.a.output.v }}"}))
    retry(kube, namespace, "early-1")
    status = round_end(kubectl, namespace, "early-1")
    assert status["phase"] == "Succeeded" and status["output"] == {"v": 5}, json.dumps(status, indent=1)
    assert tool_runs(workdir, "early-1") == Counter({("a", 1): 1})
