"""Retries, timeouts, cancel and lost pods, end to end on the local cluster."""

from __future__ import annotations

import threading
from typing import Any

from compozy_operator.kube import Kube
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl, pid_alive, pid_of, wait_for

from .conftest import execution_status, wait_finished
from .test_workflows import Recorder, _pods_ever_created, apply, execution, workflow

FLAKY = ("def run(input, ctx):\n"
         "    if ctx.attempt < input['succeed_on']:\n"
         "        raise RuntimeError(f'attempt {ctx.attempt} failed')\n"
         "    return {'attempt': ctx.attempt}\n")
SLEEPY = "import time\ndef run(input, ctx):\n    time.sleep(input['seconds'])\n    return {}\n"
TOOLS = [{"id": "flaky", "python": FLAKY}, {"id": "sleepy", "python": SLEEPY}]


def pods_of(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    return kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"]


def running_pod(kube: Kube, namespace: str) -> dict[str, Any]:
    """The first task pod of the namespace to reach Running."""
    return wait_for(lambda: [p for p in pods_of(kube, namespace) if p["status"].get("phase") == "Running"], 30,
                    "a task pod to run")[0]


def start_sleeper(kubectl: Kubectl, kube: Kube, namespace: str, name: str) -> int:
    """Run a 300 s task; return the process id behind its pod once it runs."""
    apply(kubectl, namespace, workflow(name, [{"id": "a", "tool": "sleepy", "with": {"seconds": 300}}], tools=TOOLS),
          execution(f"{name}-1", name))
    return pid_of(running_pod(kube, namespace))


def record_pods(kube: Kube, namespace: str) -> tuple[dict[str, set[str]], threading.Event]:
    seen: dict[str, set[str]] = {}
    stop = threading.Event()
    threading.Thread(target=_pods_ever_created, args=(kube, namespace, stop, seen), daemon=True).start()
    return seen, stop


def test_retry_with_backoff_then_success(operator: OperatorProcess, kubectl: Kubectl, kube: Kube, devenv,
                                         namespace: str) -> None:
    seen, stop = record_pods(kube, namespace)
    with Recorder(devenv.nats.url, devenv.nats.token) as rec:
        apply(kubectl, namespace,
              workflow("retrying", [{"id": "a", "tool": "flaky", "with": {"succeed_on": 3},
                                     "retry": {"limit": 3, "backoff": {"initial": "1s", "factor": 2, "max": "10s"}}}],
                       tools=TOOLS),
              execution("retrying-1", "retrying"))
        status = wait_finished(kubectl, namespace, "retrying-1", 90)
    stop.set()
    assert status["phase"] == "Succeeded", status
    a = status["tasks"]["a"]
    assert (a["attempt"], a["output"]) == (3, {"attempt": 3})
    assert [(r["attempt"], r["error"]["message"]) for r in a["attempts"]] == [
        (1, "RuntimeError: attempt 1 failed (line 3)"), (2, "RuntimeError: attempt 2 failed (line 3)")]
    retries = [m["data"] for m in rec.of("retrying-1") if m["type"] == "TaskRetryScheduled"]
    assert [(r["attempt"], r["delay"]) for r in retries] == [(2, 1.0), (3, 2.0)]
    assert sorted(seen) == ["retrying-1-a-1", "retrying-1-a-2", "retrying-1-a-3"]
    assert all(len(uids) == 1 for uids in seen.values())


def test_retries_exhausted_fail_the_run(operator: OperatorProcess, kubectl: Kubectl, namespace: str) -> None:
    apply(kubectl, namespace,
          workflow("hopeless", [{"id": "a", "tool": "flaky", "with": {"succeed_on": 99}, "retry": {"limit": 1}}],
                   tools=TOOLS),
          execution("hopeless-1", "hopeless"))
    status = wait_finished(kubectl, namespace, "hopeless-1", 60)
    assert status["phase"] == "Failed"
    assert status["message"] == "task a failed after 2 attempts: RuntimeError: attempt 2 failed (line 3)"
    assert len(status["tasks"]["a"]["attempts"]) == 2


def test_task_timeout_stops_the_pod_and_retries(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                namespace: str) -> None:
    apply(kubectl, namespace,
          workflow("slow", [{"id": "a", "tool": "sleepy", "with": {"seconds": 300}, "timeout": "3s",
                             "retry": {"limit": 1}}], tools=TOOLS),
          execution("slow-1", "slow"))
    status = wait_finished(kubectl, namespace, "slow-1", 60)
    assert status["phase"] == "Failed"
    a = status["tasks"]["a"]
    assert a["attempt"] == 2 and [r["error"]["reason"] for r in a["attempts"]] == ["Timeout", "Timeout"]
    assert "exceeded the task timeout of 3s" in a["attempts"][0]["error"]["message"]
    wait_for(lambda: not pods_of(kube, namespace), 20, "the timed-out pods to be removed")


def test_workflow_timeout_ends_timed_out_with_nothing_running(operator: OperatorProcess, kubectl: Kubectl,
                                                              kube: Kube, namespace: str) -> None:
    apply(kubectl, namespace,
          workflow("deadline", [{"id": "a", "tool": "sleepy", "with": {"seconds": 300}}], tools=TOOLS, timeout="4s"),
          execution("deadline-1", "deadline"))
    status = wait_finished(kubectl, namespace, "deadline-1", 60)
    assert status["phase"] == "TimedOut" and status["error"]["reason"] == "Timeout"
    assert status["tasks"]["a"]["phase"] == "Cancelled"
    assert status["conditions"][0]["reason"] == "TimedOut"
    wait_for(lambda: not pods_of(kube, namespace), 20, "the running pod to be removed")


def test_cancel_stops_running_tasks(operator: OperatorProcess, kubectl: Kubectl, kube: Kube, devenv,
                                    namespace: str) -> None:
    with Recorder(devenv.nats.url, devenv.nats.token) as rec:
        pid = start_sleeper(kubectl, kube, namespace, "cancellable")
        kubectl.ok("patch", "wfx", "cancellable-1", "-n", namespace, "--type=merge", "-p", '{"spec":{"cancel":true}}')
        status = wait_finished(kubectl, namespace, "cancellable-1", 30)
        wait_for(lambda: not pods_of(kube, namespace), 20, "the pod to be removed")
    assert status["phase"] == "Cancelled" and status["tasks"]["a"]["phase"] == "Cancelled"
    assert not pid_alive(pid)
    types = [m["type"] for m in rec.of("cancellable-1")]
    assert "WorkflowExecutionCancelled" in types
    assert any(s.endswith(".workflow.cancel") for s, _ in rec.messages), "the cancel command went over NATS"


def test_deleting_a_running_execution_stops_its_pods(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                     namespace: str) -> None:
    pid = start_sleeper(kubectl, kube, namespace, "doomed")
    kubectl.ok("delete", "wfx", "doomed-1", "-n", namespace)
    wait_for(lambda: not pods_of(kube, namespace), 30, "the pod to be garbage-collected")
    assert not pid_alive(pid)


def test_a_missing_secret_fails_the_task_at_once_naming_it_and_is_not_retried(
        operator: OperatorProcess, kubectl: Kubectl, kube: Kube, namespace: str) -> None:
    """Issue 11.4: the task's message says why its pod waits; then it fails within seconds (the grace
    of COMPOZY_CONFIG_ERROR_GRACE_SECONDS), naming the Secret and the env that needs it, not retried."""
    tool = {"id": "needs-secret", "python": "def run(i, c):\n    return {}\n",
            "env": [{"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "k"}}}]}
    apply(kubectl, namespace, workflow("unstartable", [{"id": "a", "tool": "needs-secret", "retry": {"limit": 3}}],
                                       tools=[tool]),
          execution("unstartable-1", "unstartable"))
    waiting = wait_for(lambda: (execution_status(kubectl, namespace, "unstartable-1").get("tasks", {}).get("a", {})
                                .get("message")), 20, "the task to say why its pod waits")
    assert waiting.startswith('CreateContainerConfigError: secret "missing" not found')
    status = wait_finished(kubectl, namespace, "unstartable-1", 60)
    assert status["phase"] == "Failed"
    a = status["tasks"]["a"]
    assert a["error"]["reason"] == "CreateContainerConfigError" and a["attempt"] == 1  # never retried
    assert a["error"]["message"] == (f'the task pod cannot start: secret "missing" not found: create the Secret '
                                     f"{namespace}/missing, needed by env API_KEY (secretKeyRef missing/k), "
                                     "then retry the run")
    assert "message" not in a  # the waiting note went with the end
    wait_for(lambda: not pods_of(kube, namespace), 20, "the pod to be removed")


def test_large_outputs_go_to_the_object_store_and_templates_still_read_them(
        operator: OperatorProcess, kubectl: Kubectl, devenv, namespace: str) -> None:
    import asyncio

    import nats

    big = "def run(input, ctx):\n    return {'blob': 'x' * 40000, 'n': 7}\n"
    echo = "def run(input, ctx):\n    return input\n"
    apply(kubectl, namespace,
          workflow("bulky", [{"id": "make", "tool": "big", "onSuccess": {"next": "use"}},
                             {"id": "use", "tool": "echo", "with": {"size": "{{ tasks.make.output.blob | length }}",
                                                                   "n": "{{ tasks.make.output.n }}"}}],
                   tools=[{"id": "big", "python": big}, {"id": "echo", "python": echo}],
                   output={"size": "{{ tasks.use.output.size }}"}),
          execution("bulky-1", "bulky"))
    status = wait_finished(kubectl, namespace, "bulky-1", 60)
    assert status["phase"] == "Succeeded", status
    make = status["tasks"]["make"]
    assert "output" not in make
    ref = make["outputRef"]
    assert ref["bucket"] == "COMPOZY_OUTPUTS" and ref["size"] > 40000 and ref["digest"].startswith("SHA-256=")
    assert status["tasks"]["use"]["output"] == {"size": 40000, "n": 7} and status["output"] == {"size": 40000}

    async def stored() -> list[str]:
        nc = await nats.connect(devenv.nats.url, token=devenv.nats.token)
        try:
            infos = await (await nc.jetstream().object_store("COMPOZY_OUTPUTS")).list(ignore_deletes=True)
            return [i.name for i in infos]
        except nats.js.errors.NotFoundError:
            return []
        finally:
            await nc.close()

    assert ref["key"] in asyncio.run(stored())
    kubectl.ok("delete", "wfx", "bulky-1", "-n", namespace)
    wait_for(lambda: ref["key"] not in asyncio.run(stored()), 20, "the stored output to be removed")


def test_a_lost_node_fails_the_attempt_and_the_retry_runs_elsewhere(
        operator: OperatorProcess, kubectl: Kubectl, kube: Kube, devenv, namespace: str) -> None:
    sleeper_then_ok = ("import time\n"
                       "def run(input, ctx):\n"
                       "    if ctx.attempt == 1:\n"
                       "        time.sleep(300)\n"
                       "    return {'attempt': ctx.attempt}\n")
    devenv.start_node("process-node-doomed")
    kubectl.ok("cordon", "process-node-1")
    try:
        apply(kubectl, namespace,
              workflow("stranded", [{"id": "a", "tool": "s", "retry": {"limit": 1}}],
                       tools=[{"id": "s", "python": sleeper_then_ok}]),
              execution("stranded-1", "stranded"))
        pod = running_pod(kube, namespace)
        assert pod["spec"]["nodeName"] == "process-node-doomed"
        kubectl.ok("uncordon", "process-node-1")
        devenv.stop_node("process-node-doomed")  # its processes die; its Node goes NotReady
        status = wait_finished(kubectl, namespace, "stranded-1", 90)
    finally:
        kubectl("uncordon", "process-node-1")
        if "process-node-doomed" in devenv.nodes:
            devenv.stop_node("process-node-doomed")
        kubectl("delete", "node", "process-node-doomed", "--wait=false")
    assert status["phase"] == "Succeeded", status
    a = status["tasks"]["a"]
    assert a["attempt"] == 2 and a["output"] == {"attempt": 2}
    lost = a["attempts"][0]["error"]
    assert lost["reason"] == "NodeLost" and "process-node-doomed" in lost["message"]
