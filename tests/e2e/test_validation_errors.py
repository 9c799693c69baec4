"""Every validation error of the task model, end to end: refused at apply time by the CRD (schema or
CEL), or the execution ends Failed before any pod starts, with a message naming task and field."""

from __future__ import annotations

from typing import Any

import pytest

from compozy_operator.kube import Kube
from compozy_operator.testenv.admission import unchecked  # past the webhook: what the run does with it
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl

from .conftest import wait_finished
from .test_workflows import execution, workflow

T = {"id": "t", "python": "def run(i, c):\n    return {}\n"}


@pytest.mark.parametrize("name, tasks, message", [
    ("dup-ids", [{"id": "a", "tool": "t"}, {"id": "a", "tool": "t"}], "spec.tasks: task ids must be unique"),
    ("tool-and-agent", [{"id": "a", "tool": "t", "agent": "x", "action": "y"}],
     "a basic task needs exactly one of tool or agent"),
    ("neither", [{"id": "a"}], "a basic task needs exactly one of tool or agent"),
    ("no-routes", [{"id": "r", "type": "router", "condition": "x"}], "a router task needs condition and routes"),
    ("bad-duration", [{"id": "a", "tool": "t", "timeout": "5 minutes"}], "spec.tasks[0].timeout"),
    ("bad-type", [{"id": "a", "type": "loop", "tool": "t"}], "spec.tasks[0].type"),
])
def test_refused_at_apply_time(kubectl: Kubectl, namespace: str, name: str, tasks: list[dict[str, Any]],
                               message: str) -> None:
    out = kubectl.apply(namespace, workflow(name, tasks, tools=[T]))
    assert out.returncode != 0, out.stdout
    assert message in out.stderr, out.stderr


@pytest.mark.parametrize("name, tasks, message", [
    ("next-missing", [{"id": "a", "tool": "t", "onSuccess": {"next": "zz"}}],
     "workflow.spec.tasks[0] (a).onSuccess.next: no task with id 'zz'"),
    ("error-next-missing", [{"id": "a", "tool": "t", "onError": {"next": "zz"}}],
     "workflow.spec.tasks[0] (a).onError.next: no task with id 'zz'"),
    ("route-missing", [{"id": "r", "type": "router", "condition": "{{ 1 }}", "routes": {"1": "nowhere"}}],
     "workflow.spec.tasks[0] (r).routes.1: no task with id 'nowhere'"),
    ("tool-missing", [{"id": "a", "tool": "nope"}], "workflow.spec.tasks[0] (a).tool: tool 'nope' is not defined"),
    ("agent-missing", [{"id": "a", "agent": "writer", "action": "go"}],
     "workflow.spec.tasks[0] (a).agent: agent 'writer' is not defined"),
    ("endless", [{"id": "a", "tool": "t", "onSuccess": {"next": "b"}}, {"id": "b", "tool": "t", "onSuccess": {"next": "a"}}],
     "can never"),
])
def test_failed_before_any_pod(operator: OperatorProcess, kubectl: Kubectl, kube: Kube, namespace: str, name: str,
                               tasks: list[dict[str, Any]], message: str) -> None:
    out = kubectl.apply(namespace, *unchecked(workflow(name, tasks, tools=[T]), execution(f"{name}-1", name)))
    assert out.returncode == 0, out.stderr
    status = wait_finished(kubectl, namespace, f"{name}-1")
    assert status["phase"] == "Failed" and status["error"]["reason"] == "InvalidWorkflow", status
    assert message in status["message"], status["message"]
    assert status["conditions"][0]["message"] == status["message"]
    assert kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"] == []
