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
