"""workflow.Executor: router, parallel and collection tasks, and transitions between all types."""

from __future__ import annotations

from typing import Any

import pytest

from compozy_operator.resources.models import ErrorInfo, TaskStatus, WorkflowExecutionStatus, WorkflowSpec
from compozy_operator.executor import (Action, CompleteTask, Dispatch, FailTask, Finish, RunContext, ScheduleRetry,
                                       WakeAt, decide, rfc3339)
from compozy_operator.validation import check_workflow, parse_workflow

from .test_executor_properties import Sim

NOW = 1_800_000_000.0
RUN = RunContext(execution="run-1", input={"kind": "spam", "flag": True, "n": 3, "urls": ["u0", "u1", "u2"]})
TOOLS = [{"id": "t", "python": "def run(i, c): return i"}]


def workflow(*tasks: dict[str, Any], **extra: Any) -> WorkflowSpec:
    wf = parse_workflow({"tools": TOOLS, "tasks": list(tasks), **extra})
    assert check_workflow(wf) == []
    return wf


def status(**tasks: TaskStatus) -> WorkflowExecutionStatus:
    return WorkflowExecutionStatus(phase="Running", tasks=tasks)


def keyed(tasks: dict[str, TaskStatus]) -> WorkflowExecutionStatus:
    """A status whose keys are not Python names (collection children: ``each[0]``)."""
    return WorkflowExecutionStatus(phase="Running", tasks=tasks)


def ok(output: Any = None, at: float = NOW - 5) -> TaskStatus:
    return TaskStatus(phase="Succeeded", output=output, finished_at=rfc3339(at))


def running(attempt: int = 1, at: float = NOW - 5) -> TaskStatus:
    return TaskStatus(phase="Running", attempt=attempt, dispatched_at=rfc3339(at))


def failed(message: str = "boom", attempt: int = 1, reason: str = "ToolError") -> TaskStatus:
    return TaskStatus(phase="Failed", attempt=attempt, finished_at=rfc3339(NOW - 3),
                      error=ErrorInfo(reason=reason, message=message))


def waiting(attempt: int = 2, not_before: float = NOW + 5) -> TaskStatus:
    return TaskStatus(phase="Waiting", attempt=attempt, not_before=rfc3339(not_before))


def cancelled(attempt: int = 1) -> TaskStatus:
    return TaskStatus(phase="Cancelled", attempt=attempt, error=ErrorInfo(reason="Cancelled", message="cancelled"))


def dispatched(actions: list[Action]) -> list[tuple[str, int]]:
    return [(a.task, a.attempt) for a in actions if isinstance(a, Dispatch)]


def only(actions: list[Action]) -> Action:
    assert len(actions) == 1, actions
    return actions[0]


# --- router ----------------------------------------------------------------------------------------

ROUTER = workflow(
    {"id": "route", "type": "router", "condition": "{{ workflow.input.kind }}",
     "routes": {"spam": "drop", "ham": "keep"}, "onError": {"next": "report"}},
    {"id": "keep", "tool": "t", "with": {"via": "{{ tasks.route.output.route }}"}},
    {"id": "drop", "tool": "t"},
    {"id": "report", "tool": "t", "with": {"why": "{{ tasks.route.error.message }}"}},
)


def router(condition: str, default: str | None = None) -> WorkflowSpec:
    wf = ROUTER.model_copy(deep=True)
    wf.tasks[0].condition, wf.tasks[0].default = condition, default
    return wf


def test_router_picks_the_route_of_the_condition_value() -> None:
    assert decide(ROUTER, status(), RUN, NOW) == [CompleteTask("route", {"route": "spam", "next": "drop"})]


@pytest.mark.parametrize("condition, route", [
    ("{{ workflow.input.flag }}", "true"),
    ("{{ not workflow.input.flag }}", "false"),
    ("{{ workflow.input.n }}", "3"),
    ("{{ workflow.input.kind }}-ish", "spam-ish"),
])
def test_router_values_become_strings(condition: str, route: str) -> None:
    wf = router(condition)
    wf.tasks[0].routes = {route: "keep"}
    assert decide(wf, status(), RUN, NOW) == [CompleteTask("route", {"route": route, "next": "keep"})]


def test_router_unmatched_value_takes_the_default() -> None:
    wf = router("maybe", default="keep")
    assert decide(wf, status(), RUN, NOW) == [CompleteTask("route", {"route": "maybe", "next": "keep"})]


def test_router_unmatched_value_without_default_fails_listing_the_routes() -> None:
    action = only(decide(router("maybe"), status(), RUN, NOW))
    assert action == FailTask("route", 1, "NoRoute", "router route: condition gave 'maybe'; known routes: ham, spam")


def test_router_template_error_fails_it() -> None:
    action = only(decide(router("{{ tasks.nope.output }}"), status(), RUN, NOW))
    assert isinstance(action, FailTask) and (action.task, action.reason) == ("route", "TemplateError")
    assert "tasks.route.condition" in action.message


def test_walk_continues_at_the_route_recorded_in_the_status() -> None:
    # the status, not a second rendering of the condition, decides where the walk goes
    s = status(route=ok({"route": "ham", "next": "keep"}))
    action = only(decide(ROUTER, s, RUN, NOW))
    assert isinstance(action, Dispatch) and action.task == "keep" and action.input == {"via": "ham"}


def test_failed_router_takes_on_error() -> None:
    s = status(route=TaskStatus(phase="Failed", error=ErrorInfo(reason="NoRoute", message="no route")))
    action = only(decide(ROUTER, s, RUN, NOW))
    assert isinstance(action, Dispatch) and action.task == "report" and action.input == {"why": "no route"}


def test_failed_router_without_on_error_fails_the_run() -> None:
    wf = router("maybe")
    wf.tasks[0].on_error = None
    s = status(route=TaskStatus(phase="Failed", error=ErrorInfo(reason="NoRoute", message="router route: x")))
    action = only(decide(wf, s, RUN, NOW))
    assert action == Finish("Failed", error=ErrorInfo(task="route", reason="NoRoute",
                                                      message="task route failed: router route: x"))


def test_router_back_to_an_earlier_task_is_a_cycle() -> None:
    wf = workflow({"id": "a", "tool": "t", "onSuccess": {"next": "route"}},
                  {"id": "route", "type": "router", "condition": "{{ workflow.input.kind }}",
                   "routes": {"spam": "a", "ham": "b"}},
                  {"id": "b", "tool": "t"})
    s = status(a=ok(), route=ok({"route": "spam", "next": "a"}))
    action = only(decide(wf, s, RUN, NOW))
    assert isinstance(action, Finish) and action.error.reason == "Cycle" and action.error.task == "a"


def test_router_output_without_a_known_next_fails_the_run() -> None:
    action = only(decide(ROUTER, status(route=ok({"route": "spam"})), RUN, NOW))
    assert isinstance(action, Finish) and action.phase == "Failed" and action.error.reason == "InvalidTransition"


# --- parallel ----------------------------------------------------------------------------------------

def parallel(strategy: str | None = None, max_workers: int | None = None, retry: int = 0,
             timeout: str | None = None) -> WorkflowSpec:
    def child(cid: str) -> dict[str, Any]:
        out: dict[str, Any] = {"id": cid, "tool": "t", "with": {"me": cid, "n": "{{ tasks.first.output.n }}"}}
        if retry:
            out["retry"] = {"limit": retry, "backoff": {"initial": "2s"}}
        if timeout:
            out["timeout"] = timeout
        return out

    fan: dict[str, Any] = {"id": "fan", "type": "parallel", "tasks": [child(c) for c in "abc"],
                           "onSuccess": {"next": "after"}}
    if strategy:
        fan["strategy"] = strategy
    if max_workers:
        fan["maxWorkers"] = max_workers
    return workflow({"id": "first", "tool": "t", "onSuccess": {"next": "fan"}}, fan,
                    {"id": "after", "tool": "t", "with": {"fan": "{{ tasks.fan.output }}"}})


FIRST = {"first": ok({"n": 7})}


def test_parallel_dispatches_every_child_at_once_with_rendered_input() -> None:
    actions = decide(parallel(), status(**FIRST), RUN, NOW)
    assert [(a.task, a.attempt, a.input) for a in actions if isinstance(a, Dispatch)] == [
        ("a", 1, {"me": "a", "n": 7}), ("b", 1, {"me": "b", "n": 7}), ("c", 1, {"me": "c", "n": 7})]
    assert len(actions) == 3


def test_parallel_has_no_status_entry_while_it_runs() -> None:
    assert decide(parallel(), status(**FIRST, a=running(), b=running(), c=running()), RUN, NOW) == []


def test_parallel_max_workers_bounds_children_in_flight() -> None:
    wf = parallel(max_workers=2)
    assert dispatched(decide(wf, status(**FIRST), RUN, NOW)) == [("a", 1), ("b", 1)]
    assert decide(wf, status(**FIRST, a=running(), b=running()), RUN, NOW) == []
    assert dispatched(decide(wf, status(**FIRST, a=ok(), b=running()), RUN, NOW)) == [("c", 1)]


@pytest.mark.parametrize("busy", [waiting(), failed()], ids=["waiting", "failed-with-retry"])
def test_children_retrying_count_as_in_flight(busy: TaskStatus) -> None:
    wf = parallel(max_workers=2, retry=2)
    actions = decide(wf, status(**FIRST, a=busy, b=running()), RUN, NOW)
    assert dispatched(actions) == []


def test_parallel_wait_all_succeeds_with_each_childs_output() -> None:
    s = status(**FIRST, a=ok({"x": 1}), b=ok({"x": 2}), c=ok(None))
    assert decide(parallel(), s, RUN, NOW) == [CompleteTask("fan", {"a": {"x": 1}, "b": {"x": 2}, "c": None})]


def test_completed_parallel_is_not_completed_again_and_the_walk_goes_on() -> None:
    s = status(**FIRST, a=ok(1), b=ok(2), c=ok(3), fan=ok({"a": 1, "b": 2, "c": 3}))
    action = only(decide(parallel(), s, RUN, NOW))
    assert isinstance(action, Dispatch) and action.task == "after" and action.input == {"fan": {"a": 1, "b": 2, "c": 3}}


def test_parallel_wait_all_failure_waits_for_the_others_starts_none_then_fails() -> None:
    wf = parallel(max_workers=2)
    assert decide(wf, status(**FIRST, a=failed(), b=running()), RUN, NOW) == []  # c never starts, b goes on
    s = status(**FIRST, a=failed(), b=ok())
    assert decide(wf, s, RUN, NOW) == [FailTask("fan", 1, "ChildFailed", "child a failed: boom")]


def test_failed_parallel_fails_the_run_naming_the_child() -> None:
    wf = parallel()
    s = status(**FIRST, a=failed(), b=ok(), c=ok(),
               fan=TaskStatus(phase="Failed", error=ErrorInfo(reason="ChildFailed", message="child a failed: boom")))
    action = only(decide(wf, s, RUN, NOW))
    assert action == Finish("Failed", error=ErrorInfo(task="fan", reason="ChildFailed",
                                                      message="task fan failed: child a failed: boom"))


def test_fail_fast_cancels_children_in_flight_and_starts_no_more() -> None:
    wf = workflow({"id": "fan", "type": "parallel", "strategy": "failFast", "maxWorkers": 3,
                   "tasks": [{"id": c, "tool": "t", "retry": {"limit": 2}} for c in "abcd"]})
    s = status(a=failed(attempt=3), b=running(), c=waiting(attempt=2))
    assert decide(wf, s, RUN, NOW) == [
        FailTask("b", 1, "Cancelled", "cancelled: a failed and fan is failFast", stop_pod=True),
        FailTask("c", 2, "Cancelled", "cancelled: a failed and fan is failFast", stop_pod=False)]
    s = status(a=failed(attempt=3), b=cancelled(), c=cancelled(attempt=2))
    assert decide(wf, s, RUN, NOW) == [FailTask("fan", 1, "ChildFailed", "child a failed after 3 attempts: boom")]


def test_fail_fast_drops_a_retry_still_to_schedule() -> None:
    wf = parallel("failFast", retry=2)
    wf.tasks[1].tasks[0].retry = None  # a fails for good; b has a retry left
    s = status(**FIRST, a=failed("first"), b=failed("second"), c=ok())
    assert decide(wf, s, RUN, NOW) == [
        FailTask("fan", 1, "ChildFailed", "child a failed: first; child b failed: second")]


def test_best_effort_runs_everything_and_reports_each_outcome() -> None:
    wf = parallel("bestEffort", max_workers=2)
    assert dispatched(decide(wf, status(**FIRST, a=failed(), b=running()), RUN, NOW)) == [("c", 1)]
    s = status(**FIRST, a=failed(), b=ok({"x": 2}), c=ok(None))
    assert decide(wf, s, RUN, NOW) == [CompleteTask("fan", {
        "a": {"error": {"reason": "ToolError", "message": "boom"}}, "b": {"output": {"x": 2}}, "c": {"output": None}})]


def test_race_first_success_cancels_the_rest_and_wins() -> None:
    wf = parallel("race", max_workers=2)
    s = status(**FIRST, a=running(), b=ok({"x": 2}))
    assert decide(wf, s, RUN, NOW) == [FailTask("a", 1, "Cancelled", "cancelled: b won the race of fan", stop_pod=True)]
    s = status(**FIRST, a=cancelled(), b=ok({"x": 2}))  # c never starts
    assert decide(wf, s, RUN, NOW) == [CompleteTask("fan", {"winner": "b", "output": {"x": 2}})]


def test_race_winner_is_the_earliest_success() -> None:
    s = status(**FIRST, a=ok("late", at=NOW - 1), b=ok("early", at=NOW - 9), c=ok("mid", at=NOW - 4))
    assert decide(parallel("race"), s, RUN, NOW) == [CompleteTask("fan", {"winner": "b", "output": "early"})]


def test_race_goes_on_after_a_failure_and_fails_when_all_fail() -> None:
    wf = parallel("race", max_workers=2)
    assert dispatched(decide(wf, status(**FIRST, a=failed(), b=running()), RUN, NOW)) == [("c", 1)]
    s = status(**FIRST, a=failed("x"), b=failed("y"), c=failed("z"))
    assert decide(wf, s, RUN, NOW) == [
        FailTask("fan", 1, "ChildFailed", "child a failed: x; child b failed: y; child c failed: z")]


def test_children_retry_with_backoff_like_basic_tasks() -> None:
    wf = parallel(retry=2)
    s = status(**FIRST, a=failed(), b=running(), c=running())
    assert decide(wf, s, RUN, NOW) == [ScheduleRetry("a", 2, 2.0, rfc3339(NOW - 1))]
    s = status(**FIRST, a=waiting(2, NOW + 5), b=running(), c=running())
    assert decide(wf, s, RUN, NOW) == [WakeAt(NOW + 5)]
    assert dispatched(decide(wf, s, RUN, NOW + 5)) == [("a", 2)]


def test_children_time_out_like_basic_tasks() -> None:
    wf = parallel(timeout="10s")
    s = status(**FIRST, a=running(at=NOW - 20), b=running(at=NOW - 5), c=ok())
    assert decide(wf, s, RUN, NOW) == [
        FailTask("a", 1, "Timeout", "attempt 1 exceeded the task timeout of 10s", stop_pod=True), WakeAt(NOW + 5)]


def test_child_template_error_fails_the_child_without_a_pod() -> None:
    actions = decide(parallel(), status(first=ok({})), RUN, NOW)
    assert [(a.task, a.reason) for a in actions if isinstance(a, FailTask)] == [
        ("a", "TemplateError"), ("b", "TemplateError"), ("c", "TemplateError")]
    assert "tasks.a.with.n" in actions[0].message


def test_run_deadline_wake_comes_with_children_actions() -> None:
    run = RunContext(execution="r", input={}, timeout=60)
    s = status(**FIRST, a=running(), b=running(), c=running())
    s.started_at = rfc3339(NOW - 30)
    assert decide(parallel(), s, run, NOW) == [WakeAt(NOW + 30)]


# --- collection --------------------------------------------------------------------------------------

def collection(items: Any = "{{ workflow.input.urls }}", **fields: Any) -> WorkflowSpec:
    task = fields.pop("task", {"id": "fetch", "tool": "t", "with": {"url": "{{ item }}", "i": "{{ index }}"}})
    return workflow({"id": "each", "type": "collection", "items": items, "task": task,
                     "onSuccess": {"next": "after"}, **fields},
                    {"id": "after", "tool": "t", "with": {"all": "{{ tasks.each.output }}"}})


def test_collection_runs_the_task_per_item_with_item_and_index() -> None:
    actions = decide(collection(), status(), RUN, NOW)
    assert [(a.task, a.input) for a in actions if isinstance(a, Dispatch)] == [
        ("each[0]", {"url": "u0", "i": 0}), ("each[1]", {"url": "u1", "i": 1}), ("each[2]", {"url": "u2", "i": 2})]
    assert len(actions) == 3


def test_collection_of_a_literal_list() -> None:
    actions = decide(collection([{"u": "x"}, {"u": "y"}], task={"id": "f", "tool": "t", "with": {"u": "{{ item.u }}"}}),
                     status(), RUN, NOW)
    assert [(a.task, a.input) for a in actions if isinstance(a, Dispatch)] == [("each[0]", {"u": "x"}),
                                                                              ("each[1]", {"u": "y"})]


def test_collection_output_is_the_outputs_in_item_order() -> None:
    s = keyed({"each[0]": ok("r0", at=NOW - 1), "each[1]": ok("r1", at=NOW - 9), "each[2]": ok("r2", at=NOW - 5)})
    assert decide(collection(), s, RUN, NOW) == [CompleteTask("each", ["r0", "r1", "r2"])]
    s.tasks["each"] = ok(["r0", "r1", "r2"])
    action = only(decide(collection(), s, RUN, NOW))
    assert isinstance(action, Dispatch) and action.task == "after" and action.input == {"all": ["r0", "r1", "r2"]}


def test_collection_filter_skips_items_keeping_their_index() -> None:
    wf = collection([1, 2, 3, 4, 5], filter="{{ item % 2 == 1 }}")
    assert dispatched(decide(wf, status(), RUN, NOW)) == [("each[0]", 1), ("each[2]", 1), ("each[4]", 1)]
    s = keyed({"each[0]": ok(10), "each[2]": ok(30), "each[4]": ok(50)})
    assert decide(wf, s, RUN, NOW) == [CompleteTask("each", [10, 30, 50])]


@pytest.mark.parametrize("verdict, kept", [("false", False), ("False", False), ("0", False), ("", False),
                                           ("no", False), ("yes", True), ("1", True)])
def test_collection_filter_rendered_as_text(verdict: str, kept: bool) -> None:
    wf = collection(["x"], filter=f"{verdict}{{{{ '' }}}}")
    assert dispatched(decide(wf, status(), RUN, NOW)) == ([("each[0]", 1)] if kept else [])


@pytest.mark.parametrize("items, filter_", [([], None), ([1, 2], "{{ item > 5 }}"), ("{{ [] }}", None)])
def test_collection_with_nothing_to_do_succeeds_with_an_empty_list(items: Any, filter_: str | None) -> None:
    wf = collection(items, filter=filter_)
    assert decide(wf, status(), RUN, NOW) == [CompleteTask("each", [])]


@pytest.mark.parametrize("items, kind", [("{{ workflow.input.kind }}", "string"), ("{{ workflow.input.n }}", "number"),
                                         ("{{ workflow.input }}", "object")])
def test_collection_items_not_a_list_fail_it(items: str, kind: str) -> None:
    assert decide(collection(items), status(), RUN, NOW) == [
        FailTask("each", 1, "InvalidItems", f"tasks.each.items: expected a list, got {kind}")]


def test_collection_items_template_error_fails_it() -> None:
    action = only(decide(collection("{{ workflow.input.nope }}"), status(), RUN, NOW))
    assert isinstance(action, FailTask) and action.task == "each" and action.reason == "TemplateError"
    assert action.message.startswith("tasks.each.items: ")


def test_collection_filter_template_error_fails_it() -> None:
    action = only(decide(collection([1], filter="{{ item.x.y }}"), status(), RUN, NOW))
    assert isinstance(action, FailTask) and action.task == "each" and action.reason == "TemplateError"
    assert action.message.startswith("tasks.each[0].filter: ")


def test_collection_sequential_runs_one_item_at_a_time() -> None:
    wf = collection(mode="sequential")
    assert dispatched(decide(wf, status(), RUN, NOW)) == [("each[0]", 1)]
    assert decide(wf, keyed({"each[0]": running()}), RUN, NOW) == []
    assert dispatched(decide(wf, keyed({"each[0]": ok()}), RUN, NOW)) == [("each[1]", 1)]


def test_collection_max_workers() -> None:
    wf = collection(maxWorkers=2)
    assert dispatched(decide(wf, status(), RUN, NOW)) == [("each[0]", 1), ("each[1]", 1)]
    assert dispatched(decide(wf, keyed({"each[0]": running(), "each[1]": ok()}), RUN, NOW)) == [("each[2]", 1)]


def test_collection_child_failure_waits_for_in_flight_then_fails_without_cancelling() -> None:
    wf = collection(maxWorkers=2)
    assert decide(wf, keyed({"each[0]": failed(), "each[1]": running()}), RUN, NOW) == []
    s = keyed({"each[0]": failed(), "each[1]": ok()})
    assert decide(wf, s, RUN, NOW) == [FailTask("each", 1, "ChildFailed", "child each[0] failed: boom")]


def test_collection_child_template_error_fails_that_child_only() -> None:
    wf = collection([{"url": "a"}, 5], task={"id": "f", "tool": "t", "with": {"url": "{{ item.url }}"}})
    actions = decide(wf, status(), RUN, NOW)
    assert actions[0] == Dispatch("each[0]", 1, {"url": "a"}, tool=wf.tools[0])
    assert isinstance(actions[1], FailTask) and (actions[1].task, actions[1].reason) == ("each[1]", "TemplateError")
    assert actions[1].message.startswith("tasks.each[1].with.url: ")
    s = keyed({"each[0]": ok(), "each[1]": failed("bad", reason="TemplateError")})
    assert decide(wf, s, RUN, NOW) == [FailTask("each", 1, "ChildFailed", "child each[1] failed: bad")]


def test_collection_children_retry() -> None:
    wf = collection(["x"], task={"id": "f", "tool": "t", "retry": {"limit": 1}})
    assert decide(wf, keyed({"each[0]": failed()}), RUN, NOW) == [ScheduleRetry("each[0]", 2, 0.0, rfc3339(NOW - 3))]
    assert dispatched(decide(wf, keyed({"each[0]": waiting(2, NOW)}), RUN, NOW)) == [("each[0]", 2)]
    assert decide(wf, keyed({"each[0]": failed(attempt=2)}), RUN, NOW) == [
        FailTask("each", 1, "ChildFailed", "child each[0] failed after 2 attempts: boom")]


def test_collection_children_see_earlier_tasks() -> None:
    wf = workflow({"id": "list", "tool": "t", "onSuccess": {"next": "each"}},
                  {"id": "each", "type": "collection", "items": "{{ tasks.list.output.xs }}",
                   "task": {"id": "f", "tool": "t", "with": {"v": "{{ item * tasks.list.output.k }}"}}})
    actions = decide(wf, status(list=ok({"xs": [1, 2], "k": 10})), RUN, NOW)
    assert [a.input for a in actions if isinstance(a, Dispatch)] == [{"v": 10}, {"v": 20}]


# --- transitions of every type -----------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["router", "parallel", "collection"])
def test_every_type_follows_on_success_on_error_and_final(kind: str) -> None:
    spec: dict[str, Any] = {
        "router": {"type": "router", "condition": "x", "routes": {"x": "next"}},
        "parallel": {"type": "parallel", "tasks": [{"id": "c", "tool": "t"}]},
        "collection": {"type": "collection", "items": [1], "task": {"id": "f", "tool": "t"}},
    }[kind]
    moves = {} if kind == "router" else {"onSuccess": {"next": "next"}}
    wf = workflow({"id": "x", **spec, **moves, "onError": {"next": "oops"}},
                  {"id": "next", "tool": "t"}, {"id": "oops", "tool": "t"})
    out = {"route": "x", "next": "next"} if kind == "router" else {}
    assert dispatched(decide(wf, status(x=ok(out)), RUN, NOW)) == [("next", 1)]
    assert dispatched(decide(wf, status(x=failed()), RUN, NOW)) == [("oops", 1)]
    if kind != "router":
        wf.tasks[0].final = True
        assert decide(wf, status(x=ok(out)), RUN, NOW) == [Finish("Succeeded", None)]


def test_collection_output_feeds_the_workflow_output() -> None:
    wf = workflow({"id": "each", "type": "collection", "items": [1, 2], "task": {"id": "f", "tool": "t"},
                   "final": True}, output={"sum": "{{ tasks.each.output | sum }}"})
    s = keyed({"each[0]": ok(1), "each[1]": ok(2), "each": ok([1, 2])})
    assert decide(wf, s, RUN, NOW) == [Finish("Succeeded", {"sum": 3})]


# --- driven runs (the simulator folds every action through the real reducer) ------------------------

def run_fifo(wf: WorkflowSpec, fail: frozenset[str] = frozenset()) -> Sim:
    """Drive a run to its end: pods end oldest first, failing when their key is in ``fail``."""
    sim = Sim(wf, RUN)
    for _ in range(200):
        if sim.status.phase != "Running":
            return sim
        actions = sim.step()  # checks maxWorkers after every action set
        if not any(not isinstance(a, WakeAt) for a in actions):
            if sim.pods:
                key = sim.pods[0][0]
                sim.end_pod(0, key not in fail, {"key": key})
            else:
                sim.now = min(a.at for a in actions if isinstance(a, WakeAt))
    raise AssertionError("no end")


def test_driven_parallel_and_collection_respect_max_workers_and_succeed() -> None:
    wf = workflow({"id": "fan", "type": "parallel", "maxWorkers": 2, "onSuccess": {"next": "each"},
                   "tasks": [{"id": c, "tool": "t"} for c in "abcde"]},
                  {"id": "each", "type": "collection", "items": [0, 1, 2, 3, 4, 5], "maxWorkers": 3,
                   "task": {"id": "f", "tool": "t"}})
    sim = run_fifo(wf)
    assert sim.status.phase == "Succeeded"
    assert sim.status.tasks["fan"].output == {c: {"key": c} for c in "abcde"}
    assert sim.status.tasks["each"].output == [{"key": f"each[{i}]"} for i in range(6)]


def test_driven_fail_fast_cancels_and_fails_the_run() -> None:
    wf = workflow({"id": "fan", "type": "parallel", "strategy": "failFast", "maxWorkers": 3,
                   "tasks": [{"id": c, "tool": "t"} for c in "abcde"]})
    sim = run_fifo(wf, fail=frozenset({"a"}))
    assert sim.status.phase == "Failed" and sim.status.error.task == "fan"
    phases = {k: sim.status.tasks[k].phase for k in "bc"}
    assert phases == {"b": "Cancelled", "c": "Cancelled"} and "d" not in sim.status.tasks
    assert sim.status.error.message == "task fan failed: child a failed: boom"


def test_driven_retry_after_backoff() -> None:
    wf = workflow({"id": "each", "type": "collection", "items": [0],
                   "task": {"id": "f", "tool": "t", "retry": {"limit": 1, "backoff": {"initial": "3s"}}}})
    sim = Sim(wf, RUN)
    sim.step()
    sim.end_pod(0, False)
    sim.step()  # schedules the retry
    assert sim.status.tasks["each[0]"].phase == "Waiting" and sim.step() == [WakeAt(sim.now + 3)]
    sim.now += 3
    assert dispatched(sim.step()) == [("each[0]", 2)]
