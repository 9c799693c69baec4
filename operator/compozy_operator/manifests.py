"""``compozy validate FILE...``: the operator's checks, offline, on YAML manifests.

The same code the orchestrator runs before it starts an execution (schema, references, graph,
input against the Workflow's JSON Schema), so a file that passes here is not refused later for
any reason but the cluster's own (a missing Workflow or Secret in the namespace).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .api.models import API_VERSION, WorkflowExecutionSpec, WorkflowSpec
from .validation import SpecError, check_input, check_workflow, parse_workflow


def _where(path: str, index: int, doc: dict[str, Any]) -> str:
    name = (doc.get("metadata") or {}).get("name") or (doc.get("metadata") or {}).get("generateName") or "?"
    return f"{path}[{index}] {doc.get('kind')}/{name}"


def check_documents(path: str, docs: Iterable[Any]) -> list[str]:
    """Problems found in the documents of one file, each prefixed with the document it is in."""
    problems: list[str] = []
    workflows: dict[str, WorkflowSpec] = {}
    executions: list[tuple[str, dict[str, Any]]] = []
    for i, doc in enumerate(docs):
        if not isinstance(doc, dict) or doc.get("apiVersion") != API_VERSION:
            continue  # not ours (a Secret, a ConfigMap, ...)
        where = _where(path, i, doc)
        if doc.get("kind") == "Workflow":
            try:
                wf = parse_workflow(doc.get("spec") or {})
            except SpecError as e:
                problems += [f"{where}: {p}" for p in e.problems]
                continue
            problems += [f"{where}: {p}" for p in check_workflow(wf)]
            workflows[(doc.get("metadata") or {}).get("name", "")] = wf
        elif doc.get("kind") == "WorkflowExecution":
            executions.append((where, doc))
        else:
            problems.append(f"{where}: unknown kind {doc.get('kind')!r} (expected Workflow or WorkflowExecution)")
    for where, doc in executions:
        try:
            spec = WorkflowExecutionSpec.model_validate(doc.get("spec") or {})
        except ValidationError as e:
            problems += [f"{where}: spec.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()]
            continue
        if (spec.workflow is None) == (spec.workflow_ref is None):
            problems.append(f"{where}: exactly one of spec.workflowRef or spec.workflow must be set")
            continue
        wf = spec.workflow or workflows.get(spec.workflow_ref.name if spec.workflow_ref else "")
        if spec.workflow is not None:
            problems += [f"{where}: {p}" for p in check_workflow(spec.workflow, "spec.workflow")]
        if wf is not None:  # a Workflow only in the cluster cannot be checked offline
            problems += [f"{where}: {p}" for p in check_input(wf.input, spec.input)]
    return problems


def validate_files(paths: list[str]) -> tuple[int, list[str]]:
    """(number of files read, problems) for YAML files; a file that does not parse is a problem."""
    problems: list[str] = []
    for path in paths:
        try:
            docs = list(yaml.safe_load_all(Path(path).read_text()))
        except (OSError, yaml.YAMLError) as e:
            problems.append(f"{path}: {e}")
            continue
        problems += check_documents(path, docs)
    return len(paths), problems
