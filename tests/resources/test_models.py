"""The API models on their own (no cluster)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from compozy_operator.resources.models import (Task, WorkflowExecutionSpec, WorkflowExecutionStatus, WorkflowSpec,
                                         parse_duration)

from . import example_execution, example_workflow


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90),
    ("5m", 300),
    ("1h", 3600),
    ("1h30m", 5400),
    ("250ms", 0.25),
    ("1.5h", 5400),
    ("1m30s500ms", 90.5),
    ("0s", 0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "5min", "1d", "-1s", "s", "1h 30m", " 5m", "5m ", "1.s"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_example_workflow_parses() -> None:
    spec = WorkflowSpec.model_validate(example_workflow()["spec"])
    assert [t.id for t in spec.tasks] == ["count", "route", "summarize", "fan-out", "each-url", "report-failure"]
    count, route, summarize, fan_out, each_url, _ = spec.tasks
    assert count.type == "basic" and count.tool == "word-count" and count.with_ == {"text": "{{ workflow.input.text }}"}
    assert count.retry.limit == 3 and count.retry.backoff.factor == 2 and count.on_error.next == "report-failure"
    assert route.type == "router" and route.routes == {"summary": "summarize", "fetch": "fan-out"}
    assert summarize.agent == "writer" and summarize.action == "summarize"
    assert [t.id for t in fan_out.tasks] == ["a", "b"] and fan_out.max_workers == 4
    assert each_url.task.tool == "fetch-url" and each_url.items == "{{ workflow.input.urls }}"
    assert spec.agents[0].model.base_url == "http://llm.example:8000/v1"
    assert spec.agents[0].model.api_key_secret_ref.key == "api-key"
    # camelCase on the wire round-trips (baseURL and with are explicit aliases)
    assert WorkflowSpec.model_validate(spec.dump()) == spec
    assert spec.dump()["agents"][0]["model"]["baseURL"] and spec.dump()["tasks"][0]["with"]


def test_example_execution_parses() -> None:
    spec = WorkflowExecutionSpec.model_validate(example_execution()["spec"])
    assert spec.workflow_ref.name == "review" and spec.input["mode"] == "summary" and spec.cancel is False


def test_status_defaults_and_ignores_unknown_fields() -> None:
    status = WorkflowExecutionStatus.model_validate({"phase": "Running", "somethingNew": 1,
                                                     "tasks": {"count": {"phase": "Succeeded", "podName": "p"}}})
    assert status.tasks["count"].pod_name == "p" and status.tasks["count"].attempt == 1 and status.state_seq == 0


@pytest.mark.parametrize(("where", "field"), [
    (lambda s: s, "descriptoin"),
    (lambda s: s["tasks"][0], "tol"),
    (lambda s: s["tasks"][3]["tasks"][0], "retries"),
    (lambda s: s["agents"][0]["model"], "baseUrl"),
    (lambda s: s["tools"][0], "input_schema_typo"),
])
def test_unknown_fields_are_refused(where, field: str) -> None:
    spec = example_workflow()["spec"]
    where(spec)[field] = "x"
    with pytest.raises(ValidationError) as e:
        WorkflowSpec.model_validate(spec)
    errors = e.value.errors()
    assert [err["type"] for err in errors] == ["extra_forbidden"], errors
    assert errors[0]["loc"][-1] == field
    assert field in str(e.value)


def test_unknown_field_in_execution_spec_is_refused() -> None:
    with pytest.raises(ValidationError, match="workflowref"):
        WorkflowExecutionSpec.model_validate({"workflowref": {"name": "review"}})


@pytest.mark.parametrize("task_id", ["Count", "count_words", "-count", "count-", "", "a" * 64, "tâche"])
def test_bad_task_id_is_refused(task_id: str) -> None:
    with pytest.raises(ValidationError) as e:
        Task.model_validate({"id": task_id, "tool": "t"})
    assert e.value.errors()[0]["loc"] == ("id",)


@pytest.mark.parametrize("task_id", ["a", "count", "fan-out", "x1", "a" * 63])
def test_good_task_id_is_accepted(task_id: str) -> None:
    assert Task.model_validate({"id": task_id, "tool": "t"}).id == task_id


@pytest.mark.parametrize(("where", "field", "value"), [
    (lambda s: s["tasks"][0], "timeout", "5 minutes"),
    (lambda s: s, "timeout", "30"),
    (lambda s: s["tasks"][0]["retry"]["backoff"], "initial", "1 s"),
    (lambda s: s["tasks"][0]["retry"]["backoff"], "max", "1d"),
])
def test_bad_duration_is_refused(where, field: str, value: str) -> None:
    spec = example_workflow()["spec"]
    where(spec)[field] = value
    with pytest.raises(ValidationError) as e:
        WorkflowSpec.model_validate(spec)
    errors = e.value.errors()
    assert len(errors) == 1 and errors[0]["loc"][-1] == field, errors
    assert errors[0]["msg"] == (f"Value error, invalid duration {value!r}: use a number with ms, s, m or h, "
                                "e.g. 90s, 5m, 1h30m")  # issue 11.9: words, not the regex


def test_zero_workflow_timeout_is_refused() -> None:
    spec = example_workflow()["spec"]
    spec["timeout"] = "0s"
    with pytest.raises(ValidationError, match=r"timeout\n.*must be greater than zero"):
        WorkflowSpec.model_validate(spec)


def test_unknown_task_type_is_refused() -> None:
    with pytest.raises(ValidationError) as e:
        Task.model_validate({"id": "a", "type": "loop"})
    assert e.value.errors()[0]["loc"] == ("type",)


def test_workflow_needs_tasks() -> None:
    with pytest.raises(ValidationError, match="tasks"):
        WorkflowSpec.model_validate({"tasks": []})
    with pytest.raises(ValidationError, match="tasks"):
        WorkflowSpec.model_validate({})


def test_list_limits_match_the_crd() -> None:
    # the CRD's maxItems come from these limits (CEL cost estimation needs them)
    too_many = [{"id": f"t{i}", "tool": "x"} for i in range(201)]
    with pytest.raises(ValidationError, match="at most 200"):
        WorkflowSpec.model_validate({"tasks": too_many})
    WorkflowSpec.model_validate({"tasks": too_many[:200]})
