"""Static template checks: errors for what fails on every run, warnings for what may, no noise."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from compozy_operator.template_check import ERROR, WARNING, check_templates
from compozy_operator.validation import check_workflow, parse_workflow, workflow_warnings

TOOLS = [{"id": "t", "python": "def run(i, c): return {}"}]
AGENTS = [{"id": "w", "model": {"name": "m"}, "instructions": "Be {{ env.STYLE }}.",
           "actions": [{"id": "go", "prompt": "{{ input.text }} {{ tasks.a.output }}"}]}]


def issues(tasks, **spec) -> list[tuple[str, str]]:
    agents = AGENTS if any(t.get("agent") for t in tasks) else []
    wf = parse_workflow({"tools": TOOLS, "agents": agents, "env": {"STYLE": "terse"}, "tasks": tasks, **spec})
    return [(i.severity, i.message) for i in check_templates(wf)]


def task(tid: str, nxt: str | None = None, **with_) -> dict:
    return {"id": tid, "tool": "t", "with": with_, **({"onSuccess": {"next": nxt}} if nxt else {})}


@pytest.mark.parametrize("tasks, expected", [
    ([task("count", "summarize"), task("summarize", text="{{ tasks.frist.output }}")],
     "spec.tasks[1] (summarize).with.text: tasks.frist does not exist (tasks: count, summarize)"),
    ([task("a", "b", x="{{ tasks.b.output }}"), task("b")],
     "spec.tasks[0] (a).with.x: tasks.b cannot have run before a: no path from tasks[0] runs it first"),
    ([task("a", x="{{ tasks.a.output }}")],
     "spec.tasks[0] (a).with.x: tasks.a: refers to its own task: a has no status before it ends"),
    ([task("a", x="{{ item }}")], "spec.tasks[0] (a).with.x: item is only defined in a collection's filter and task"),
    ([task("a", x="{{ input.text }}")], "spec.tasks[0] (a).with.x: input is only defined in agents' instructions"),
    ([task("a", x="{{ x | nope }}")], "spec.tasks[0] (a).with.x: No filter named 'nope'."),
    ([task("a", x="{{ x is nope }}")], "spec.tasks[0] (a).with.x: No test named 'nope'."),
    ([task("a", x="{{ oops")], "spec.tasks[0] (a).with.x: template syntax error: unexpected end of template"),
    ([task("a", x="{{ env.NOPE }}")], "spec.tasks[0] (a).with.x: env.NOPE is not defined in spec.env (env: STYLE)"),
    ([task("a", x="{{ workflow.name }}")], "spec.tasks[0] (a).with.x: workflow has input and id, not 'name'"),
    ([task("a", "b"), task("b", x="{{ tasks.a.result }}")],
     "spec.tasks[1] (b).with.x: tasks.a.result: a task has output, status and error, not 'result'"),
    ([{"id": "c", "type": "collection", "items": "{{ tasks.c.output }}", "task": task("f")}],
     "spec.tasks[0] (c).items: tasks.c: refers to its own collection"),
    ([{"id": "c", "type": "collection", "items": "{{ item }}", "task": task("f")}],
     "spec.tasks[0] (c).items: item is only defined in a collection's filter and task"),
    ([{"id": "c", "type": "collection", "items": [1], "task": task("f", x="{{ tasks.f.output }}")}],
     "spec.tasks[0] (c).task (f).with.x: tasks.f does not exist: f is the task of collection c"),
    ([{"id": "p", "type": "parallel", "maxWorkers": 1, "tasks": [task("x", v="{{ tasks.y.output }}"), task("y")]}],
     "spec.tasks[0] (p).tasks[0] (x).with.v: tasks.y: y runs after x in parallel task p"),
    ([{"id": "a", "agent": "w", "action": "go"}],
     "spec.agents[0] (w).actions[0] (go).prompt: tasks.a: refers to its own task: a has no status before it ends "
     "(as used by spec.tasks[0] (a))"),
])
def test_errors_name_the_field(tasks, expected) -> None:
    found = issues(tasks)
    assert any(s == ERROR and m.startswith(expected) for s, m in found), found


@pytest.mark.parametrize("tasks, expected", [
    ([{"id": "r", "type": "router", "condition": "{{ workflow.input }}", "routes": {"x": "a", "y": "b"}},
      task("a", "c"), task("b", "c"), task("c", v="{{ tasks.a.output }}")],
     "spec.tasks[3] (c).with.v: tasks.a may not have run before c"),
    ([task("a", "p"), {"id": "p", "type": "parallel", "tasks": [task("x"), task("y")], "onError": {"next": "z"}},
      task("z", v="{{ tasks.x.output }}")],
     "spec.tasks[2] (z).with.v: tasks.x may not have run before z"),
    ([{"id": "p", "type": "parallel", "tasks": [task("x", v="{{ tasks.y.output }}"), task("y")]}],
     "spec.tasks[0] (p).tasks[0] (x).with.v: tasks.y: y runs alongside x in parallel task p"),
])
def test_warnings_for_what_ran_on_some_paths_only(tasks, expected) -> None:
    found = issues(tasks)
    assert [s for s, m in found if m.startswith(expected)] == [WARNING], found
    wf = parse_workflow({"tools": TOOLS, "tasks": tasks})
    assert check_workflow(wf) == [] and any(w.startswith(expected) for w in workflow_warnings(wf))


@pytest.mark.parametrize("tasks", [
    [task("a", "b"), task("b", x="{{ tasks.a.output.n }}", y="{{ tasks.a.status }} {{ tasks.a.error }}")],
    [task("a", "b") | {"onError": {"next": "b"}}, task("b", x="{{ tasks.a.error.message if tasks.a.error }}")],
    [{"id": "r", "type": "router", "condition": "{{ workflow.input }}", "routes": {"x": "a", "y": "b"}},
     task("a", "c"), task("b", "c"),
     task("c", v="{{ tasks.a.output if tasks.a is defined }}", w="{{ 'b' in tasks }}", u="{{ tasks.get('b') }}",
          d="{{ tasks.b | default('none') }}", r="{{ tasks.r.output.route }}")],
    [{"id": "c", "type": "collection", "items": "{{ workflow.input.urls }}", "filter": "{{ item | length > 2 }}",
      "task": task("f", url="{{ item }}", i="{{ index }}"), "onSuccess": {"next": "z"}},
     task("z", all="{{ tasks.c.output | map(attribute='x') | list }}", first="{{ tasks['c[0]'].output }}")],
    [{"id": "p", "type": "parallel", "maxWorkers": 1, "tasks": [task("x"), task("y", v="{{ tasks.x.output }}")],
      "onSuccess": {"next": "z"}}, task("z", v="{{ tasks.x.output }} {{ tasks.y.output }} {{ tasks.p.output }}")],
    [task("a", x="{% for k, v in workflow.input.items() %}{{ k }}={{ v }}{% endfor %}{% set n = 1 %}{{ n }}",
          y="{{ range(3) | list }} {{ workflow.id }} {{ env.STYLE }} {{ tasks.keys() | list }}")],
    [task("a", "b"), {"id": "b", "agent": "w", "action": "go", "with": {"text": "{{ tasks.a.output }}"}}],
])
def test_no_false_positives(tasks) -> None:
    assert issues(tasks, output={"v": "{{ workflow.input }}"}) == []


def test_output_sees_what_ran_on_every_path_to_the_end() -> None:
    tasks = [{"id": "r", "type": "router", "condition": "{{ workflow.input }}", "routes": {"x": "a", "y": "b"}},
             task("a"), task("b")]
    assert issues(tasks, output={"r": "{{ tasks.r.output }}", "a": "{{ tasks.a.output }}"}) == [
        (WARNING, "spec.output.a: tasks.a may not have run before the run ends: it is not on every path from "
                  "tasks[0] to here (guard it with `tasks.a is defined`)")]


def test_input_properties_not_declared() -> None:
    schema = {"type": "object", "properties": {"text": {"type": "string"}}}
    assert issues([task("a", x="{{ workflow.input.txet }}")], input=schema) == [
        (WARNING, "spec.tasks[0] (a).with.x: workflow.input.txet is not declared in spec.input.properties (text)")]
    closed = {**schema, "additionalProperties": False}
    assert issues([task("a", x="{{ workflow.input.txet }}")], input=closed)[0][0] == ERROR


def test_repository_examples_have_no_findings() -> None:
    root = Path(__file__).resolve().parents[2] / "examples"
    for path in sorted(root.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "Workflow":
                assert check_templates(parse_workflow(doc["spec"])) == [], path
