"""Bad input is refused at ``kubectl apply``: the real kube-apiserver calls the operator's admission
webhook (registered by URL, testenv/admission.py), and the CRD's CEL rules guard a run's spec.
Workflows get a status (``Ready``) for what apply did not refuse."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from compozy_operator.admission import IMMUTABLE
from compozy_operator.kube import Kube
from compozy_operator.testenv.admission import unchecked
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl, wait_for

from .test_workflows import execution, workflow

T = {"id": "t", "python": "def run(i, c):\n    return {}\n"}
PREFIX = "/apis/compozy.dev/v1alpha1"


def refused(out: Any, *texts: str) -> None:
    assert out.returncode != 0, f"accepted:\n{out.stdout}"
    assert "denied the request" in out.stderr, out.stderr
    for text in texts:
        assert text in out.stderr, f"{text!r} not in kubectl's error:\n{out.stderr}"


def test_workflow_with_undefined_tool_is_refused(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                 namespace: str) -> None:
    out = kubectl.apply(namespace, workflow("bad", [{"id": "a", "tool": "nope"}], tools=[T]))
    refused(out, 'admission webhook "workflows.compozy.dev"',
            "spec.tasks[0] (a).tool: tool 'nope' is not defined in spec.tools")
    assert kube.get(f"{PREFIX}/namespaces/{namespace}/workflows")["items"] == []


@pytest.mark.parametrize("name, tasks, message", [
    ("next-missing", [{"id": "a", "tool": "t", "onSuccess": {"next": "zz"}}],
     "spec.tasks[0] (a).onSuccess.next: no task with id 'zz'"),
    ("route-missing", [{"id": "r", "type": "router", "condition": "{{ 1 }}", "routes": {"1": "nowhere"}}],
     "spec.tasks[0] (r).routes.1: no task with id 'nowhere'"),
    ("agent-missing", [{"id": "a", "agent": "writer", "action": "go"}],
     "spec.tasks[0] (a).agent: agent 'writer' is not defined"),
    ("endless", [{"id": "a", "tool": "t", "onSuccess": {"next": "b"}}, {"id": "b", "tool": "t", "onSuccess": {"next": "a"}}],
     "the run can never succeed from here"),
    ("no-items", [{"id": "c", "type": "collection", "task": {"id": "x", "tool": "t"}}],
     "spec.tasks[0] (c).items: a collection needs items"),
])
def test_broken_workflows_are_refused_naming_the_field(operator: OperatorProcess, kubectl: Kubectl, namespace: str,
                                                       name: str, tasks: list[dict[str, Any]], message: str) -> None:
    refused(kubectl.apply(namespace, workflow(name, tasks, tools=[T])), message)


def test_execution_input_is_checked_against_the_workflow(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                         namespace: str) -> None:
    schema = {"type": "object", "properties": {"text": {"type": "string"}, "count": {"type": "integer"}},
              "required": ["text"]}
    assert kubectl.apply(namespace, workflow("typed", [{"id": "a", "tool": "t"}], tools=[T], input=schema)).returncode == 0
    refused(kubectl.apply(namespace, execution("typed-1", "typed", {"count": "three"})),
            'admission webhook "workflowexecutions.compozy.dev"', "spec.input: 'text' is a required property",
            "spec.input.count: 'three' is not of type 'integer'")
    inline = execution("inline-1", "x")
    inline["spec"] = {"workflow": {"tools": [T], "tasks": [{"id": "a", "tool": "nope"}]}, "input": {}}
    refused(kubectl.apply(namespace, inline), "spec.workflow.tasks[0] (a).tool: tool 'nope' is not defined")
    assert kube.get(f"{PREFIX}/namespaces/{namespace}/workflowexecutions")["items"] == []
    # a Workflow that does not exist (yet) is a warning, not a refusal: the run says so if it is still missing
    out = kubectl.apply(namespace, execution("later-1", "later"))
    assert out.returncode == 0 and "Workflow 'later' not found" in out.stderr, out.stderr


@pytest.mark.parametrize("depth", [65, 1000, 5000])
def test_too_deep_input_is_refused(depth: int, operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                   namespace: str) -> None:
    """Refused by the handler with the message of run start, also past Python's default recursion
    limit (the operator raises it: the API server stores objects up to 10,000 levels deep)."""
    assert kubectl.apply(namespace, workflow("deep", [{"id": "a", "tool": "t"}], tools=[T])).returncode == 0
    # written by hand: json.dumps itself recurses and fails at this depth
    doc = json.dumps(execution("deep-1", "deep", {"v": "DEEP"})).replace('"DEEP"', "[" * (depth - 1) + "1" + "]" * (depth - 1))
    t0 = time.monotonic()
    out = kubectl("apply", "-n", namespace, "-f", "-", stdin=doc)
    elapsed = time.monotonic() - t0
    refused(out, f"spec.input: nested {depth} levels deep; at most 64 are allowed")
    print(f"depth {depth}: refused in {elapsed:.2f}s: {out.stderr.strip()[-200:]}")
    assert kube.get(f"{PREFIX}/namespaces/{namespace}/workflowexecutions")["items"] == []
    assert operator.readyz()[0] == 200


def test_too_large_input_is_refused(operator: OperatorProcess, kubectl: Kubectl, namespace: str) -> None:
    assert kubectl.apply(namespace, workflow("big", [{"id": "a", "tool": "t"}], tools=[T])).returncode == 0
    # `kubectl create`: a client-side apply copies the object into an annotation, which the API server
    # refuses above 256 KiB before any webhook is called
    doc = json.dumps(execution("big-1", "big", {"pad": "y" * 1_100_000}))
    refused(kubectl("create", "-n", namespace, "-f", "-", stdin=doc),
            "spec.input: 1100010 bytes of JSON; at most 1048576 are allowed")


def test_run_spec_is_immutable_but_cancel(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                          namespace: str) -> None:
    slow = {"id": "slow", "python": "import time\ndef run(i, c):\n    time.sleep(30)\n    return {}\n"}
    assert kubectl.apply(namespace, workflow("w", [{"id": "a", "tool": "slow"}], tools=[slow]),
                         execution("w-1", "w", {"n": 1})).returncode == 0
    # input is any JSON, which CEL cannot see: the webhook refuses it with the CEL rule's text
    refused(kubectl.apply(namespace, execution("w-1", "w", {"n": 2})), IMMUTABLE)
    out = kubectl.apply(namespace, execution("w-1", "other", {"n": 1}))  # CEL (workflowRef)
    assert out.returncode != 0 and IMMUTABLE in out.stderr, out.stderr
    cancel = execution("w-1", "w", {"n": 1})
    cancel["spec"]["cancel"] = True
    out = kubectl.apply(namespace, cancel)
    assert out.returncode == 0, out.stderr
    cancel["spec"]["cancel"] = False
    out = kubectl.apply(namespace, cancel)
    assert out.returncode != 0 and "a cancelled run stays cancelled" in out.stderr, out.stderr
    assert kubectl("label", "wfx", "w-1", "-n", namespace, "team=a").returncode == 0  # metadata may change
    got = kube.get(f"{PREFIX}/namespaces/{namespace}/workflowexecutions/w-1")
    assert got["spec"]["input"] == {"n": 1} and got["spec"]["cancel"] is True


def _ready(kubectl: Kubectl, namespace: str, name: str, want: str) -> dict[str, Any] | None:
    obj = json.loads(kubectl.ok("get", "czwf", name, "-n", namespace, "-o", "json"))
    status = obj.get("status") or {}
    conds = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
    if conds and conds[0]["status"] == want and status.get("observedGeneration") == obj["metadata"]["generation"]:
        return status
    return None


def test_valid_workflow_is_ready(operator: OperatorProcess, kubectl: Kubectl, namespace: str) -> None:
    assert kubectl.apply(namespace, workflow("good", [{"id": "a", "tool": "t"}, {"id": "b", "tool": "t"}],
                                             tools=[T], description="two tasks")).returncode == 0
    status = wait_for(lambda: _ready(kubectl, namespace, "good", "True"), 15, "Ready=True")
    assert status["taskCount"] == 2 and status["conditions"][0]["reason"] == "Valid"
    header, row = kubectl.ok("get", "czwf", "-n", namespace).splitlines()[:2]
    assert header.split() == ["NAME", "READY", "TASKS", "AGE", "DESCRIPTION"]
    assert row.split()[:3] == ["good", "True", "2"] and row.endswith("two tasks"), row


def test_bypassed_broken_workflow_is_not_ready(operator: OperatorProcess, kubectl: Kubectl, namespace: str) -> None:
    """Stored without the webhook (as with it off or unreachable under failurePolicy Ignore)."""
    bad = workflow("broken", [{"id": "a", "tool": "nope"}, {"id": "b", "agent": "x", "action": "y"}], tools=[T])
    assert kubectl.apply(namespace, *unchecked(bad)).returncode == 0
    status = wait_for(lambda: _ready(kubectl, namespace, "broken", "False"), 15, "Ready=False")
    cond = status["conditions"][0]
    assert cond["reason"] == "InvalidSpec"
    assert "spec.tasks[0] (a).tool: tool 'nope' is not defined in spec.tools" in cond["message"]
    assert "spec.tasks[1] (b).agent: agent 'x' is not defined in spec.agents" in cond["message"]
    wide = kubectl.ok("get", "czwf", "broken", "-n", namespace, "-o", "wide")
    assert "False" in wide and "tool 'nope' is not defined" in wide, wide
    fixed = workflow("broken", [{"id": "a", "tool": "t"}], tools=[T])  # fixing it passes the webhook
    assert kubectl.apply(namespace, *unchecked(fixed)).returncode == 0
    status = wait_for(lambda: _ready(kubectl, namespace, "broken", "True"), 15, "Ready=True after the fix")
    assert status["observedGeneration"] == 2 and status["taskCount"] == 1
