"""Warm runner pools end to end: a RunnerPool's runners (a Deployment, real pods on the process
node) run pooled attempts in processes of their own; crashes, cancel, timeouts and a lost runner."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from compozy_operator.events import POOL_STREAM, pool_consumer
from compozy_operator.kube import Kube
from compozy_operator.pools import RUNNER_POD_SELECTOR
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl, pid_alive, pid_of, wait_for

from .conftest import OPERATOR_ENV, crashed_at, execution_status, instead_of, jetstream, wait_finished
from .test_workflows import metric

PY_OK = "def run(input, ctx):\n    ctx.log.info('pid %s', __import__('os').getpid())\n    return {'echo': input}\n"
# writes its process id where the test can read it, then sleeps (attempt 1 only: later attempts are quick)
PY_SLOW = ("import os, time\n"
           "def run(input, ctx):\n"
           "    with open(input['pidfile'] + f'.{ctx.attempt}', 'w') as f:\n"
           "        f.write(str(os.getpid()))\n"
           "    time.sleep(input['seconds'] if ctx.attempt == 1 else 0)\n"
           "    return {'attempt': ctx.attempt}\n")
CRASHES = {
    "exit-hard": "import os\ndef run(input, ctx):\n    os._exit(3)\n",
    "exit-soft": "import sys\ndef run(input, ctx):\n    sys.exit(0)\n",
    "segfault": "import ctypes\ndef run(input, ctx):\n    ctypes.string_at(0)\n",
    "raises": "def run(input, ctx):\n    raise RuntimeError('broken tool')\n",
}


def pool(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "compozy.dev/v1alpha1", "kind": "RunnerPool", "metadata": {"name": name},
            "spec": {"concurrency": 4, "minReplicas": 1, "maxReplicas": 2, **spec}}


def workflow(name: str, tasks: list[dict[str, Any]], tools: dict[str, str], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": name},
            "spec": {"tools": [{"id": t, "python": code, "pool": "warm"} for t, code in tools.items()],
                     "tasks": tasks, **spec}}


def execution(name: str, workflow_name: str, input: Any = None) -> dict[str, Any]:
    return {"apiVersion": "compozy.dev/v1alpha1", "kind": "WorkflowExecution", "metadata": {"name": name},
            "spec": {"workflowRef": {"name": workflow_name}, **({"input": input} if input is not None else {})}}


def apply(kubectl: Kubectl, namespace: str, *docs: dict[str, Any]) -> None:
    out = kubectl.apply(namespace, *docs)
    assert out.returncode == 0, out.stderr


def runners(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    pods = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=RUNNER_POD_SELECTOR)["items"]
    return [p for p in pods if (p.get("status") or {}).get("phase") == "Running" and not
            p["metadata"].get("deletionTimestamp")]


def task_pods(kube: Kube, namespace: str) -> list[str]:
    pods = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app.kubernetes.io/component=task")
    return [p["metadata"]["name"] for p in pods["items"]]


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text())
    except (OSError, ValueError):
        return None


def test_a_workflow_runs_on_warm_runners_without_a_pod_per_task(operator: OperatorProcess, kubectl: Kubectl,
                                                                kube: Kube, namespace: str) -> None:
    apply(kubectl, namespace, pool("warm"),
          workflow("chain", [{"id": "a", "tool": "ok", "with": {"n": 1}, "onSuccess": {"next": "b"}},
                             {"id": "b", "tool": "ok", "with": {"n": "{{ tasks.a.output.echo.n }}"},
                              "onSuccess": {"next": "each"}},
                             {"id": "each", "type": "collection", "items": [1, 2, 3, 4, 5, 6], "maxWorkers": 3,
                              "task": {"id": "item", "tool": "ok", "with": {"item": "{{ item }}"}}}],
                   {"ok": PY_OK}, output={"items": "{{ tasks.each.output }}"}),
          execution("chain-1", "chain"))
    status = wait_finished(kubectl, namespace, "chain-1", timeout=90)
    assert status["phase"] == "Succeeded", status
    assert status["tasks"]["b"]["output"] == {"echo": {"n": 1}}
    assert [o["echo"]["item"] for o in status["output"]["items"]] == [1, 2, 3, 4, 5, 6]
    names = {p["metadata"]["name"] for p in kube.get(f"/api/v1/namespaces/{namespace}/pods",
                                                     labelSelector=RUNNER_POD_SELECTOR)["items"]}
    assert status["tasks"]["a"]["podName"] in names and status["tasks"]["each[5]"]["podName"] in names
    assert task_pods(kube, namespace) == []  # no pod per attempt
    deployment = kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/compozy-runner-warm")
    assert deployment["metadata"]["ownerReferences"][0]["kind"] == "RunnerPool"


def test_a_workflows_default_pool_and_the_tools_that_keep_a_pod(operator: OperatorProcess, kubectl: Kubectl,
                                                                 kube: Kube, namespace: str) -> None:
    """spec.pool runs every tool on the pool but those that keep a pod of their own: isolation pod, or
    a setting only a pod can have (env). A tool cannot ask for both a pool and isolation pod: refused at
    apply, naming the field."""
    tools = [{"id": "plain", "python": PY_OK}, {"id": "isolated", "python": PY_OK, "isolation": "pod"},
             {"id": "with-env", "python": PY_OK, "env": [{"name": "A", "value": "1"}]}]
    wf = {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "default-pool"},
          "spec": {"pool": "warm", "tools": tools, "tasks": [{"id": "all", "type": "parallel", "tasks": [
              {"id": "p", "tool": "plain", "with": {"n": 1}}, {"id": "i", "tool": "isolated", "with": {"n": 2}},
              {"id": "e", "tool": "with-env", "with": {"n": 3}}]}]}}
    apply(kubectl, namespace, pool("warm"), wf, execution("default-pool-1", "default-pool"))
    status = wait_finished(kubectl, namespace, "default-pool-1", timeout=90)
    assert status["phase"] == "Succeeded", status
    runner_names = {p["metadata"]["name"] for p in runners(kube, namespace)}
    t = status["tasks"]
    assert t["p"]["podName"] in runner_names, (t["p"], runner_names)
    assert t["i"]["podName"] not in runner_names and t["e"]["podName"] not in runner_names, t
    assert t["i"]["podName"].startswith("default-pool-1-") and t["e"]["podName"].startswith("default-pool-1-")
    both = {**tools[1], "pool": "warm"}
    out = kubectl.apply(namespace, {**wf, "metadata": {"name": "both"}, "spec": {**wf["spec"], "tools": [both]}})
    assert out.returncode != 0 and "isolation: a tool with isolation pod runs in a pod of its own" in out.stderr, \
        out.stderr


def test_a_crashing_tool_takes_down_only_its_own_attempt(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                         namespace: str) -> None:
    apply(kubectl, namespace, pool("warm", maxReplicas=1))
    wait_for(lambda: runners(kube, namespace) or None, 60, "a warm runner")
    [runner] = runners(kube, namespace)
    tasks = [{"id": t, "tool": t} for t in CRASHES] + [{"id": "fine", "tool": "ok", "with": {"x": 1}}]
    apply(kubectl, namespace,
          workflow("crashes", [{"id": "all", "type": "parallel", "strategy": "bestEffort", "tasks": tasks}],
                   {**CRASHES, "ok": PY_OK}),
          execution("crashes-1", "crashes"))
    status = wait_finished(kubectl, namespace, "crashes-1", timeout=90)
    t = status["tasks"]
    assert t["fine"]["phase"] == "Succeeded", status
    for crash in ("exit-hard", "exit-soft", "segfault"):
        assert t[crash]["phase"] == "Failed" and t[crash]["error"]["reason"] == "ProcessExited", t[crash]
    assert "exited with code 3" in t["exit-hard"]["error"]["message"]
    assert "killed by signal 11" in t["segfault"]["error"]["message"]
    assert t["raises"]["error"]["reason"] == "ToolError" and "broken tool" in t["raises"]["error"]["message"]
    # the runner lived through all of it, and runs the next run's attempt
    [after] = runners(kube, namespace)
    assert after["metadata"]["uid"] == runner["metadata"]["uid"]
    assert after["status"]["containerStatuses"][0]["restartCount"] == 0
    apply(kubectl, namespace, execution("crashes-2", "crashes"))
    assert wait_finished(kubectl, namespace, "crashes-2", timeout=60)["tasks"]["fine"]["podName"] == \
        runner["metadata"]["name"]


def test_cancel_kills_the_attempts_process(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                      namespace: str, tmp_path: Path) -> None:
    apply(kubectl, namespace, pool("warm"),
          workflow("slow", [{"id": "wait", "tool": "slow", "with": {"pidfile": "{{ workflow.input.pidfile }}", "seconds": 120}}],
                   {"slow": PY_SLOW}))
    pidfile = tmp_path / "cancel"
    apply(kubectl, namespace, execution("slow-1", "slow", {"pidfile": str(pidfile)}))
    pid = wait_for(lambda: read_pid(Path(f"{pidfile}.1")), 60, "the attempt's process")
    kubectl.ok("patch", "wfx", "slow-1", "-n", namespace, "--type=merge", "-p", '{"spec":{"cancel":true}}')
    assert wait_finished(kubectl, namespace, "slow-1")["phase"] == "Cancelled"
    wait_for(lambda: not pid_alive(pid) or None, 10, "the cancelled attempt's process to die")


def test_a_timed_out_attempt_is_killed(operator: OperatorProcess, kubectl: Kubectl, kube: Kube, namespace: str,
                                      tmp_path: Path) -> None:
    pidfile = tmp_path / "timeout"
    # a warm runner first: the 3 s count from the dispatch, and a runner's start (its fork server's
    # preload, over a second of CPU) must not be what times the attempt out
    apply(kubectl, namespace, pool("warm"), workflow("ok", [{"id": "a", "tool": "ok"}], {"ok": PY_OK}),
          execution("ok-1", "ok"))
    assert wait_finished(kubectl, namespace, "ok-1", timeout=90)["phase"] == "Succeeded"
    apply(kubectl, namespace,
          {**workflow("late", [{"id": "wait", "tool": "slow", "with": {"pidfile": str(pidfile), "seconds": 120},
                                "timeout": "3s"}], {"slow": PY_SLOW})},
          execution("late-1", "late"))
    pid = wait_for(lambda: read_pid(Path(f"{pidfile}.1")), 60, "the attempt's process")
    status = wait_finished(kubectl, namespace, "late-1", timeout=60)
    assert status["phase"] == "Failed" and status["tasks"]["wait"]["error"]["reason"] == "Timeout", status
    wait_for(lambda: not pid_alive(pid) or None, 10, "the timed-out attempt's process to die")


def test_a_lost_runner_fails_its_attempt_which_is_retried(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                          namespace: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "lost"
    apply(kubectl, namespace, pool("warm", maxReplicas=1),
          workflow("lost", [{"id": "wait", "tool": "slow", "with": {"pidfile": str(pidfile), "seconds": 120},
                             "retry": {"limit": 1, "backoff": {"initial": "100ms"}}}], {"slow": PY_SLOW}),
          execution("lost-1", "lost"))
    child = wait_for(lambda: read_pid(Path(f"{pidfile}.1")), 60, "the attempt's process")
    [runner] = runners(kube, namespace)
    os.kill(pid_of(runner), signal.SIGKILL)  # the runner process dies (not its pod): its attempt goes with it
    wait_for(lambda: not pid_alive(child) or None, 10, "the attempt's process to die with its runner")
    status = wait_finished(kubectl, namespace, "lost-1", timeout=90)
    assert status["phase"] == "Succeeded", status
    wait = status["tasks"]["wait"]
    assert wait["attempt"] == 2 and wait["output"] == {"attempt": 2}
    [first] = wait["attempts"]
    assert first["error"]["reason"] == "RunnerLost", first


def test_a_deleted_runner_pod_fails_its_attempt_at_once(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                        namespace: str, tmp_path: Path) -> None:
    pidfile = tmp_path / "deleted"
    apply(kubectl, namespace, pool("warm", maxReplicas=1),
          workflow("gone", [{"id": "wait", "tool": "slow", "with": {"pidfile": str(pidfile), "seconds": 120}}],
                   {"slow": PY_SLOW}),
          execution("gone-1", "gone"))
    wait_for(lambda: read_pid(Path(f"{pidfile}.1")), 60, "the attempt's process")
    [runner] = runners(kube, namespace)
    kube.delete(f"/api/v1/namespaces/{namespace}/pods/{runner['metadata']['name']}", {"gracePeriodSeconds": 0})
    status = wait_finished(kubectl, namespace, "gone-1", timeout=60)
    assert status["phase"] == "Failed", status
    assert status["tasks"]["wait"]["error"]["reason"] in ("RunnerLost", "Terminated"), status["tasks"]["wait"]


def test_pool_replicas_follow_the_queue(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                        namespace: str, tmp_path: Path) -> None:
    apply(kubectl, namespace, pool("warm", concurrency=1, minReplicas=1, maxReplicas=3),
          workflow("wide", [{"id": "each", "type": "collection", "items": [1, 2, 3, 4],
                             "task": {"id": "item", "tool": "slow",
                                      "with": {"pidfile": str(tmp_path / "p{{ item }}"), "seconds": 8}}}],
                   {"slow": PY_SLOW}),
          execution("wide-1", "wide"))

    def scaled() -> int | None:
        status = kube.get(f"/apis/compozy.dev/v1alpha1/namespaces/{namespace}/runnerpools/warm").get("status") or {}
        return status["replicas"] if status.get("replicas") == 3 else None

    wait_for(scaled, 30, "the pool to scale to its maximum of 3")
    assert wait_finished(kubectl, namespace, "wide-1", timeout=120)["phase"] == "Succeeded"
    wait_for(lambda: (kube.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/compozy-runner-warm")["spec"]
                      ["replicas"] == 1) or None, 30, "the pool to scale back to its minimum")


def test_an_attempt_waits_for_its_pool_to_exist(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                namespace: str) -> None:
    apply(kubectl, namespace, workflow("early", [{"id": "a", "tool": "ok", "with": {"x": 1}}], {"ok": PY_OK}),
          execution("early-1", "early"))

    def waiting() -> str | None:
        message = (execution_status(kubectl, namespace, "early-1").get("tasks") or {}).get("a", {}).get("message")
        return message if message and message.startswith("PoolNotFound: RunnerPool warm does not exist") else None

    wait_for(waiting, 30, "the task to say it waits for its pool")
    apply(kubectl, namespace, pool("warm"))
    status = wait_finished(kubectl, namespace, "early-1", timeout=60)
    assert status["phase"] == "Succeeded" and status["tasks"]["a"]["output"] == {"echo": {"x": 1}}, status


def test_a_stopped_runner_lets_its_attempts_finish(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                   namespace: str, tmp_path: Path) -> None:
    """What a scale-down does to a busy runner: its pod is deleted with a grace period; the runner
    takes nothing new and the attempt it runs ends as it would have."""
    pidfile = tmp_path / "drain"
    apply(kubectl, namespace, pool("warm", maxReplicas=1),
          workflow("drain", [{"id": "wait", "tool": "slow", "with": {"pidfile": str(pidfile), "seconds": 4}}],
                   {"slow": PY_SLOW}),
          execution("drain-1", "drain"))
    wait_for(lambda: read_pid(Path(f"{pidfile}.1")), 60, "the attempt's process")
    [runner] = runners(kube, namespace)
    kube.delete(f"/api/v1/namespaces/{namespace}/pods/{runner['metadata']['name']}")  # the default grace (30 s)
    status = wait_finished(kubectl, namespace, "drain-1", timeout=60)
    assert status["phase"] == "Succeeded", status
    assert status["tasks"]["wait"]["attempt"] == 1 and status["tasks"]["wait"]["podName"] == runner["metadata"]["name"]


# appends the run's name to a file, then sleeps
PY_COUNTED = ("import time\n"
              "def run(input, ctx):\n"
              "    with open(input['log'], 'a') as f:\n"
              "        f.write(ctx.execution + '\\n')\n"
              "    time.sleep(input['seconds'])\n"
              "    return {}\n")


def one_running_one_queued(kubectl: Kubectl, kube: Kube, namespace: str, name: str, log: Path) -> None:
    """A pool of one slot; run ``<name>-1`` runs on it (8 s), ``<name>-2`` waits in the queue."""
    apply(kubectl, namespace, pool("warm", concurrency=1, minReplicas=1, maxReplicas=1),
          workflow(name, [{"id": "a", "tool": "counted", "with": {"log": str(log),
                                                                 "seconds": "{{ workflow.input.seconds }}"}}],
                   {"counted": PY_COUNTED}))
    wait_for(lambda: runners(kube, namespace), 60, "the pool's runner")
    apply(kubectl, namespace, execution(f"{name}-1", name, {"seconds": 8}))
    wait_for(lambda: log.exists() and f"{name}-1" in log.read_text(), 60, f"{name}-1's attempt to start")
    apply(kubectl, namespace, execution(f"{name}-2", name, {"seconds": 0}))
    wait_for(lambda: execution_status(kubectl, namespace, f"{name}-2").get("tasks", {}).get("a", {}).get("phase")
             == "Pending", 30, f"{name}-2's attempt to wait in the queue")


def both_ran_once(kubectl: Kubectl, namespace: str, name: str, log: Path) -> None:
    """Both runs of :func:`one_running_one_queued` succeed, each attempt run once and never retried."""
    for run in (f"{name}-1", f"{name}-2"):
        status = wait_finished(kubectl, namespace, run, 90)
        assert status["phase"] == "Succeeded" and status["tasks"]["a"]["attempt"] == 1, status
    assert sorted(log.read_text().split()) == [f"{name}-1", f"{name}-2"]


@pytest.mark.parametrize("what", ["stream", "consumer"])
def test_a_deleted_pool_queue_loses_no_attempt(what: str, operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                               devenv: DevEnvironment, namespace: str, tmp_path: Path) -> None:
    """The pool's queue (its stream, with every message; or the pool's consumer) is deleted while one
    attempt runs on the only slot and another waits in the queue: the operator recreates them and
    queues the waiting attempt again; both runs succeed, each attempt run once, none retried."""
    log = tmp_path / "runs.log"
    with instead_of(operator, devenv, tmp_path / "operator.log") as op:
        one_running_one_queued(kubectl, kube, namespace, "q", log)
        if what == "stream":
            jetstream(devenv, lambda js: js.delete_stream(POOL_STREAM))
        else:
            jetstream(devenv, lambda js: js.delete_consumer(POOL_STREAM, pool_consumer(namespace, "warm")))
        both_ran_once(kubectl, namespace, "q", log)
        if what == "stream":
            assert metric(op.metrics(), "compozy_jetstream_repairs_total", f'{{name="{POOL_STREAM}"}}') > 0
            assert op.log_path is not None and "queued task a attempt 1 of" in op.log_path.read_text()


def test_an_operator_restart_leaves_running_and_queued_pooled_attempts_alone(
        operator: OperatorProcess, kubectl: Kubectl, kube: Kube, devenv: DevEnvironment, namespace: str,
        tmp_path: Path) -> None:
    """The operator is killed while one pooled attempt runs and another waits in the queue: the next
    one neither fails the running one (its runner pod is there) nor queues the waiting one again."""
    log = tmp_path / "runs.log"
    with instead_of(operator, devenv, tmp_path / "operator.log") as op:
        one_running_one_queued(kubectl, kube, namespace, "r", log)
        op.kill()
        op.start()
        both_ran_once(kubectl, namespace, "r", log)
        assert op.log_path is not None and "queued task a attempt 1 of" not in op.log_path.read_text()


@pytest.mark.parametrize("point", ["publish.PoolWork:before", "publish.PoolWork:after"])
def test_a_crash_while_queueing_a_lost_attempt_again_runs_it_once(
        point: str, operator: OperatorProcess, kubectl: Kubectl, kube: Kube, devenv: DevEnvironment, namespace: str,
        tmp_path: Path) -> None:
    """The pool's stream is deleted while no operator runs, with one attempt running and one queued. The
    next operator queues the lost one again and is killed just before (or just after) that publish; the
    one after it queues it (or finds it queued: the same message id, or claimed): both runs succeed,
    each attempt run once."""
    log = tmp_path / "runs.log"
    with instead_of(operator, devenv, tmp_path / "operator.log", COMPOZY_NAMESPACES=namespace) as op:
        one_running_one_queued(kubectl, kube, namespace, "k", log)
        op.kill()
        jetstream(devenv, lambda js: js.delete_stream(POOL_STREAM))
        armed = OperatorProcess(devenv, extra_env={**OPERATOR_ENV, "COMPOZY_NAMESPACES": namespace,
                                                   "COMPOZY_FAILPOINTS": point}, log_path=tmp_path / "armed.log")
        try:
            armed.start(wait_ready=False)  # it queues again while it starts
            crashed_at(armed, point)
        finally:
            armed.stop()
        op.start()
        both_ran_once(kubectl, namespace, "k", log)


HOG = "def run(input, ctx):\n    return {'n': len(bytearray(2 << 30))}\n"  # 2 GiB


def test_a_memory_bomb_fails_only_its_own_attempt(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                 namespace: str, tmp_path: Path) -> None:
    """attemptMemory bounds each attempt's process: a tool allocating 2 GiB fails with MemoryError,
    while an attempt beside it on the same runner succeeds and the runner goes on, never restarted."""
    log = tmp_path / "runs.log"
    apply(kubectl, namespace, pool("warm", attemptMemory="256Mi", concurrency=2, maxReplicas=1),
          workflow("bomb", [{"id": "a", "tool": "hog", "with": {}}], {"hog": HOG}),
          workflow("calm", [{"id": "a", "tool": "counted", "with": {"log": str(log), "seconds": 3}}],
                   {"counted": PY_COUNTED}))
    [runner] = wait_for(lambda: runners(kube, namespace), 60, "the pool's runner")
    apply(kubectl, namespace, execution("calm-1", "calm"))
    wait_for(lambda: log.exists() and "calm-1" in log.read_text(), 60, "calm-1's attempt to start")
    apply(kubectl, namespace, execution("bomb-1", "bomb"))
    bomb = wait_finished(kubectl, namespace, "bomb-1", 60)
    assert bomb["phase"] == "Failed" and "MemoryError" in bomb["tasks"]["a"]["error"]["message"], bomb
    assert bomb["tasks"]["a"]["podName"] == runner["metadata"]["name"]
    assert wait_finished(kubectl, namespace, "calm-1", 60)["phase"] == "Succeeded"
    [after] = runners(kube, namespace)
    assert after["metadata"]["uid"] == runner["metadata"]["uid"]
    assert [c.get("restartCount", 0) for c in after["status"].get("containerStatuses") or []] in ([0], [])
