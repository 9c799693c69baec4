"""Templates: typed single expressions, strings otherwise, errors that name the place."""

from __future__ import annotations

import pytest

from compozy_operator.templates import TemplateError, render

CTX = {
    "workflow": {"input": {"text": "a b c", "urls": ["u1", "u2"], "n": 2}, "id": "run-1"},
    "tasks": {"count": {"output": {"words": 3}, "status": "Succeeded", "error": None}},
    "env": {"STYLE": "terse"},
}


@pytest.mark.parametrize("template, expected", [
    ("{{ workflow.input.urls }}", ["u1", "u2"]),
    ("{{ tasks.count.output.words }}", 3),
    ("  {{ workflow.input.n > 1 }} ", True),
    ("{{ tasks.count.output }}", {"words": 3}),
    ("Style {{ env.STYLE }}: {{ workflow.input.text }}", "Style terse: a b c"),
    ("{{ tasks.count.output.words }} words", "3 words"),
    ("plain text", "plain text"),
    ("{{ workflow.input.urls | length }}", 2),
    ("{{ workflow.id }}", "run-1"),
])
def test_render_types(template: str, expected: object) -> None:
    assert render(template, CTX) == expected


def test_render_walks_structures() -> None:
    value = {"a": ["{{ workflow.input.n }}", {"b": "{{ env.STYLE }}"}], "c": 5}
    assert render(value, CTX) == {"a": [2, {"b": "terse"}], "c": 5}


@pytest.mark.parametrize("template, message", [
    ("{{ missing }}", "'missing' is undefined"),
    ("x {{ missing }}", "'missing' is undefined"),
    ("{{ tasks.nope.output }}", "has no attribute 'nope'"),
    ("{{ ''.__class__.__mro__ }}", "unsafe"),
    ("{{ workflow.__class__ }}", "unsafe"),
    ("{{ 1 / 0 }}", "division by zero"),
    ("{{ unclosed", "unexpected end of template"),
])
def test_render_errors_name_the_place(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as err:
        render({"with": {"x": template}}, CTX, "tasks.t")
    assert str(err.value).startswith("tasks.t.with.x: ")
    assert message in str(err.value)


def test_a_field_named_like_a_dict_method_is_the_field() -> None:
    from compozy_operator.templates import render

    ctx = {"workflow": {"input": {"items": [1, 2], "keys": "k", "values": {"a": 1}, "get": 3}}}
    assert render("{{ workflow.input.items }}", ctx) == [1, 2]
    assert render("{{ workflow.input.keys }}-{{ workflow.input.get }}", ctx) == "k-3"
    assert render("{{ workflow.input.values.a }}", ctx) == 1


def test_a_missing_task_is_named_with_the_known_ones() -> None:
    from compozy_operator.resources.models import TaskStatus, WorkflowExecutionStatus, WorkflowSpec
    from compozy_operator.executor import FailTask, RunContext, decide

    wf = WorkflowSpec.model_validate({"tools": [{"id": "t", "python": "def run(i, c): return i"}], "tasks": [
        {"id": "count", "tool": "t", "onSuccess": {"next": "use"}},
        {"id": "use", "tool": "t", "with": {"a": "{{ tasks.frist.output }}", "b": "{{ tasks.summarize.output }}"},
         "onSuccess": {"next": "summarize"}},
        {"id": "summarize", "tool": "t"}]})
    status = WorkflowExecutionStatus(phase="Running", tasks={"count": TaskStatus(phase="Succeeded", output={})})
    (action,) = decide(wf, status, RunContext(execution="r", input={}), 0.0)
    assert isinstance(action, FailTask) and action.reason == "TemplateError"
    assert action.message.startswith(
        "tasks.use.with.a: tasks.frist: no task 'frist' (tasks: count, use, summarize) (in ")
    wf.tasks[1].with_ = {"b": "x {{ tasks.summarize.output.words }}"}
    (action,) = decide(wf, status, RunContext(execution="r", input={}), 0.0)
    assert action.message.startswith("tasks.use.with.b: tasks.summarize has not run yet (in ")


def test_tasks_keeps_its_dict_methods_and_items() -> None:
    from compozy_operator.templates import TaskFacts

    ctx = {"tasks": TaskFacts({"a": {"output": 1}}, ["a", "b"])}
    assert render("{% for k, v in tasks.items() %}{{ k }}={{ v.output }}{% endfor %}", ctx) == "a=1"
    assert render("{{ tasks['a'].output }}", ctx) == 1
    with pytest.raises(TemplateError, match="tasks.b has not run yet"):
        render("{{ tasks['b'].output }}", ctx)


@pytest.mark.parametrize("template, message", [
    ("{{ 'x' * 10**8 }}", "repeating a str of 1 100000000 times would be larger than the limit of 1048576 bytes"),
    ("{{ [1, 2] * 10**7 }}", "repeating a list of 2 10000000 times"),
    ("{{ 10 ** 10000000 }}", "10 ** 10000000 would be larger"),
    ("{{ 10 ** 5000 }}", "a number of more than 4,300 digits"),
    ("{{ 'x' | center(10**8) }}", "a width of 100000000"),
    ("{{ 'x'.zfill(10**8) }}", "a width of 100000000"),
    ("{{ '%10000000s' | format('x') }}", "the format '%10000000s'"),
    ("{{ '{:>10000000}'.format('x') }}", "the format '{:>10000000}'"),
    ("{% for i in range(100000) %}{{ 'abcdefghijk' }}{% endfor %}", "the rendered text would be larger"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "nests or recurses too deeply"),
])
def test_explosive_templates_are_refused_in_process(template: str, message: str) -> None:
    from compozy_operator.templates import TemplateLimit

    with pytest.raises(TemplateLimit) as err:
        render({"x": template}, CTX, "tasks.t.with")
    assert str(err.value).startswith("tasks.t.with.x: ") and message in str(err.value), err.value


def test_templates_are_compiled_once() -> None:
    from compozy_operator import templates

    templates._compiled_expression.cache_clear()
    for n in range(50):
        assert render("{{ workflow.input.n + 1 }}", CTX) == 3
    assert templates._compiled_expression.cache_info().misses == 1


def test_a_large_value_of_the_context_is_passed_on_but_not_made() -> None:
    from compozy_operator.templates import TemplateLimit

    big = {"blob": "b" * 2_000_000, "rows": [{"v": "r" * 100}] * 20_000}
    ctx = {**CTX, "tasks": {"make": {"output": big}}, "workflow": {"input": {"text": "t" * 600_000}}}
    assert render("{{ tasks.make.output.blob }}", ctx) is big["blob"]
    assert render("{{ tasks.make.output }}", ctx) is big
    assert render("{{ tasks.make.output.rows }}", ctx) is big["rows"]
    with pytest.raises(TemplateLimit, match="the rendered value would be larger than the limit"):
        render("{{ workflow.input.text ~ workflow.input.text }}", ctx)
    with pytest.raises(TemplateLimit, match="the rendered text would be larger than the limit"):
        render("{{ tasks.make.output.blob }}!", ctx)
