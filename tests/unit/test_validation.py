"""Workflow and input checks name the field and the problem."""

from __future__ import annotations

import pytest

from compozy_operator.validation import SUPPORTED_TYPES, SpecError, check_input, check_workflow, parse_workflow

from tests.resources import example_workflow

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
    ({"tasks": [{"id": "A_b", "tool": "t"}]}, "spec.tasks[0].id: must be lowercase letters, digits and '-'"),
    ({"tasks": [{"id": "a", "tool": "t", "timeout": "5 minutes"}]},
     "spec.tasks[0].timeout: invalid duration '5 minutes': use a number with ms, s, m or h"),
    ({"tasks": [{"id": "a", "tool": "t", "nxet": 1}]}, "spec.tasks[0].nxet: unknown field (a typo?"),
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
    assert check_input({"type": "nonsense"}, {})[0].startswith("workflow input schema: not a valid JSON Schema: ")


# --- router, parallel, collection; the task graph --------------------------------------------------

def test_all_task_types_are_supported() -> None:
    assert SUPPORTED_TYPES == {"basic", "router", "parallel", "collection"}
    tasks = [
        {"id": "route", "type": "router", "condition": "{{ workflow.input.kind }}",
         "routes": {"spam": "fan", "ham": "each"}, "default": "fan", "onError": {"next": "each"}},
        {"id": "fan", "type": "parallel", "strategy": "race", "maxWorkers": 2, "onSuccess": {"next": "each"},
         "tasks": [{"id": "a", "tool": "t", "retry": {"limit": 1}, "timeout": "5s"}, {"id": "b", "tool": "t"}]},
        {"id": "each", "type": "collection", "items": "{{ workflow.input.urls }}", "filter": "{{ item }}",
         "mode": "sequential", "task": {"id": "fetch", "tool": "t", "with": {"url": "{{ item }}"}}, "final": True},
    ]
    assert check_workflow(wf(tasks=tasks)) == []


def test_the_architecture_example_is_valid() -> None:
    assert check_workflow(parse_workflow(example_workflow()["spec"])) == []


def test_agent_references_and_schemas_are_checked() -> None:
    spec = example_workflow()["spec"]
    agent = spec["agents"][0]
    agent["tools"] = ["word-count", "missing"]
    agent["actions"].append({"id": "summarize", "prompt": "again", "outputSchema": {"type": "nonsense"}})
    spec["tools"][0]["inputSchema"] = {"required": "text"}
    problems = check_workflow(parse_workflow(spec))
    assert "spec.agents[0] (writer).tools[1]: tool 'missing' is not defined in spec.tools" in problems
    assert "spec.agents[0] (writer).actions[1].id: duplicate action id 'summarize'" in problems
    assert any(p.startswith("spec.agents[0] (writer).actions[1] (summarize).outputSchema: not a valid JSON Schema")
               for p in problems), problems
    assert any(p.startswith("spec.tools[0] (word-count).inputSchema: not a valid JSON Schema") for p in problems)


def test_anthropic_takes_no_temperature() -> None:
    spec = example_workflow()["spec"]
    spec["agents"][0]["model"].update(provider="anthropic", temperature=0.3)
    assert check_workflow(parse_workflow(spec)) == [
        "spec.agents[0] (writer).model.temperature: not supported by provider anthropic "
        "(its Messages API takes no sampling temperature)"]


def test_action_without_agent_is_refused() -> None:
    spec = example_workflow()["spec"]
    spec["tasks"][0]["action"] = "summarize"
    assert "spec.tasks[0] (count).action: only agent tasks have an action" in check_workflow(parse_workflow(spec))


ROUTE = {"id": "route", "type": "router", "condition": "{{ workflow.input.kind }}", "routes": {"ham": "a"}}


@pytest.mark.parametrize("tasks, problem", [
    ([{**ROUTE, "routes": {"ham": "a", "spam": "drop"}}, BASE["tasks"][0]],
     "spec.tasks[0] (route).routes.spam: no task with id 'drop'"),
    ([{**ROUTE, "default": "nope"}, BASE["tasks"][0]], "spec.tasks[0] (route).default: no task with id 'nope'"),
    ([{**ROUTE, "routes": {}}, BASE["tasks"][0]], "spec.tasks[0] (route).routes: a router needs at least one route"),
    ([{k: v for k, v in ROUTE.items() if k != "routes"}, BASE["tasks"][0]],
     "spec.tasks[0] (route).routes: a router needs at least one route"),
    ([{k: v for k, v in ROUTE.items() if k != "condition"}, BASE["tasks"][0]],
     "spec.tasks[0] (route).condition: a router needs a condition"),
    ([{**ROUTE, "onSuccess": {"next": "a"}}, BASE["tasks"][0]],
     "spec.tasks[0] (route).onSuccess: not used by router tasks"),
    ([{**ROUTE, "retry": {"limit": 1}}, BASE["tasks"][0]], "spec.tasks[0] (route).retry: not used by router tasks"),
    ([{**ROUTE, "onError": {"next": "zz"}}, BASE["tasks"][0]],
     "spec.tasks[0] (route).onError.next: no task with id 'zz'"),
])
def test_router_problems(tasks, problem) -> None:
    assert problem in check_workflow(wf(tasks=tasks)), check_workflow(wf(tasks=tasks))


FAN = {"id": "fan", "type": "parallel", "tasks": [{"id": "c1", "tool": "t"}]}


@pytest.mark.parametrize("tasks, problem", [
    ([{**FAN, "tasks": []}], "spec.tasks[0] (fan).tasks: a parallel task needs at least one child task"),
    ([{k: v for k, v in FAN.items() if k != "tasks"}],
     "spec.tasks[0] (fan).tasks: a parallel task needs at least one child task"),
    ([{**FAN, "tasks": [{"id": "c1", "type": "router", "condition": "x", "routes": {"x": "fan"}}]}],
     "spec.tasks[0] (fan).tasks[0] (c1).type: a child task must be a basic task, not router"),
    ([{**FAN, "tasks": [{"id": "c1", "tool": "zz"}]}],
     "spec.tasks[0] (fan).tasks[0] (c1).tool: tool 'zz' is not defined in spec.tools"),
    ([{**FAN, "tasks": [{"id": "c1"}]}], "spec.tasks[0] (fan).tasks[0] (c1): a basic task needs exactly one of tool"),
    ([{**FAN, "tasks": [{"id": "fan", "tool": "t"}]}],
     "spec.tasks[0] (fan).tasks[0] (fan).id: duplicate task id 'fan'"),
    ([{**FAN, "onSuccess": {"next": "a"}}, {"id": "a", "tool": "t"}, {**FAN, "id": "fan2"}],
     "spec.tasks[2] (fan2).tasks[0] (c1).id: duplicate task id 'c1'"),
    ([{**FAN, "onSuccess": {"next": "c1"}}], "spec.tasks[0] (fan).onSuccess.next: no task with id 'c1'"),
    ([{**FAN, "tasks": [{"id": "c1", "tool": "t", "onSuccess": {"next": "fan"}}]}],
     "spec.tasks[0] (fan).tasks[0] (c1).onSuccess: not used by child tasks "
     "(a child ends with its parent)"),
    ([{**FAN, "timeout": "5s"}], "spec.tasks[0] (fan).timeout: not used by parallel tasks"),
    ([{**FAN, "with": {"x": 1}}], "spec.tasks[0] (fan).with: not used by parallel tasks"),
])
def test_parallel_problems(tasks, problem) -> None:
    assert any(p.startswith(problem) for p in check_workflow(wf(tasks=tasks))), check_workflow(wf(tasks=tasks))


EACH = {"id": "each", "type": "collection", "items": [1, 2], "task": {"id": "f", "tool": "t"}}


@pytest.mark.parametrize("tasks, problem", [
    ([{k: v for k, v in EACH.items() if k != "items"}], "spec.tasks[0] (each).items: a collection needs items"),
    ([{**EACH, "items": "urls"}], "spec.tasks[0] (each).items: must be a list or a template"),
    ([{**EACH, "items": {"a": 1}}], "spec.tasks[0] (each).items: must be a list or a template"),
    ([{k: v for k, v in EACH.items() if k != "task"}],
     "spec.tasks[0] (each).task: a collection needs the task to run for each item"),
    ([{**EACH, "task": {"id": "f", "type": "parallel", "tasks": [{"id": "g", "tool": "t"}]}}],
     "spec.tasks[0] (each).task (f).type: a child task must be a basic task, not parallel"),
    ([{**EACH, "task": {"id": "f", "tool": "zz"}}], "spec.tasks[0] (each).task (f).tool: tool 'zz' is not defined"),
    ([{**EACH, "task": {"id": "f", "tool": "t", "final": True}}],
     "spec.tasks[0] (each).task (f).final: not used by child tasks"),
    ([{**EACH, "mode": "sequential", "maxWorkers": 2}],
     "spec.tasks[0] (each).maxWorkers: a sequential collection runs one item at a time"),
    ([{**EACH, "strategy": "race"}], "spec.tasks[0] (each).strategy: not used by collection tasks"),
    ([{"id": "a", "tool": "t", "items": [1]}], "spec.tasks[0] (a).items: not used by basic tasks"),
])
def test_collection_problems(tasks, problem) -> None:
    assert any(p.startswith(problem) for p in check_workflow(wf(tasks=tasks))), check_workflow(wf(tasks=tasks))


def test_collection_items_may_be_a_list_or_a_template() -> None:
    first = {"id": "a", "tool": "t", "onSuccess": {"next": "each"}}
    for items in ([], [{"u": 1}], "{{ workflow.input.urls }}", "{{ tasks.a.output.items }}"):
        assert check_workflow(wf(tasks=[first, {**EACH, "items": items}])) == [], items


def back(i: int) -> str:
    return f"spec.tasks[{i}] ({'abc'[i]}): the run can never succeed from here"


@pytest.mark.parametrize("tasks, dead", [
    ([{"id": "a", "tool": "t", "onSuccess": {"next": "b"}}, {"id": "b", "tool": "t", "onSuccess": {"next": "a"}}],
     [0, 1]),
    ([{"id": "a", "tool": "t", "onSuccess": {"next": "a"}}], [0]),
    ([{"id": "a", "tool": "t", "onSuccess": {"next": "b"}},
      {"id": "b", "type": "router", "condition": "x", "routes": {"x": "a", "y": "b"}}], [0, 1]),
    ([{"id": "a", "tool": "t", "onSuccess": {"next": "b"}, "onError": {"next": "c"}},
      {"id": "b", "tool": "t", "onSuccess": {"next": "a"}},
      {"id": "c", "tool": "t", "onSuccess": {"next": "b"}}], [0, 1, 2]),
    # each of these can still succeed somewhere: nothing to report
    ([{"id": "a", "tool": "t", "onSuccess": {"next": "b"}},
      {"id": "b", "tool": "t", "onSuccess": {"next": "a"}, "onError": {"next": "c"}}, {"id": "c", "tool": "t"}], []),
    ([{"id": "a", "tool": "t", "onSuccess": {"next": "a"}, "final": True}], []),
    ([{"id": "a", "tool": "t", "onSuccess": {"next": "b"}},
      {"id": "b", "type": "router", "condition": "x", "routes": {"x": "a"}, "default": "c"}, {"id": "c", "tool": "t"}],
     []),
    # unreachable loops never run
    ([{"id": "a", "tool": "t"}, {"id": "b", "tool": "t", "onSuccess": {"next": "c"}},
      {"id": "c", "tool": "t", "onSuccess": {"next": "b"}}], []),
])
def test_reachable_tasks_that_can_never_succeed_are_reported(tasks, dead) -> None:
    problems = check_workflow(wf(tasks=tasks))
    assert [p.split(": every path")[0] for p in problems] == [back(i) for i in dead], problems


def test_apply_defaults_fills_missing_properties_at_every_level() -> None:
    from compozy_operator.validation import apply_defaults

    schema = {"type": "object", "properties": {
        "mode": {"type": "string", "default": "short"},
        "opts": {"type": "object", "properties": {"n": {"type": "integer", "default": 3}, "k": {"type": "string"}}},
        "list": {"type": "array", "items": {"type": "object", "properties": {"w": {"default": 1}}}},
        "kept": {"default": "x"}}}
    value = {"opts": {"k": "a"}, "list": [{}, {"w": 5}], "kept": None}
    assert apply_defaults(schema, value) == {"mode": "short", "opts": {"k": "a", "n": 3}, "list": [{"w": 1}, {"w": 5}],
                                             "kept": None}
    assert value == {"opts": {"k": "a"}, "list": [{}, {"w": 5}], "kept": None}, "the argument is not changed"
    assert apply_defaults(schema, None) == {"mode": "short", "kept": "x"}
    assert apply_defaults({"default": {"a": 1}}, None) == {"a": 1}
    assert apply_defaults({"allOf": [{"properties": {"a": {"default": 1}}}]}, {}) == {"a": 1}
    assert apply_defaults(None, {"a": 1}) == {"a": 1} and apply_defaults(schema, "text") == "text"


def test_defaults_then_check_input() -> None:
    from compozy_operator.validation import apply_defaults

    schema = {"type": "object", "properties": {"n": {"type": "integer", "default": 2}}, "required": ["n"]}
    assert check_input(schema, {}) == ["spec.input: 'n' is a required property"]
    assert check_input(schema, apply_defaults(schema, {})) == []


def test_a_missing_input_is_said_so_not_as_a_type_error() -> None:
    """Issue 11.9: not `None is not of type 'object'`."""
    schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    assert check_input(schema, None) == ["spec.input: missing: the Workflow's input schema requires an input "
                                         "(with text)"]
    assert check_input({"type": ["object", "null"]}, None) == []


def test_duplicate_tool_ids_are_refused() -> None:
    wf = parse_workflow({"tools": [{"id": "t", "python": "x"}, {"id": "t", "command": ["true"]}],
                         "tasks": [{"id": "a", "tool": "t"}]})
    assert "spec.tools[1] (t).id: duplicate tool id 't'" in check_workflow(wf)


def test_a_default_filled_in_gets_its_own_properties_defaults() -> None:
    from compozy_operator.validation import apply_defaults

    schema = {"type": "object", "properties": {
        "opts": {"type": "object", "default": {}, "properties": {"n": {"type": "integer", "default": 3}}}}}
    assert apply_defaults(schema, {}) == {"opts": {"n": 3}}
    assert apply_defaults(schema, {"opts": {"n": 1}}) == {"opts": {"n": 1}}


def test_tool_resources_are_checked_as_the_api_server_would() -> None:
    wf = parse_workflow({"tools": [{"id": "t", "command": ["true"],
                                    "resources": {"limits": {"memory": "lots", "cpu": "500m"}, "request": {}}}],
                         "tasks": [{"id": "a", "tool": "t"}]})
    assert check_workflow(wf) == [
        "spec.tools[0] (t).resources.limits.memory: 'lots' is not a Kubernetes quantity (e.g. 512Mi, 2, 500m)",
        "spec.tools[0] (t).resources.request: unknown field (resources have limits and requests)"]
    ok = parse_workflow({"tools": [{"id": "t", "command": ["true"], "resources": {
        "limits": {"memory": "1Gi", "cpu": 2, "nvidia.com/gpu": "1"}, "requests": {"cpu": "0.5", "memory": "1e9"}}}],
        "tasks": [{"id": "a", "tool": "t"}]})
    assert check_workflow(ok) == []
