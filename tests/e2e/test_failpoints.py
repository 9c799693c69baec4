"""The failpoint matrix: kill -9 the operator at every write it makes, restart it, and check the run
still ends once, with the right output, every tool attempt run exactly once, no pod left behind.

Each case arms one failpoint (operator/compozy_operator/failpoints.py) in a fresh operator
process, checks the process died *there* (its log says which point fired), starts a clean
operator, and checks the outcome. Tool runs are counted by the tools themselves (a line per
run in a file), not by pods.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from compozy_operator.execution_requests import LABEL_WORKFLOW, retry_patch
from compozy_operator.kube import Kube
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl, wait_for

from .conftest import OPERATOR_ENV, crashed_at, execution_status, wait_finished
from .test_workflows import apply, execution, workflow

COUNTED = ("import os, time\n"
           "def run(input, ctx):\n"
           "    with open(os.path.join(input['dir'], 'runs.log'), 'a') as f:\n"
           "        f.write(f'{ctx.execution} {ctx.task} {ctx.attempt}\\n')\n"
           "    time.sleep(input.get('sleep', 0) if ctx.attempt == 1 else 0)\n"
           "    if ctx.attempt < input.get('succeedOn', 1):\n"
           "        raise RuntimeError(f'attempt {ctx.attempt} fails on purpose')\n"
           "    return {'task': ctx.task, 'attempt': ctx.attempt, 'v': input.get('v')}\n")
TOOLS = [{"id": "counted", "python": COUNTED}]
DIR = "{{ workflow.input.dir }}"

# a -> (retry) -> fan(b, c) -> d: every write of a successful run (start, dispatch, command, pod
# create and cleanup, retry, a composite's completion, the end, status patches, acks, Events)
MAIN = [
    {"id": "a", "tool": "counted", "with": {"dir": DIR, "succeedOn": 2, "v": 1},
     "retry": {"limit": 2, "backoff": {"initial": "100ms"}}, "onSuccess": {"next": "fan"}},
    {"id": "fan", "type": "parallel", "tasks": [{"id": "b", "tool": "counted", "with": {"dir": DIR, "v": 2}},
                                                 {"id": "c", "tool": "counted", "with": {"dir": DIR, "v": 3}}],
     "onSuccess": {"next": "d"}},
    {"id": "d", "tool": "counted", "with": {"dir": DIR, "v": "{{ tasks.fan.output.b.v }}"}},
]
MAIN_OUTPUT = {"a": "{{ tasks.a.output.attempt }}", "d": "{{ tasks.d.output.v }}"}
MAIN_RUNS = {("a", 1), ("a", 2), ("b", 1), ("c", 1), ("d", 1)}
# an attempt that times out: the orchestrator fails it and stops its pod, then the retry succeeds
TIMEOUT = [{"id": "a", "tool": "counted", "with": {"dir": DIR, "sleep": 300}, "timeout": "6s",
            "retry": {"limit": 1}}]

MAIN_POINTS = [
    "publish.WorkflowExecutionStarted", "publish.TaskDispatched", "publish.TaskExecute", "kube.create.secrets",
    "kube.create.pods", "kube.delete.pods", "publish.TaskRetryScheduled", "publish.TaskExecutionSuccess",
    "publish.WorkflowExecutionSuccess", "kube.patch.workflowexecutions.status", "ack.state", "kube.create.events",
]


@pytest.fixture
def operators(operator: OperatorProcess, devenv: DevEnvironment, tmp_path: Path) -> Iterator[
        Callable[[str | None], OperatorProcess]]:
    """Operators of this test's own (the session's is stopped meanwhile: two would both act)."""
    started: list[OperatorProcess] = []
    operator.stop()

    def start(failpoints: str | None) -> OperatorProcess:
        env = {**OPERATOR_ENV, **({"COMPOZY_FAILPOINTS": failpoints} if failpoints else {})}
        op = OperatorProcess(devenv, extra_env=env, log_path=tmp_path / f"operator-{len(started) + 1}.log")
        op.start()
        started.append(op)
        return op

    try:
        yield start
    finally:
        for op in started:
            op.stop()
        operator.start()


def crash_and_recover(start: Callable[[str | None], OperatorProcess], point: str,
                      run: Callable[[], None]) -> None:
    """Arm ``point``, do ``run``, see the operator die there, then start a clean one."""
    armed = start(point)
    run()
    crashed_at(armed, point)
    start(None)


def tool_runs(workdir: Path, name: str) -> Counter[tuple[str, int]]:
    lines = (workdir / "runs.log").read_text().split() if (workdir / "runs.log").exists() else []
    return Counter((task, int(attempt)) for execution, task, attempt in zip(lines[::3], lines[1::3], lines[2::3])
                   if execution == name)


def settled(kubectl: Kubectl, namespace: str, name: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The run's status once ``check`` holds: facts fetched by a killed operator (its unacked events)
    reach the status a few seconds after the end, within the state consumer's ack wait."""
    wait_finished(kubectl, namespace, name, 90)
    last: dict[str, Any] = {}

    def ok() -> bool:
        last.update(execution_status(kubectl, namespace, name))
        return check(last)

    try:
        wait_for(ok, 20, f"the final status of {name}")
    except AssertionError:
        raise AssertionError(json.dumps(last, indent=1)) from None
    return last


def no_task_pods(kube: Kube, namespace: str) -> bool:
    return not kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"]


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("write", MAIN_POINTS)
def test_a_crash_at_any_write_of_a_run(write: str, when: str, operators: Callable[[str | None], OperatorProcess],
                                       kubectl: Kubectl, kube: Kube, namespace: str, tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    workdir.mkdir()
    crash_and_recover(operators, f"{write}:{when}", lambda: apply(
        kubectl, namespace, workflow("fp", MAIN, tools=TOOLS, output=MAIN_OUTPUT),
        execution("fp-1", "fp", {"dir": str(workdir)})))
    status = wait_finished(kubectl, namespace, "fp-1", 90)
    assert status["phase"] == "Succeeded", json.dumps(status, indent=1)
    assert status["output"] == {"a": 2, "d": 2}
    runs = tool_runs(workdir, "fp-1")
    assert set(runs) == MAIN_RUNS and set(runs.values()) == {1}, runs
    wait_for(lambda: no_task_pods(kube, namespace), 30, "every task pod to be removed")


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("write", ["publish.TaskExecutionFailed", "kube.delete.pods"])
def test_a_crash_while_a_timed_out_attempt_is_stopped(write: str, when: str,
                                                      operators: Callable[[str | None], OperatorProcess],
                                                      kubectl: Kubectl, kube: Kube, namespace: str,
                                                      tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    workdir.mkdir()
    crash_and_recover(operators, f"{write}:{when}", lambda: apply(
        kubectl, namespace, workflow("slow", TIMEOUT, tools=TOOLS, output={"a": "{{ tasks.a.output.attempt }}"}),
        execution("slow-1", "slow", {"dir": str(workdir)})))
    settled(kubectl, namespace, "slow-1", lambda s: s["phase"] == "Succeeded" and s["output"] == {"a": 2}
            and [r["error"]["reason"] for r in s["tasks"]["a"].get("attempts", [])] == ["Timeout"])
    assert tool_runs(workdir, "slow-1") == Counter({("a", 1): 1, ("a", 2): 1})
    wait_for(lambda: no_task_pods(kube, namespace), 30, "every task pod to be removed")


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("write", ["kube.delete.pods", "publish.WorkflowExecutionCancelled"])
def test_a_crash_while_a_run_is_cancelled(write: str, when: str, operators: Callable[[str | None], OperatorProcess],
                                          kubectl: Kubectl, kube: Kube, namespace: str, tmp_path: Path) -> None:
    workdir = tmp_path / "runs"
    workdir.mkdir()

    def run() -> None:
        apply(kubectl, namespace, workflow("long", [{"id": "a", "tool": "counted",
                                                     "with": {"dir": DIR, "sleep": 300}}], tools=TOOLS),
              execution("long-1", "long", {"dir": str(workdir)}))
        wait_for(lambda: tool_runs(workdir, "long-1"), 30, "the task to start")
        kubectl.ok("patch", "wfx", "long-1", "-n", namespace, "--type=merge", "-p", '{"spec":{"cancel":true}}')

    crash_and_recover(operators, f"{write}:{when}", run)
    settled(kubectl, namespace, "long-1",
            lambda s: s["phase"] == "Cancelled" and s.get("tasks", {}).get("a", {}).get("phase") == "Cancelled")
    assert tool_runs(workdir, "long-1") == Counter({("a", 1): 1})
    wait_for(lambda: no_task_pods(kube, namespace), 30, "the cancelled task's pod to be removed")


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_while_telling_why_a_pod_waits(when: str, operators: Callable[[str | None], OperatorProcess],
                                               kubectl: Kubectl, kube: Kube, namespace: str, tmp_path: Path) -> None:
    """The TaskPodWaiting publish (a pod waiting for a missing Secret): the run still ends once, Failed
    with the configuration error, not retried, its tool never run, no pod left."""
    workdir = tmp_path / "runs"
    workdir.mkdir()
    secretly = {**TOOLS[0], "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]}
    crash_and_recover(operators, f"publish.TaskPodWaiting:{when}", lambda: apply(
        kubectl, namespace, workflow("waits", [{"id": "a", "tool": "counted", "with": {"dir": DIR},
                                                "retry": {"limit": 2}}], tools=[secretly]),
        execution("waits-1", "waits", {"dir": str(workdir)})))
    status = settled(kubectl, namespace, "waits-1", lambda s: s["phase"] == "Failed")
    a = status["tasks"]["a"]
    assert (a["error"]["reason"], a["attempt"]) == ("CreateContainerConfigError", 1), json.dumps(status, indent=1)
    assert "create the Secret" in a["error"]["message"] and "message" not in a
    assert tool_runs(workdir, "waits-1") == Counter()
    wait_for(lambda: no_task_pods(kube, namespace), 30, "the waiting pod to be removed")


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_while_writing_a_workflows_status(when: str, operators: Callable[[str | None], OperatorProcess],
                                                  kubectl: Kubectl, namespace: str) -> None:
    """The Workflow status patch (Ready): the clean operator writes it; a run of the Workflow works."""
    crash_and_recover(operators, f"kube.patch.workflows.status:{when}", lambda: apply(
        kubectl, namespace, workflow("ready", [{"id": "a", "tool": "counted", "with": {"dir": "/tmp"}}],
                                     tools=TOOLS)))

    def ready() -> dict[str, Any] | None:
        out = kubectl("get", "czwf", "ready", "-n", namespace, "-o", "json")
        conds = json.loads(out.stdout).get("status", {}).get("conditions", []) if out.returncode == 0 else []
        return next((c for c in conds if c["type"] == "Ready" and c["status"] == "True"), None)

    assert wait_for(ready, 30, "the Workflow's Ready status")["reason"] == "Valid"


# A retried run: round 0 fails at b (a flag file), round 1 runs b again and c. The writes of the retry
# transition (its event, the status write and ack that fold it) and of the round that follows.
FLAKY = ("import os\n"
         "def run(input, ctx):\n"
         "    with open(os.path.join(input['dir'], 'runs.log'), 'a') as f:\n"
         "        f.write(f'{ctx.execution} {ctx.task} {ctx.attempt}\\n')\n"
         "    if os.path.exists(os.path.join(input['dir'], 'fail-' + ctx.task)):\n"
         "        raise RuntimeError('fails on purpose')\n"
         "    return {'attempt': ctx.attempt, 'v': input.get('v')}\n")
RETRIED = [
    {"id": "a", "tool": "flaky", "with": {"dir": DIR, "v": 1}, "onSuccess": {"next": "b"}},
    {"id": "b", "tool": "flaky", "with": {"dir": DIR, "v": "{{ tasks.a.output.v + 1 }}"}, "onSuccess": {"next": "c"}},
    {"id": "c", "tool": "flaky", "with": {"dir": DIR, "v": "{{ tasks.b.output.v + 1 }}"}},
]
RETRY_POINTS = ["publish.WorkflowExecutionRetried", "kube.patch.workflowexecutions.status", "ack.state",
                "publish.TaskDispatched", "kube.create.pods", "publish.WorkflowExecutionSuccess"]


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("write", RETRY_POINTS)
def test_a_crash_while_a_run_is_retried(write: str, when: str, operators: Callable[[str | None], OperatorProcess],
                                        kubectl: Kubectl, kube: Kube, namespace: str, tmp_path: Path) -> None:
    """Round 0 fails under a clean operator; the retry is asked of an operator armed at one write of
    round 1, which dies there; a clean one finishes: the run ends once more, Succeeded, b and c run
    once in round 1, a never again."""
    workdir = tmp_path / "runs"
    workdir.mkdir()
    (workdir / "fail-b").touch()
    first = operators(None)
    apply(kubectl, namespace, workflow("rt", RETRIED, tools=[{"id": "flaky", "python": FLAKY}],
                                       output={"b": "{{ tasks.b.output.attempt }}", "c": "{{ tasks.c.output.v }}"}),
          execution("rt-1", "rt", {"dir": str(workdir)}))
    assert wait_finished(kubectl, namespace, "rt-1", 90)["phase"] == "Failed"
    first.stop()
    (workdir / "fail-b").unlink()
    path = f"/apis/compozy.dev/v1alpha1/namespaces/{namespace}/workflowexecutions/rt-1"
    crash_and_recover(operators, f"{write}:{when}", lambda: kube.merge_patch(path, retry_patch(kube.get(path))))
    status = settled(kubectl, namespace, "rt-1", lambda s: s.get("retries") == 1 and s["phase"] == "Succeeded")
    assert status["output"] == {"b": 2, "c": 3}, json.dumps(status, indent=1)
    assert [(r["attempt"], r["phase"]) for r in status["tasks"]["b"]["attempts"]] == [(1, "Failed")]
    assert tool_runs(workdir, "rt-1") == Counter({("a", 1): 1, ("b", 1): 1, ("b", 2): 1, ("c", 1): 1})
    wait_for(lambda: no_task_pods(kube, namespace), 30, "every task pod to be removed")


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_while_labelling_a_run(when: str, operators: Callable[[str | None], OperatorProcess],
                                       kubectl: Kubectl, kube: Kube, namespace: str, tmp_path: Path) -> None:
    """The label patch at a run's start (kubectl apply without it): the run still runs once, labelled."""
    workdir = tmp_path / "runs"
    workdir.mkdir()
    crash_and_recover(operators, f"kube.patch.workflowexecutions:{when}", lambda: apply(
        kubectl, namespace, workflow("lbl", [{"id": "a", "tool": "counted", "with": {"dir": DIR}}], tools=TOOLS),
        execution("lbl-1", "lbl", {"dir": str(workdir)})))
    assert wait_finished(kubectl, namespace, "lbl-1", 90)["phase"] == "Succeeded"
    labels = kube.get(f"/apis/compozy.dev/v1alpha1/namespaces/{namespace}/workflowexecutions/lbl-1")["metadata"]
    assert labels["labels"][LABEL_WORKFLOW] == "lbl"
    assert tool_runs(workdir, "lbl-1") == Counter({("a", 1): 1})


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_crash_while_counting_an_event(when: str, operators: Callable[[str | None], OperatorProcess],
                                         kubectl: Kubectl, kube: Kube, namespace: str, tmp_path: Path) -> None:
    """The PATCH that raises an aggregated Event's count (the second failed attempt of a retried task):
    the run still ends once, each attempt run once, one Event per reason."""
    workdir = tmp_path / "runs"
    workdir.mkdir()
    (workdir / "fail-a").touch()
    crash_and_recover(operators, f"kube.patch.events:{when}", lambda: apply(
        kubectl, namespace, workflow("ev", [{"id": "a", "tool": "flaky", "with": {"dir": DIR},
                                             "retry": {"limit": 2, "backoff": {"initial": "1s", "factor": 1}}}],
                                     tools=[{"id": "flaky", "python": FLAKY}]),
        execution("ev-1", "ev", {"dir": str(workdir)})))
    status = settled(kubectl, namespace, "ev-1", lambda s: s["phase"] == "Failed")
    assert status["tasks"]["a"]["attempt"] == 3, json.dumps(status, indent=1)
    assert tool_runs(workdir, "ev-1") == Counter({("a", 1): 1, ("a", 2): 1, ("a", 3): 1})
    uid = kube.get(f"/apis/compozy.dev/v1alpha1/namespaces/{namespace}/workflowexecutions/ev-1")["metadata"]["uid"]

    def one_per_reason() -> dict[str, Any] | None:
        items = kube.get(f"/api/v1/namespaces/{namespace}/events", fieldSelector=f"involvedObject.uid={uid}")["items"]
        reasons = [e["reason"] for e in items]
        return {e["reason"]: e for e in items} if "Failed" in reasons and len(reasons) == len(set(reasons)) else None

    events = wait_for(one_per_reason, 20, "one Event per reason")
    assert 2 <= events["TaskFailed"]["count"] <= 3 and events["Failed"]["count"] == 1, events
    wait_for(lambda: no_task_pods(kube, namespace), 30, "every task pod to be removed")
