"""`compozy validate`: the operator's checks on files, offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from compozy_operator.manifests import check_documents

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WF = {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "w"},
      "spec": {"input": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
               "tools": [{"id": "t", "python": "def run(i, c): return {}"}], "tasks": [{"id": "a", "tool": "t"}]}}


def execution(**spec) -> dict:
    return {"apiVersion": "compozy.dev/v1alpha1", "kind": "WorkflowExecution", "metadata": {"name": "e"},
            "spec": spec}


def test_every_example_is_valid() -> None:
    files = sorted(str(p) for p in EXAMPLES.glob("*.yaml"))
    out = subprocess.run([sys.executable, "-m", "compozy_operator.cli", "validate", *files],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{len(files)} file(s) valid"


def test_problems_name_document_field_and_problem() -> None:
    bad_wf = {**WF, "spec": {**WF["spec"], "tasks": [{"id": "a", "tool": "nope"}]}}
    problems = check_documents("f.yaml", [bad_wf, execution(workflowRef={"name": "w"}, input={"text": 3}),
                                          {"apiVersion": "v1", "kind": "Secret"}])
    assert problems == [
        "f.yaml[0] Workflow/w: spec.tasks[0] (a).tool: tool 'nope' is not defined in spec.tools",
        "f.yaml[1] WorkflowExecution/e: spec.input.text: 3 is not of type 'string'",
    ]


def test_execution_shape_errors() -> None:
    assert check_documents("f", [execution()]) == [
        "f[0] WorkflowExecution/e: exactly one of spec.workflowRef or spec.workflow must be set"]
    assert "spec.timeout: String should match pattern" in check_documents(
        "f", [execution(workflowRef={"name": "x"}, timeout="soon")])[0]
    assert check_documents("f", [execution(workflow=WF["spec"], input={})]) == [
        "f[0] WorkflowExecution/e: spec.input: 'text' is a required property"]


def test_unreadable_yaml_is_a_problem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    out = subprocess.run([sys.executable, "-m", "compozy_operator.cli", "validate", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and str(bad) in out.stderr and "1 problem(s) in 1 file(s)" in out.stderr
