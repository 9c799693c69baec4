"""The generated CRDs: up to date, structural, and accepted and enforced by a real kube-apiserver."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from compozy_operator.resources import crd
from compozy_operator.resources.models import (GROUP, VERSION, WorkflowExecutionSpec, WorkflowExecutionStatus, WorkflowSpec)
from compozy_operator.testenv import DevEnvironment, Kube

from tests.helpers import CRD_DIR, CRD_NAMES, Kubectl, apply_crds, wait_for

from . import example_execution, example_workflow

PREFIX = f"/apis/{GROUP}/{VERSION}"


# --- the files -----------------------------------------------------------------------------------------

def test_crds_are_up_to_date() -> None:
    generated = crd.generate()
    assert sorted(generated) == sorted(f"{name}.yaml" for name in CRD_NAMES)
    on_disk = {p.name: p.read_text() for p in CRD_DIR.glob("*.yaml")}
    stale = sorted(name for name in generated if on_disk.get(name) != generated[name])
    assert not stale, f"crds/{', crds/'.join(stale)} differ from the models: run `python -m compozy_operator.resources.crd`"


def test_generated_text_is_deterministic_and_marked() -> None:
    assert crd.generate() == crd.generate()
    for name, text in crd.generate().items():
        assert text.startswith("# Generated from compozy_operator/resources/models.py by "
                               "`python -m compozy_operator.resources.crd`"), name
        assert "&id" not in text and "*id" not in text, f"{name}: YAML anchors/aliases"
        assert yaml.safe_load(text)["metadata"]["name"] == name.removesuffix(".yaml")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compozy_operator.resources.crd", *args], capture_output=True, text=True)


def test_cli_writes_and_checks(tmp_path: Path) -> None:
    missing = _cli("--check", "--out", str(tmp_path))
    assert missing.returncode == 1
    assert "workflows.compozy.dev.yaml" in missing.stderr and "workflowexecutions.compozy.dev.yaml" in missing.stderr
    assert _cli("--out", str(tmp_path)).returncode == 0
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == crd.generate()
    assert _cli("--check", "--out", str(tmp_path)).returncode == 0
    (tmp_path / "workflows.compozy.dev.yaml").write_text("# edited by hand\n")
    stale = _cli("--check", "--out", str(tmp_path))
    assert stale.returncode == 1
    assert "workflows.compozy.dev.yaml" in stale.stderr and "workflowexecutions" not in stale.stderr
    assert "python -m compozy_operator.resources.crd" in stale.stderr


# --- the schemas ---------------------------------------------------------------------------------------

def _docs() -> dict[str, dict[str, Any]]:
    return {d["spec"]["names"]["kind"]: d for d in crd.crds()}


def _root(kind: str) -> dict[str, Any]:
    return _docs()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


JUNCTORS = ("anyOf", "allOf", "oneOf", "not")


def _walk(node: dict[str, Any], path: str, visit: Callable[[dict[str, Any], str], None],
          junctor: Callable[[dict[str, Any], str], None] | None = None) -> None:
    """Visit every schema node (not the field names under ``properties``: a field may be called default).

    Nodes inside anyOf/allOf/oneOf/not (value validations) go to ``junctor`` instead of ``visit``.
    """
    visit(node, path)
    for name, sub in node.get("properties", {}).items():
        _walk(sub, f"{path}.{name}", visit, junctor)
    if isinstance(node.get("items"), dict):
        _walk(node["items"], f"{path}[*]", visit, junctor)
    if isinstance(node.get("additionalProperties"), dict):
        _walk(node["additionalProperties"], f"{path}.*", visit, junctor)
    for key in JUNCTORS:
        subs = node.get(key, [])
        for i, sub in enumerate([subs] if isinstance(subs, dict) else subs):
            _walk(sub, f"{path}<{key}{i}>", junctor or (lambda n, p: None), junctor)


@pytest.mark.parametrize("kind", ["Workflow", "WorkflowExecution"])
def test_schemas_are_structural(kind: str) -> None:
    problems: list[str] = []

    def visit(node: dict[str, Any], path: str) -> None:
        for key in ("$ref", "$defs", "default", "title", "const", "nullable"):
            if key in node:
                problems.append(f"{path}: has {key}")
        if "anyOf" in node and any("type" in b for b in node["anyOf"]):
            problems.append(f"{path}: anyOf with types")
        if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            problems.append(f"{path}: neither type nor x-kubernetes-preserve-unknown-fields")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties and additionalProperties together")
        if node.get("additionalProperties") is False:
            problems.append(f"{path}: additionalProperties: false")
        if path.startswith(".spec") and node.get("type") == "array" and "maxItems" not in node:
            problems.append(f"{path}: list without maxItems (CEL cost estimation needs it)")

    def junctor(node: dict[str, Any], path: str) -> None:
        # structural: value validations only (no types, descriptions, defaults, extensions)
        for key in node:
            if key in ("type", "description", "default", "title", "nullable", "additionalProperties", "$ref") \
                    or key.startswith("x-kubernetes-"):
                problems.append(f"{path}: {key} inside a junctor")

    _walk(_root(kind), "", visit, junctor)
    assert not problems, "\n".join(problems)


def test_preserve_unknown_fields_only_where_the_model_says_any() -> None:
    found: list[str] = []
    _walk(_root("WorkflowExecution")["properties"]["status"], ".status",
          lambda node, path: found.append(path) if node.get("x-kubernetes-preserve-unknown-fields") else None)
    assert found == [".status.output", ".status.tasks.*.output", ".status.snapshot.spec", ".status.snapshot.input"]
    found.clear()
    _walk(_root("Workflow")["properties"]["spec"], ".spec",
          lambda node, path: found.append(path) if node.get("x-kubernetes-preserve-unknown-fields") else None)
    assert ".spec.input" in found and ".spec.output" in found and ".spec.tasks[*].with" in found
    assert ".spec.tasks[*].id" not in found and ".spec.tasks[*].retry" not in found


def test_task_schema_is_inlined_two_levels_deep() -> None:
    tasks = _root("Workflow")["properties"]["spec"]["properties"]["tasks"]
    top = tasks["items"]
    assert tasks["maxItems"] == 200 and tasks["minItems"] == 1
    assert top["properties"]["type"]["enum"] == ["basic", "router", "parallel", "collection"]
    assert top["properties"]["routes"]["additionalProperties"] == {"type": "string"}
    for child in (top["properties"]["tasks"]["items"], top["properties"]["task"]):  # level 2: full schema
        assert child["type"] == "object" and "id" in child["properties"] and child["required"] == ["id"]
        assert child["x-kubernetes-validations"] == top["x-kubernetes-validations"]
        for grandchild in (child["properties"]["tasks"]["items"], child["properties"]["task"]):  # level 3: open
            assert grandchild["type"] == "object" and grandchild["x-kubernetes-preserve-unknown-fields"] is True
            assert "properties" not in grandchild


def test_camel_case_names_and_descriptions_from_the_models() -> None:
    spec = _root("Workflow")["properties"]["spec"]
    task = spec["properties"]["tasks"]["items"]["properties"]
    assert {"onSuccess", "onError", "maxWorkers", "with", "default"} <= set(task)
    assert "baseURL" in spec["properties"]["agents"]["items"]["properties"]["model"]["properties"]
    assert spec["properties"]["tasks"]["description"] == WorkflowSpec.model_fields["tasks"].description
    ex = _root("WorkflowExecution")
    assert ex["description"] and ex["properties"]["spec"]["description"]
    assert ex["properties"]["spec"]["properties"]["workflowRef"]["description"] == (
        WorkflowExecutionSpec.model_fields["workflow_ref"].description)
    # the inline workflow has the same fields as a Workflow's spec
    assert ex["properties"]["spec"]["properties"]["workflow"]["properties"] == spec["properties"]


def test_converter_translates_and_refuses() -> None:
    from pydantic import BaseModel, Field

    class Small(BaseModel):
        rate: float = Field(1, gt=0, lt=10, title="Rate", description="A rate.")
        kind: Literal["a"] = "a"
        labels: dict[str, str] | None = None

    assert crd.structural_schema(Small, "spec") == {
        "type": "object",
        "properties": {
            "rate": {"description": "A rate.", "type": "number", "minimum": 0, "maximum": 10,
                     "exclusiveMinimum": True, "exclusiveMaximum": True},
            "kind": {"type": "string", "enum": ["a"]},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    }

    class Union(BaseModel):
        value: int | str

    with pytest.raises(crd.SchemaError, match="spec.value: anyOf with several non-null branches"):
        crd.structural_schema(Union, "spec")


# --- against the apiserver -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kubectl(devenv: DevEnvironment) -> Iterator[Kubectl]:
    k = Kubectl(devenv.bindir, devenv.kubeconfig)
    apply_crds(k)
    yield k


def test_crds_apply_and_are_established(kubectl: Kubectl, kube: Kube) -> None:
    for name in CRD_NAMES:
        obj = kube.get(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        conditions = {c["type"]: c["status"] for c in obj["status"]["conditions"]}
        assert conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True", conditions
        assert conditions.get("NonStructuralSchema") is None, obj["status"]["conditions"]
    # applying again changes nothing (other test modules apply the same files)
    again = kubectl.ok("apply", "-f", str(CRD_DIR))
    assert again.count("unchanged") == len(CRD_NAMES), again


def _explain(kubectl: Kubectl, what: str) -> str:
    def run() -> str | None:
        proc = kubectl("explain", what)
        return proc.stdout if proc.returncode == 0 else None

    return " ".join(wait_for(run, 30, f"kubectl explain {what}", interval=0.2).split())


def _words(text: str | None) -> str:
    return " ".join((text or "").split())


def test_kubectl_explain_shows_the_models_descriptions(kubectl: Kubectl) -> None:
    ref = _explain(kubectl, "workflowexecution.spec.workflowRef")
    assert _words(WorkflowExecutionSpec.model_fields["workflow_ref"].description) in ref
    assert "name" in ref and _words("Name of a Workflow in the execution's namespace.") in ref
    tasks = _explain(kubectl, "workflow.spec.tasks")
    assert _words(WorkflowSpec.model_fields["tasks"].description) in tasks
    assert "onSuccess" in tasks and "maxWorkers" in tasks
    kind = _explain(kubectl, "workflow")
    assert "Workflow is a reusable definition" in kind and f"{GROUP}" in kind
    spec = _explain(kubectl, "workflowexecution.spec")
    assert "workflowRef" in spec and "What to run" in spec
    phase = _explain(kubectl, "wfx.status.phase")
    assert "ENUM:" in phase and "TimedOut" in phase
    assert _words(WorkflowExecutionStatus.model_fields["phase"].description) in phase


def test_short_names_and_category(kubectl: Kubectl, namespace: str) -> None:
    for what in ("wfx", "czwf", "compozy", "workflows", "workflowexecutions"):
        proc = kubectl("get", what, "-n", namespace)
        assert proc.returncode == 0, f"kubectl get {what}: {proc.stderr}"
        assert "No resources found" in proc.stderr


def _columns(header_line: str) -> list[str]:
    return header_line.split()


def test_valid_objects_are_accepted(kubectl: Kubectl, kube: Kube, namespace: str) -> None:
    wf, ex = example_workflow(), example_execution()
    out = kubectl.apply(namespace, wf, ex)
    assert out.returncode == 0, out.stderr
    assert "workflow.compozy.dev/review created" in out.stdout
    assert "workflowexecution.compozy.dev/review-1 created" in out.stdout

    # the apiserver stored what was sent: no defaults injected, nothing pruned
    stored = kube.get(f"{PREFIX}/namespaces/{namespace}/workflows/review")
    assert stored["spec"] == wf["spec"]
    assert "type" not in stored["spec"]["tasks"][0]
    assert WorkflowSpec.model_validate(stored["spec"]).tasks[0].type == "basic"  # the model supplies defaults
    stored_ex = kube.get(f"{PREFIX}/namespaces/{namespace}/workflowexecutions/review-1")
    assert stored_ex["spec"] == ex["spec"] and "status" not in stored_ex

    # an inline workflow is accepted too
    inline = example_execution()
    inline["metadata"]["name"] = "inline-1"
    inline["spec"] = {"workflow": example_workflow()["spec"], "input": {"text": "t"}}
    out = kubectl.apply(namespace, inline)
    assert out.returncode == 0, out.stderr

    # the status subresource takes what the operator writes (a model's dump)
    status = WorkflowExecutionStatus.model_validate({
        "phase": "Running", "workflow": "review", "progress": "2/5", "startedAt": "2025-01-01T00:00:00Z",
        "duration": "1m12s", "message": "running each-url",
        "tasks": {"count": {"phase": "Succeeded", "podName": "review-1-count-1", "output": {"words": 3}},
                  "summarize": {"phase": "Failed", "attempt": 2, "error": {"reason": "Timeout", "message": "2m"},
                                "attempts": [{"attempt": 1, "phase": "Failed"}]},
                  "each-url[0]": {"phase": "Running", "outputRef": {"bucket": "b", "key": "k", "size": 1,
                                                                    "digest": "sha-256=x"}}},
        "conditions": [{"type": "Succeeded", "status": "Unknown", "reason": "Running",
                        "lastTransitionTime": "2025-01-01T00:00:00Z"}],
        "observedGeneration": 1, "stateSeq": 42,
    }).dump()
    kube.merge_patch(f"{PREFIX}/namespaces/{namespace}/workflowexecutions/review-1/status", {"status": status})
    stored_ex = kube.get(f"{PREFIX}/namespaces/{namespace}/workflowexecutions/review-1")
    assert stored_ex["status"] == status

    lines = kubectl.ok("get", "wfx", "-n", namespace).splitlines()
    assert _columns(lines[0]) == ["NAME", "WORKFLOW", "PHASE", "PROGRESS", "AGE", "DURATION", "MESSAGE"]
    row = next(line for line in lines if line.startswith("review-1 "))
    assert row.split()[:4] == ["review-1", "review", "Running", "2/5"]
    assert row.split()[5:] == ["1m12s", "running", "each-url"]

    lines = kubectl.ok("get", "czwf", "-n", namespace).splitlines()
    assert _columns(lines[0]) == ["NAME", "READY", "TASKS", "AGE", "DESCRIPTION"]  # status: no operator here
    assert lines[1].startswith("review") and "Summarize a text and count its words" in lines[1]

    listed = kubectl.ok("get", "compozy", "-n", namespace, "-o", "name").split()
    assert sorted(listed) == ["workflow.compozy.dev/review", "workflowexecution.compozy.dev/inline-1",
                              "workflowexecution.compozy.dev/review-1"]


def _mutated_workflow(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    wf = example_workflow()
    change(wf["spec"])
    return wf


def _mutated_execution(change: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    ex = example_execution()
    change(ex["spec"])
    return ex


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change that sets ``value`` at ``path`` ('tasks.0.timeout') inside a spec."""
    *parents, last = path.split(".")

    def change(spec: dict[str, Any]) -> None:
        node: Any = spec
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        node[int(last) if last.isdigit() else last] = value

    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    *parents, last = path.split(".")

    def change(spec: dict[str, Any]) -> None:
        node: Any = spec
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        del node[last]

    return change


INVALID = {
    "execution-with-both": (
        _mutated_execution(_set("workflow", example_workflow()["spec"])),
        ["exactly one of spec.workflowRef or spec.workflow must be set"]),
    "execution-with-neither": (
        _mutated_execution(_drop("workflowRef")),
        ["exactly one of spec.workflowRef or spec.workflow must be set"]),
    "duplicate-task-ids": (
        _mutated_workflow(_set("tasks.2.id", "count")),
        ["spec.tasks: task ids must be unique"]),
    "duplicate-task-ids-inline": (
        _mutated_execution(lambda s: (s.pop("workflowRef"), s.update(workflow=_mutated_workflow(
            _set("tasks.5.id", "route"))["spec"]))),
        ["spec.workflow.tasks: task ids must be unique"]),
    "basic-with-tool-and-agent": (
        _mutated_workflow(lambda s: s["tasks"][0].update(agent="writer", action="summarize")),
        ["spec.tasks[0]", "a basic task needs exactly one of tool or agent"]),
    "basic-with-neither": (
        _mutated_workflow(_drop("tasks.5.tool")),
        ["spec.tasks[5]", "a basic task needs exactly one of tool or agent"]),
    "child-with-tool-and-agent": (
        _mutated_workflow(_set("tasks.3.tasks.1.agent", "writer")),
        ["spec.tasks[3].tasks[1]", "a basic task needs exactly one of tool or agent"]),
    "agent-without-action": (
        _mutated_workflow(_drop("tasks.2.action")),
        ["spec.tasks[2]", "agent requires action"]),
    "action-without-agent": (
        _mutated_workflow(_set("tasks.0.action", "summarize")),
        ["spec.tasks[0]", "agent requires action (and action requires agent)"]),
    "router-without-routes": (
        _mutated_workflow(_drop("tasks.1.routes")),
        ["spec.tasks[1]", "a router task needs condition and routes"]),
    "parallel-without-tasks": (
        _mutated_workflow(_drop("tasks.3.tasks")),
        ["spec.tasks[3]", "a parallel task needs tasks"]),
    "collection-without-task": (
        _mutated_workflow(_drop("tasks.4.task")),
        ["spec.tasks[4]", "a collection task needs task (the task to run for each item)"]),
    "collection-child-without-tool": (
        _mutated_workflow(_drop("tasks.4.task.tool")),
        ["spec.tasks[4].task", "a basic task needs exactly one of tool or agent"]),
    "bad-duration": (
        _mutated_workflow(_set("tasks.0.timeout", "5 minutes")),
        ["spec.tasks[0].timeout", '"5 minutes" must be a duration: a number with ms, s, m or h, e.g. 90s']),
    "zero-workflow-timeout": (
        _mutated_workflow(_set("timeout", "0s")),
        ["spec.timeout", "spec.timeout must be greater than zero"]),
    "unknown-task-type": (
        _mutated_workflow(_set("tasks.1.type", "loop")),
        ["spec.tasks[1].type", 'Unsupported value: "loop"', '"router"']),
    "bad-task-id": (
        _mutated_workflow(_set("tasks.0.id", "Count_Words")),
        ["spec.tasks[0].id", "should match"]),
    "unknown-field": (
        _mutated_workflow(_set("tasks.0.tol", "word-count")),
        ['unknown field "spec.tasks[0].tol"']),
    "no-tasks": (
        _mutated_workflow(_set("tasks", [])),
        ["spec.tasks", "should have at least 1 items"]),
    # cleanup (docs/cleanup.md)
    "negative-ttl": (
        _mutated_workflow(_set("ttlSecondsAfterFinished", -1)),
        ["spec.ttlSecondsAfterFinished", "should be greater than or equal to 0"]),
    "ttl-not-a-number": (
        _mutated_execution(_set("ttlSecondsAfterFinished", "1h")),
        ["spec.ttlSecondsAfterFinished", 'must be of type integer']),
    "negative-history": (
        _mutated_workflow(_set("historyLimit", {"succeeded": 3, "failed": -2})),
        ["spec.historyLimit.failed", "should be greater than or equal to 0"]),
    "unknown-history-field": (
        _mutated_workflow(_set("historyLimit", {"success": 3})),
        ['unknown field "spec.historyLimit.success"']),
    "history-of-an-inline-workflow": (
        _mutated_execution(lambda s: (s.pop("workflowRef"), s.update(workflow={
            **example_workflow()["spec"], "historyLimit": {"succeeded": 1}}))),
        ["spec.workflow.historyLimit", "only a Workflow keeps a history of runs"]),
    "unknown-pod-cleanup-policy": (
        _mutated_workflow(_set("podCleanup", {"policy": "OnSuccess"})),
        ["spec.podCleanup.policy", 'Unsupported value: "OnSuccess"', '"OnPodSuccess"']),
    "bad-pod-cleanup-delay": (
        _mutated_workflow(_set("podCleanup", {"policy": "Never", "delay": "30"})),
        ["spec.podCleanup.delay", '"30" must be a duration']),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_objects_are_refused(kubectl: Kubectl, kube: Kube, namespace: str, case: str) -> None:
    obj, expected = INVALID[case]
    out = kubectl.apply(namespace, obj)
    assert out.returncode != 0, f"{case}: accepted:\n{out.stdout}"
    for text in expected:
        assert text in out.stderr, f"{case}: {text!r} not in kubectl's error:\n{out.stderr}"
    plural = "workflows" if obj["kind"] == "Workflow" else "workflowexecutions"
    assert kube.get(f"{PREFIX}/namespaces/{namespace}/{plural}")["items"] == []


def test_execution_spec_is_immutable_but_cancel(kubectl: Kubectl, kube: Kube, namespace: str) -> None:
    """CEL transition rules (no webhook here): workflowRef/workflow/timeout cannot change, cancel can
    be set, and cannot go back from true to false."""
    obj = _mutated_execution(lambda s: None)
    assert kubectl.apply(namespace, obj).returncode == 0
    name = obj["metadata"]["name"]
    out = kubectl.apply(namespace, _mutated_execution(_set("workflowRef.name", "other")))
    assert out.returncode != 0 and crd.IMMUTABLE_MESSAGE in out.stderr, out.stderr
    out = kubectl.apply(namespace, _mutated_execution(_set("timeout", "9m")))
    assert out.returncode != 0 and crd.IMMUTABLE_MESSAGE in out.stderr, out.stderr
    assert kubectl.apply(namespace, _mutated_execution(_set("cancel", True))).returncode == 0
    out = kubectl.apply(namespace, _mutated_execution(_set("cancel", False)))
    assert out.returncode != 0 and "a cancelled run stays cancelled" in out.stderr, out.stderr
    got = kube.get(f"{PREFIX}/namespaces/{namespace}/workflowexecutions/{name}")
    assert got["spec"]["cancel"] is True and got["spec"]["workflowRef"] == obj["spec"]["workflowRef"]


def test_an_executions_ttl_may_change_at_any_time(kubectl: Kubectl, kube: Kube, namespace: str) -> None:
    """Unlike the rest of the spec (CEL transition rules; no webhook here): raised to keep a run
    longer, lowered, removed."""
    obj = _mutated_execution(_set("ttlSecondsAfterFinished", 60))
    assert kubectl.apply(namespace, obj).returncode == 0
    path = f"{PREFIX}/namespaces/{namespace}/workflowexecutions/{obj['metadata']['name']}"
    for value in (3600, 0, None):
        out = kubectl.apply(namespace, _mutated_execution(lambda s: s.update(
            {} if value is None else {"ttlSecondsAfterFinished": value})))
        assert out.returncode == 0, out.stderr
        assert kube.get(path)["spec"].get("ttlSecondsAfterFinished") == value


def test_retry_only_of_an_ended_run_one_at_a_time(kubectl: Kubectl, kube: Kube, namespace: str) -> None:
    """The CRD's retry rules (no webhook, no operator here; the status is written by hand, as the
    operator would): spec.retry goes up by one, only on a run that ended without success and whose
    previous retry has begun; a cancelled run is retried with its cancel removed in the same patch."""
    obj = _mutated_execution(lambda s: None)
    assert kubectl.apply(namespace, obj).returncode == 0
    name = obj["metadata"]["name"]
    path = f"{PREFIX}/namespaces/{namespace}/workflowexecutions/{name}"

    def retry(spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return kubectl("patch", "wfx", name, "-n", namespace, "--type=merge", "-p", json.dumps({"spec": spec}))

    def status(**fields: Any) -> None:
        kube.merge_patch(path + "/status", {"status": fields})

    out = retry({"retry": 1})
    assert out.returncode != 0 and "only a run that ended Failed, TimedOut or Cancelled can be retried; this one " \
        "is Pending" in out.stderr, out.stderr
    for phase in ("Running", "Succeeded"):
        status(phase=phase)
        out = retry({"retry": 1})
        assert out.returncode != 0 and f"this one is {phase}" in out.stderr, out.stderr
    status(phase="Failed")
    assert retry({"retry": 1}).returncode == 0
    out = retry({"retry": 2})  # the operator has not begun retry 1 yet
    assert out.returncode != 0 and "the previous retry has not begun yet" in out.stderr, out.stderr
    status(retries=1)
    for bad in (3, 0):
        out = retry({"retry": bad})
        assert out.returncode != 0 and crd.RETRY_UP_MESSAGE in out.stderr, out.stderr
    assert retry({"retry": 2}).returncode == 0
    # a cancelled run: cancel stays unless the same patch retries it; a retry must clear it
    status(phase="Running", retries=2)
    assert retry({"cancel": True}).returncode == 0
    status(phase="Cancelled")
    out = retry({"cancel": False})
    assert out.returncode != 0 and "a cancelled run stays cancelled" in out.stderr, out.stderr
    out = retry({"retry": 3})
    assert out.returncode != 0 and crd.RETRY_CANCEL_MESSAGE in out.stderr, out.stderr
    assert retry({"retry": 3, "cancel": None}).returncode == 0
    got = kube.get(path)
    assert got["spec"]["retry"] == 3 and "cancel" not in got["spec"], got["spec"]
