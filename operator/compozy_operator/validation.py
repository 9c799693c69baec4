"""Checks a workflow must pass before any pod starts. Pure; each problem names its field."""

from __future__ import annotations

from typing import Any

import jsonschema
from pydantic import ValidationError

from .api.models import WorkflowSpec

SUPPORTED_TYPES = {"basic"}


class SpecError(ValueError):
    """One or more problems, each ``<field path>: <problem>``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _loc(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def parse_workflow(raw: Any, prefix: str = "spec") -> WorkflowSpec:
    try:
        return WorkflowSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError([f"{_loc(prefix, err['loc'])}: {err['msg']}" for err in e.errors()]) from None


def check_workflow(wf: WorkflowSpec, prefix: str = "spec") -> list[str]:
    """Reference and graph checks the schema cannot express."""
    problems: list[str] = []
    ids = [t.id for t in wf.tasks]
    tools = {t.id for t in wf.tools or []}
    agents = {a.id: {x.id for x in a.actions} for a in wf.agents or []}
    seen: set[str] = set()
    for i, task in enumerate(wf.tasks):
        where = f"{prefix}.tasks[{i}] ({task.id})"
        if task.id in seen:
            problems.append(f"{where}.id: duplicate task id {task.id!r}")
        seen.add(task.id)
        if task.type not in SUPPORTED_TYPES:
            problems.append(f"{where}.type: {task.type} tasks are not supported yet")
            continue
        if bool(task.tool) == bool(task.agent):
            problems.append(f"{where}: a basic task needs exactly one of tool or agent")
        if task.tool and task.tool not in tools:
            problems.append(f"{where}.tool: tool {task.tool!r} is not defined in spec.tools")
        if task.agent:
            if task.agent not in agents:
                problems.append(f"{where}.agent: agent {task.agent!r} is not defined in spec.agents")
            elif task.action not in agents[task.agent]:
                problems.append(f"{where}.action: agent {task.agent!r} has no action {task.action!r}")
            else:
                problems.append(f"{where}.agent: agent tasks are not supported yet")
        for kind, tr in (("onSuccess", task.on_success), ("onError", task.on_error)):
            if tr and tr.next and tr.next not in ids:
                problems.append(f"{where}.{kind}.next: no task with id {tr.next!r}")
    for j, tool in enumerate(wf.tools or []):
        if bool(tool.python) == bool(tool.command):
            problems.append(f"{prefix}.tools[{j}] ({tool.id}): a tool needs exactly one of python or command")
    return problems


def check_input(schema: dict[str, Any] | None, value: Any, prefix: str = "spec.input") -> list[str]:
    """Validate the execution's input against the workflow's JSON Schema."""
    if not schema:
        return []
    try:
        validator_cls = jsonschema.validators.validator_for(schema)
        validator_cls.check_schema(schema)
    except jsonschema.SchemaError as e:
        return [f"workflow input schema is invalid: {e.message}"]
    validator = validator_cls(schema)
    problems = []
    for err in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path)):
        problems.append(f"{_loc(prefix, tuple(err.absolute_path))}: {err.message}")
    return problems
