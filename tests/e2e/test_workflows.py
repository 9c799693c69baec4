"""WorkflowExecutions end to end: the operator dispatches task pods on the process node, the pods
report over NATS JetStream, the state manager writes status."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from pathlib import Path
from typing import Any

import nats

from compozy_operator.events import event_id
from compozy_operator.kube import Kube
from tests.helpers import Kubectl, wait_for

from compozy_operator.testenv.admission import unchecked  # past the webhook: what the run does with it
from compozy_operator.testenv.operator_process import OperatorProcess

from .conftest import OPERATOR_ENV, execution_status, wait_finished

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

PY_OK = "def run(input, ctx):\n    ctx.log.info('got %s', input)\n    return {'echo': input}\n"
PY_FAIL = "def run(input, ctx):\n    raise RuntimeError('the tool broke: ' + input['why'])\n"
PY_SLOW = "import time\ndef run(input, ctx):\n    time.sleep(input['seconds'])\n    return {'slept': input['seconds']}\n"


def workflow(name: str, tasks: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    tools = spec.pop("tools", [{"id": "ok", "python": PY_OK}, {"id": "fail", "python": PY_FAIL},
                               {"id": "slow", "python": PY_SLOW}])
    return {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": name},
            "spec": {"tools": tools, "tasks": tasks, **spec}}


def execution(name: str, workflow_name: str, input: Any = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"workflowRef": {"name": workflow_name}}
    if input is not None:
        spec["input"] = input
    return {"apiVersion": "compozy.dev/v1alpha1", "kind": "WorkflowExecution", "metadata": {"name": name},
            "spec": spec}


def apply(kubectl: Kubectl, namespace: str, *docs: dict[str, Any]) -> None:
    out = kubectl.apply(namespace, *docs)
    assert out.returncode == 0, out.stderr


def test_hello_example_with_kubectl(operator: OperatorProcess, kubectl: Kubectl, namespace: str) -> None:
    kubectl.ok("apply", "-n", namespace, "-f", str(EXAMPLES / "hello-workflow.yaml"), "-f", str(EXAMPLES / "hello-run.yaml"))
    status = wait_finished(kubectl, namespace, "hello-1")
    assert status["phase"] == "Succeeded", status
    table = kubectl.ok("get", "workflowexecutions", "-n", namespace)
    header, row = table.splitlines()[:2]
    assert header.split() == ["NAME", "WORKFLOW", "PHASE", "PROGRESS", "AGE", "DURATION", "MESSAGE"]
    assert re.match(r"hello-1\s+hello\s+Succeeded\s+2/2\s+\S+\s+\d+s\s+succeeded", row), row
    output = json.loads(kubectl.ok("get", "wfx", "hello-1", "-n", namespace, "-o", "jsonpath={.status.output}"))
    assert output == {"words": 9, "greeting": "HELLO, WORLD: YOUR TEXT HAS 9 WORDS"}
    tasks = status["tasks"]
    assert tasks["count"]["podName"] == "hello-1-count-1" and tasks["count"]["output"] == {"words": 9}
    assert status["conditions"][0]["type"] == "Succeeded" and status["conditions"][0]["status"] == "True"


def test_failing_tool_fails_the_execution_with_error_and_event(operator: OperatorProcess, kubectl: Kubectl,
                                                               kube: Kube, namespace: str) -> None:
    apply(kubectl, namespace,
          workflow("breaks", [{"id": "first", "tool": "ok", "with": {"x": 1}, "onSuccess": {"next": "second"}},
                              {"id": "second", "tool": "fail", "with": {"why": "disk full"}}]),
          execution("breaks-1", "breaks"))
    status = wait_finished(kubectl, namespace, "breaks-1")
    assert status["phase"] == "Failed"
    assert status["tasks"]["first"]["phase"] == "Succeeded"
    err = status["tasks"]["second"]["error"]
    assert err["reason"] == "ToolError" and "RuntimeError: the tool broke: disk full" in err["message"]
    assert status["error"]["task"] == "second" and "the tool broke: disk full" in status["message"]
    assert status["conditions"][0]["status"] == "False"

    def events() -> list[dict] | None:
        items = kube.get(f"/api/v1/namespaces/{namespace}/events",
                         fieldSelector="involvedObject.name=breaks-1")["items"]
        return items if {"Started", "Failed"} <= {e["reason"] for e in items} else None

    reasons = {e["reason"]: e for e in wait_for(events, 10, "Started and Failed events on the execution")}
    assert reasons["Failed"]["type"] == "Warning" and "disk full" in reasons["Failed"]["message"]
    assert "TaskFailed" in reasons


def test_bad_input_fails_before_any_pod(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                        namespace: str) -> None:
    schema = {"type": "object", "properties": {"text": {"type": "string"}, "count": {"type": "integer"}},
              "required": ["text"]}
    apply(kubectl, namespace, *unchecked(workflow("typed", [{"id": "a", "tool": "ok", "with": {}}], input=schema),
                                         execution("typed-1", "typed", {"count": "three"})))
    status = wait_finished(kubectl, namespace, "typed-1")
    assert status["phase"] == "Failed"
    assert status["error"]["reason"] == "InvalidInput"
    assert "spec.input: 'text' is a required property" in status["message"]
    assert "spec.input.count: 'three' is not of type 'integer'" in status["message"]
    assert status["conditions"][0]["message"] == status["message"]
    assert not status.get("tasks")
    assert kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"] == []


def test_missing_tool_and_missing_workflow_are_refused(operator: OperatorProcess, kubectl: Kubectl,
                                                       namespace: str) -> None:
    apply(kubectl, namespace, *unchecked(workflow("no-tool", [{"id": "a", "tool": "nope"}]),
                                         execution("no-tool-1", "no-tool"), execution("no-wf-1", "does-not-exist")))
    status = wait_finished(kubectl, namespace, "no-tool-1")
    assert status["phase"] == "Failed" and status["error"]["reason"] == "InvalidWorkflow"
    assert "workflow.spec.tasks[0] (a).tool: tool 'nope' is not defined in spec.tools" in status["message"]
    status = wait_finished(kubectl, namespace, "no-wf-1")
    assert status["phase"] == "Failed"
    assert f"spec.workflowRef.name: Workflow 'does-not-exist' not found in namespace {namespace}" in status["message"]


def test_template_error_fails_the_task_without_a_pod(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                     namespace: str) -> None:
    """A template error no check can see before the run (the input has no schema) fails the task."""
    apply(kubectl, namespace, workflow("tmpl", [{"id": "a", "tool": "ok", "with": {"x": "{{ workflow.input.nope.x }}"}}]),
          execution("tmpl-1", "tmpl"))
    status = wait_finished(kubectl, namespace, "tmpl-1")
    assert status["phase"] == "Failed" and status["tasks"]["a"]["error"]["reason"] == "TemplateError"
    assert "tasks.a.with.x" in status["tasks"]["a"]["error"]["message"]
    assert kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"] == []


class Recorder:
    """Everything published on compozy.> while the test runs, in order."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token
        self.messages: list[tuple[str, dict]] = []
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        nc = await nats.connect(self.url, token=self.token)

        async def on_msg(msg: Any) -> None:
            self.messages.append((msg.subject, json.loads(msg.data)))

        await nc.subscribe("compozy.>", cb=on_msg)
        await nc.flush()
        self.ready.set()
        while not self.stop.is_set():
            await asyncio.sleep(0.05)
        await nc.drain()

    def __enter__(self) -> Recorder:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)

    def of(self, execution: str, prefix: str = "compozy.state.") -> list[dict]:
        """An execution's events in order, each once: a core subscriber also sees the operator's
        republishing of an event (same id), which it does at a run's end for what the stored status
        does not show yet when the stream is younger than the events plus the clock skew (a fresh
        test cluster, and a run quicker than the status write: see Run.republish)."""
        seen: set[str] = set()
        return [m for s, m in self.messages if s.startswith(prefix) and m["data"].get("execution") == execution
                and not (m["id"] in seen or seen.add(m["id"]))]


def test_event_sequence_matches_the_seed_diagram(operator: OperatorProcess, kubectl: Kubectl, devenv,
                                                 namespace: str) -> None:
    with Recorder(devenv.nats.url, devenv.nats.token) as rec:
        apply(kubectl, namespace,
              workflow("seq", [{"id": "a", "tool": "ok", "with": {"v": 1}, "onSuccess": {"next": "b"}},
                               {"id": "b", "tool": "fail", "with": {"why": "no"}}]),
              execution("seq-ok", "seq"))
        apply(kubectl, namespace, workflow("seq1", [{"id": "a", "tool": "ok", "with": {"v": 1}}]),
              execution("seq-happy", "seq1"))
        wait_finished(kubectl, namespace, "seq-ok")
        wait_finished(kubectl, namespace, "seq-happy")
        wait_for(lambda: len(rec.of("seq-happy")) >= 7, 10, "all events")
    happy = [(m["type"], m["data"].get("task")) for m in rec.of("seq-happy")]
    assert happy == [
        ("WorkflowExecutionStarted", None), ("TaskDispatched", "a"), ("TaskExecutionStarted", "a"),
        ("ToolExecutionStarted", "a"), ("ToolExecutionSuccess", "a"), ("TaskExecutionSuccess", "a"),
        ("WorkflowExecutionSuccess", None),
    ]
    failing = [(m["type"], m["data"].get("task")) for m in rec.of("seq-ok")]
    assert failing[-4:] == [("ToolExecutionStarted", "b"), ("ToolExecutionFailed", "b"),
                            ("TaskExecutionFailed", "b"), ("WorkflowExecutionFailed", None)]
    uid = rec.of("seq-happy")[0]["data"]["uid"]
    for m in rec.of("seq-happy"):
        assert set(m) == {"specversion", "id", "source", "type", "time", "subject", "data"}
        assert m["id"] == event_id(uid, m["data"].get("task"), m["data"].get("attempt"), m["type"])
        assert m["subject"].startswith(f"compozy.state.{namespace}.seq-happy.")
        # who says it: the attempt on its own subject, the operator on subjects no attempt may use
        by = ("task.a.1." if m["source"] in ("compozy/task-executor", "compozy/runtime")
              else "operator.a.1." if m["data"].get("task") else "workflow.")
        assert m["subject"] == f"compozy.state.{namespace}.seq-happy.{by}{m['type']}", m["subject"]
    success = next(m for m in rec.of("seq-happy") if m["type"] == "TaskExecutionSuccess")
    assert success["data"]["output"] == {"echo": {"v": 1}} and success["source"] == "compozy/task-executor"
    logs = rec.of("seq-happy", "compozy.log.")
    assert {m["data"]["component"] for m in logs} >= {"orchestrator", "task-executor", "runtime"}
    assert all(m["type"] == "LogEmitted" for m in logs)
    for m in logs:  # an attempt's lines on its own subject, the operator's on the execution's
        component = m["data"]["component"]
        own = f"task.a.1.{component}" if component != "orchestrator" else component
        assert m["subject"] == f"compozy.log.{namespace}.seq-happy.{uid}.{own}", m["subject"]
        assert m["data"]["uid"] == uid
    assert any("got {'v': 1}" in m["data"]["message"] for m in logs if m["data"]["component"] == "runtime")


def test_duplicate_state_events_change_nothing(operator: OperatorProcess, kubectl: Kubectl, devenv,
                                               namespace: str) -> None:
    with Recorder(devenv.nats.url, devenv.nats.token) as rec:
        apply(kubectl, namespace, workflow("dup", [{"id": "a", "tool": "ok", "with": {"v": 2}}]),
              execution("dup-1", "dup"))
        before = wait_finished(kubectl, namespace, "dup-1")
        wait_for(lambda: len(rec.of("dup-1")) >= 7, 10, "all events")
    events = rec.of("dup-1")

    async def republish() -> tuple[list[bool], int]:
        nc = await nats.connect(devenv.nats.url, token=devenv.nats.token)
        js = nc.jetstream()
        dup_flags, last = [], 0
        for m in events:  # the same ids: JetStream drops them as duplicates
            ack = await js.publish(m["subject"], json.dumps(m).encode(), headers={"Nats-Msg-Id": m["id"]})
            dup_flags.append(bool(ack.duplicate))
        for m in events:  # new ids, same facts (a redelivery after the de-duplication window)
            ack = await js.publish(m["subject"], json.dumps(m).encode(), headers={"Nats-Msg-Id": m["id"] + "-again"})
            last = ack.seq
        await nc.close()
        return dup_flags, last

    async def acked_up_to() -> int:
        nc = await nats.connect(devenv.nats.url, token=devenv.nats.token)
        info = await nc.jetstream().consumer_info("COMPOZY_STATE", "compozy-state-manager")
        await nc.close()
        return info.ack_floor.stream_seq

    dup_flags, last_seq = asyncio.run(republish())
    assert all(dup_flags)
    # the state manager writes before it acks, so once everything is acked any write has happened
    wait_for(lambda: asyncio.run(acked_up_to()) >= last_seq, 15, "the state manager to consume the re-published events")
    assert execution_status(kubectl, namespace, "dup-1") == before


def _pods_ever_created(kube: Kube, namespace: str, stop: threading.Event, seen: dict[str, set[str]]) -> None:
    rv = kube.get(f"/api/v1/namespaces/{namespace}/pods")["metadata"]["resourceVersion"]
    while not stop.is_set():
        for ev in kube.watch(f"/api/v1/namespaces/{namespace}/pods", rv, timeout_seconds=5):
            if ev["type"] == "BOOKMARK":
                continue
            meta = ev["object"]["metadata"]
            rv = meta["resourceVersion"]
            seen.setdefault(meta["name"], set()).add(meta["uid"])


def test_operator_killed_mid_run_finishes_with_one_pod_per_attempt(operator: OperatorProcess, kubectl: Kubectl,
                                                                   kube: Kube, namespace: str) -> None:
    seen: dict[str, set[str]] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_pods_ever_created, args=(kube, namespace, stop, seen), daemon=True)
    watcher.start()
    try:
        tasks = [{"id": f"t{i}", "tool": "slow", "with": {"seconds": 1.5},
                  **({"onSuccess": {"next": f"t{i + 1}"}} if i < 3 else {})} for i in range(1, 4)]
        apply(kubectl, namespace, workflow("slowpoke", tasks), execution("slowpoke-1", "slowpoke"))

        def t2_running() -> bool:
            pod = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="compozy.dev/task=t2")["items"]
            return bool(pod) and pod[0].get("status", {}).get("phase") == "Running"

        wait_for(t2_running, 30, "task t2's pod to run", interval=0.05)
        operator.kill()  # SIGKILL: no cleanup, in-memory state lost
        operator.start()
        status = wait_finished(kubectl, namespace, "slowpoke-1", 60)
    finally:
        stop.set()
        watcher.join(10)
    assert status["phase"] == "Succeeded", status
    assert status["progress"] == "3/3"
    assert {t: s["attempt"] for t, s in status["tasks"].items()} == {"t1": 1, "t2": 1, "t3": 1}
    assert sorted(seen) == ["slowpoke-1-t1-1", "slowpoke-1-t2-1", "slowpoke-1-t3-1"], seen
    assert all(len(uids) == 1 for uids in seen.values()), seen


def test_a_deleted_task_pod_fails_the_task(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                           namespace: str) -> None:
    apply(kubectl, namespace, workflow("victim", [{"id": "long", "tool": "slow", "with": {"seconds": 120}}]),
          execution("victim-1", "victim"))
    wait_for(lambda: execution_status(kubectl, namespace, "victim-1").get("tasks", {}).get("long", {}).get("phase")
             == "Running", 30, "the task to run")
    kubectl.ok("delete", "pod", "victim-1-long-1", "-n", namespace, "--wait=false")
    status = wait_finished(kubectl, namespace, "victim-1", 60)
    assert status["phase"] == "Failed"
    err = status["tasks"]["long"]["error"]
    assert err["reason"] in ("PodDeleted", "Terminated"), err  # the runner reports SIGTERM itself if it can
    assert err["message"], err


def relay_under_way(kubectl: Kubectl, namespace: str, name: str, seconds: float = 5) -> str:
    """A run of `first` (a tool sleeping ``seconds``), then `second`, started; returns its name once
    `first` runs (the moment the fault tests strike)."""
    apply(kubectl, namespace,
          workflow(name, [{"id": "first", "tool": "slow", "with": {"seconds": seconds}, "onSuccess": {"next": "second"}},
                          {"id": "second", "tool": "ok", "with": {"n": 2}}]),
          execution(f"{name}-1", name))
    wait_for(lambda: execution_status(kubectl, namespace, f"{name}-1").get("tasks", {}).get("first", {})
             .get("phase") == "Running", 60, "the first task to run")
    return f"{name}-1"


def assert_relay_ran_once(status: dict[str, Any]) -> None:
    assert status["phase"] == "Succeeded", status
    assert {t: (s["phase"], s["attempt"]) for t, s in status["tasks"].items()} == {
        "first": ("Succeeded", 1), "second": ("Succeeded", 1)}, status["tasks"]


def metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{name}{re.escape(labels)} ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_a_pod_task_is_created_once_and_deleted_once(operator: OperatorProcess, devenv, kubectl: Kubectl, kube: Kube,
                                                     namespace: str, tmp_path: Path) -> None:
    """What a task costs the API server (docs/performance.md), counted by an operator of this test's
    own (``compozy_api_writes_total`` from zero): its pod is created once and deleted once (not again
    on the update its own delete causes), one status PATCH per task plus one for the run's end, one
    metadata patch for the run's labels."""
    operator.stop()
    op = OperatorProcess(devenv, extra_env=OPERATOR_ENV, log_path=tmp_path / "operator.log")
    op.start()
    try:
        apply(kubectl, namespace, workflow("frugal", [{"id": "a", "tool": "ok", "with": {}, "onSuccess": {"next": "b"}},
                                                      {"id": "b", "tool": "ok", "with": {}}]),
              execution("frugal-1", "frugal"))
        assert wait_finished(kubectl, namespace, "frugal-1")["phase"] == "Succeeded"
        wait_for(lambda: not kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"], 30, "the pods to go")
        text = op.metrics()
    finally:
        op.stop()
        operator.start()
    writes = {w: metric(text, "compozy_api_writes_total", f'{{write="{w}"}}')
              for w in ("create.pods", "delete.pods", "patch.workflowexecutions.status", "patch.workflowexecutions")}
    assert writes["create.pods"] == 2 and writes["delete.pods"] == 2, writes
    # a run applied with kubectl gets its labels (workflow, created-at: the list's filters) in one patch
    assert writes["patch.workflowexecutions"] == 1, writes
    assert 2 <= writes["patch.workflowexecutions.status"] <= 5, writes  # 3 unless a hop outlasts the deferral


def test_metrics_move_for_a_run(operator: OperatorProcess, kubectl: Kubectl, namespace: str) -> None:
    """Counters carry the run's namespace and workflow; the live gauges (read from what the operator
    drives at scrape time) show the run and its task while they run, and nothing once it ended."""
    def run(phase: str) -> str:  # the exposition sorts label names
        return f'{{namespace="{namespace}",phase="{phase}",workflow="metered"}}'

    before = operator.metrics()
    apply(kubectl, namespace, workflow("metered", [{"id": "a", "tool": "slow", "with": {"seconds": 8}}]),
          execution("metered-1", "metered"))
    running = wait_for(lambda: (m := operator.metrics()) and metric(m, "compozy_tasks_active", run("Running"))
                       == 1 and m, 30, "the task to show as running", interval=0.1)
    assert metric(running, "compozy_executions_active", run("Running")) == 1
    assert metric(running, "compozy_nats_connected", '{connection="compozy-operator"}') == 1
    assert wait_finished(kubectl, namespace, "metered-1")["phase"] == "Succeeded"
    after = operator.metrics()
    for name, labels in [("compozy_executions_total", run("Succeeded")),
                         ("compozy_tasks_total", run("Succeeded")),
                         ("compozy_task_pods_created_total", ""),
                         ("compozy_status_patches_total", ""),
                         ("compozy_reconcile_duration_seconds_count", ""),
                         ("compozy_state_events_total", '{type="TaskExecutionSuccess"}'),
                         ("compozy_execution_duration_seconds_count", run("Succeeded"))]:
        assert metric(after, name, labels) > metric(before, name, labels), name
    assert not re.search(f'^compozy_(executions|tasks)_active{{namespace="{namespace}"', after, re.M)


def test_unreachable_nats_is_retried_and_reported(operator: OperatorProcess, devenv, tmp_path: Path) -> None:
    from compozy_operator.testenv.workdir import free_port

    other = OperatorProcess(devenv, log_path=tmp_path / "operator.log",
                            extra_env={"COMPOZY_NATS_URL": f"nats://127.0.0.1:{free_port()}"})
    other.start(wait_ready=False)
    try:
        def not_ready() -> tuple[int, str] | None:
            code, text = other.readyz()
            return (code, text) if code == 503 and "unreachable" in text else None

        code, text = wait_for(not_ready, 30, "readyz to answer 503 naming the unreachable NATS")
        assert text.startswith("NATS at nats://127.0.0.1:") and code == 503
        wait_for(lambda: "retrying in" in other.log_path.read_text(), 20, "a retry message in the log")
    finally:
        other.stop()


def test_a_run_deleted_and_created_again_under_its_name_runs_afresh(operator: OperatorProcess, kubectl: Kubectl,
                                                                    namespace: str) -> None:
    """Claims and commands are the old run's until the new one's are stored: the new run's attempts
    are claimed afresh (its uid is in the claim subject) and its pods wait for their own command."""
    apply(kubectl, namespace, workflow("again", [{"id": "a", "tool": "echo", "with": {"n": "{{ workflow.input.n }}"}}],
                                      tools=[{"id": "echo", "python": PY_OK}], output={"a": "{{ tasks.a.output }}"}),
          execution("same-name", "again", {"n": 1}))
    assert wait_finished(kubectl, namespace, "same-name")["phase"] == "Succeeded"
    kubectl.ok("delete", "wfx", "same-name", "-n", namespace, "--wait")
    apply(kubectl, namespace, execution("same-name", "again", {"n": 2}))
    status = wait_finished(kubectl, namespace, "same-name")
    assert status["phase"] == "Succeeded", status
    assert status["output"] == {"a": {"echo": {"n": 2}}} and status["tasks"]["a"]["attempt"] == 1
