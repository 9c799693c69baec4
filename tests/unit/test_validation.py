"""Workflow and input checks name the field and the problem."""

from __future__ import annotations

import pytest

from compozy_operator.validation import SpecError, check_input, check_workflow, parse_workflow

BASE = {"tools": [{"id": "t", "python": "def run(i, c): return {}"}], "tasks": [{"id": "a", "tool": "t"}]}


def wf(**changes):
    return parse_workflow({**BASE, **changes})


def test_valid_workflow_has_no_problems() -> None:
    assert check_workflow(wf()) == []


@pytest.mark.parametrize("tasks, problem", [
    ([{"id": "a", "tool": "missing"}], "spec.tasks[0] (a).tool: tool 'missing' is not defined in spec.tools"),
    ([{"id": "a", "tool": "t"}, {"id": "a", "tool": "t"}], "spec.tasks[1] (a).id: duplicate task id 'a'"),
    ([{"id": "a", "tool": "t", "onSuccess": {"next": "zz"}}], "spec.tasks[0] (a).onSuccess.next: no task with id 'zz'"),
    ([{"id": "a"}], "spec.tasks[0] (a): a basic task needs exactly one of tool or agent"),
    ([{"id": "a", "tool": "t", "agent": "x", "action": "y"}], "a basic task needs exactly one of tool or agent"),
    ([{"id": "a", "agent": "x", "action": "y"}], "spec.tasks[0] (a).agent: agent 'x' is not defined"),
])
def test_problems_name_task_and_field(tasks, problem) -> None:
    assert any(problem in p for p in check_workflow(wf(tasks=tasks))), check_workflow(wf(tasks=tasks))


def test_tool_needs_exactly_one_body() -> None:
    problems = check_workflow(wf(tools=[{"id": "t"}]))
    assert problems == ["spec.tools[0] (t): a tool needs exactly one of python or command"]


@pytest.mark.parametrize("raw, fragment", [
    ({"tasks": []}, "spec.tasks: List should have at least 1 item"),
    ({"tasks": [{"id": "A_b", "tool": "t"}]}, "spec.tasks[0].id: String should match pattern"),
    ({"tasks": [{"id": "a", "tool": "t", "timeout": "5 minutes"}]}, "spec.tasks[0].timeout: String should match"),
    ({"tasks": [{"id": "a", "tool": "t", "nxet": 1}]}, "spec.tasks[0].nxet: Extra inputs are not permitted"),
])
def test_parse_errors_name_the_field(raw, fragment) -> None:
    with pytest.raises(SpecError) as err:
        parse_workflow(raw)
    assert fragment in str(err.value)


def test_input_validated_against_schema() -> None:
    schema = {"type": "object", "properties": {"text": {"type": "string"}, "n": {"type": "integer"}},
              "required": ["text"]}
    assert check_input(schema, {"text": "x", "n": 1}) == []
    assert check_input(schema, {"n": "one"}) == ["spec.input: 'text' is a required property",
                                                 "spec.input.n: 'one' is not of type 'integer'"]
    assert check_input(None, {"anything": 1}) == []
    assert "input schema is invalid" in check_input({"type": "nonsense"}, {})[0]
