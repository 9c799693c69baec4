"""Retry rounds of an ended run (``spec.retry``): the plan, the reducer's fold, the walk after it."""

from __future__ import annotations

from compozy_operator.events import EventType, make_event, round_id
from compozy_operator.executor import (CompleteTask, Dispatch, FailTask, Finish, RunContext, ScheduleRetry, WakeAt,
                                       decide, epoch, retry_due, retry_plan)
from compozy_operator.monitoring import observe
from compozy_operator.reducer import fold_all, shows
from compozy_operator.resources.models import WorkflowExecutionStatus, WorkflowSpec

T = "2026-01-01T00:00:{:02d}.000Z"
RUN = RunContext(execution="run", input={"xs": [1, 2, 3]}, timeout=60.0)
NOW = epoch(T.format(30))


def wf(*tasks: dict, output: object = None) -> WorkflowSpec:
    return WorkflowSpec.model_validate({"tools": [{"id": "t", "python": "def run(i, c): return i"}],
                                        "tasks": list(tasks), "output": output})


LINEAR = wf({"id": "a", "tool": "t", "onSuccess": {"next": "b"}},
            {"id": "b", "tool": "t", "with": {"v": "{{ tasks.a.output.v }}"}, "retry": {"limit": 1},
             "onSuccess": {"next": "c"}},
            {"id": "c", "tool": "t"}, output={"b": "{{ tasks.b.output.v }}"})


def ev(etype: EventType, task: str | None = None, attempt: int | None = None, second: int = 0, **data):
    e = make_event(etype, "test", "ns", "run", "uid", task, attempt, **data)
    e.time = T.format(second)
    return e


def fold(status: WorkflowExecutionStatus, *events) -> WorkflowExecutionStatus:
    return fold_all(status, [(e, status.state_seq + i) for i, e in enumerate(events, 1)])


def ran(task: str, attempt: int, ok: bool, second: int, **output) -> list:
    end = ev(EventType.TASK_SUCCESS, task, attempt, second, output=output) if ok else \
        ev(EventType.TASK_FAILED, task, attempt, second, error={"reason": "ToolError", "message": "boom"})
    return [ev(EventType.TASK_DISPATCHED, task, attempt, second, podName=f"run-{task}-{attempt}"),
            ev(EventType.TASK_STARTED, task, attempt, second), end]


def failed_linear() -> WorkflowExecutionStatus:
    """a succeeded; b failed twice (its retry limit), the run failed."""
    return fold(WorkflowExecutionStatus(), ev(EventType.WORKFLOW_STARTED, second=0, taskCount=3),
                *ran("a", 1, True, 1, v=7), *ran("b", 1, False, 2),
                ev(EventType.TASK_RETRY_SCHEDULED, "b", 2, 2, delay=0, notBefore=T.format(2)),
                *ran("b", 2, False, 3),
                ev(EventType.WORKFLOW_FAILED, second=4, error={"task": "b", "reason": "ToolError"}))


def retried(status: WorkflowExecutionStatus, spec: WorkflowSpec, r: int = 1, second: int = 10):
    return fold(status, ev(EventType.WORKFLOW_RETRIED, second=second, id_extra=round_id(r), round=r,
                           tasks=retry_plan(spec, status)))


def test_retry_is_due_only_for_an_ended_unsuccessful_run_and_a_new_round() -> None:
    s = failed_linear()
    assert retry_due(s, 1) and not retry_due(s, 0)
    for phase in ("Pending", "Running", "Succeeded"):
        assert not retry_due(s.model_copy(update={"phase": phase}), 1), phase
    for phase in ("TimedOut", "Cancelled"):
        assert retry_due(s.model_copy(update={"phase": phase}), 1)
    assert not retry_due(s.model_copy(update={"retries": 1}), 1)


def test_the_failed_task_runs_again_with_its_next_attempt_and_the_kept_one_does_not() -> None:
    s = failed_linear()
    assert retry_plan(LINEAR, s) == {"b": 2}
    s = retried(s, LINEAR)
    assert (s.phase, s.retries, s.retried_at, s.error, s.finished_at) == ("Running", 1, T.format(10), None, None)
    assert s.conditions[0].reason == "Retried" and s.message == "retry 1: running again; 1 task(s) run again from b"
    b = s.tasks["b"]
    assert (b.phase, b.attempt, b.prior_attempts, b.output) == ("Skipped", 2, 2, None)
    assert [(a.attempt, a.phase) for a in b.attempts or []] == [(1, "Failed"), (2, "Failed")]
    assert s.tasks["a"].phase == "Succeeded" and s.progress == "1/3"
    (action, wake) = decide(LINEAR, s, RUN, NOW)
    assert isinstance(action, Dispatch) and (action.task, action.attempt, action.input) == ("b", 3, {"v": 7})
    assert wake == WakeAt(epoch(T.format(10)) + 60)  # the round's own deadline, not the run's first


def test_the_retry_limit_counts_the_attempts_of_the_round() -> None:
    s = retried(failed_linear(), LINEAR)
    s = fold(s, *ran("b", 3, False, 11))
    (action, _) = decide(LINEAR, s, RUN, NOW)
    assert isinstance(action, ScheduleRetry) and action.attempt == 4  # limit 1: one retry in this round too
    s = fold(s, ev(EventType.TASK_RETRY_SCHEDULED, "b", 4, 11, delay=0, notBefore=T.format(11)),
             *ran("b", 4, True, 12, v=8), *ran("c", 1, True, 13))
    assert decide(LINEAR, s, RUN, NOW) == [Finish("Succeeded", {"b": 8})]
    assert [a.attempt for a in s.tasks["b"].attempts or []] == [1, 2, 3]


def test_a_timed_out_round_gets_a_fresh_deadline() -> None:
    s = retried(failed_linear().model_copy(update={"phase": "TimedOut"}), LINEAR, second=50)
    assert decide(LINEAR, s, RUN, epoch(T.format(50)) + 61)[0].phase == "TimedOut"
    assert isinstance(decide(LINEAR, s, RUN, epoch(T.format(50)) + 59)[0], Dispatch)


def test_each_round_ends_once_and_an_earlier_rounds_end_changes_nothing() -> None:
    s = retried(failed_linear(), LINEAR)
    old_end = ev(EventType.WORKFLOW_FAILED, second=4, error={"task": "b", "reason": "ToolError"})
    assert shows(s, old_end) and fold(s, old_end).phase == "Running"
    end = ev(EventType.WORKFLOW_SUCCESS, second=20, id_extra=round_id(1), round=1, output={"b": 8})
    assert end.id != old_end.id and not shows(s, end)
    done = fold(s, end)
    assert (done.phase, done.output, done.finished_at) == ("Succeeded", {"b": 8}, T.format(20))
    again = ev(EventType.WORKFLOW_RETRIED, second=10, id_extra=round_id(1), round=1, tasks={"b": 2})
    assert shows(done, again) and fold(done, again).phase == "Succeeded"  # a redelivered Retried reopens nothing


def test_a_rounds_end_folded_before_its_retried_event_is_kept() -> None:
    """Any order: round 1's end (e.g. its Retried was nak'ed and comes back later) ends round 1."""
    s = failed_linear()
    end = ev(EventType.WORKFLOW_FAILED, second=20, id_extra=round_id(1), round=1, error={"reason": "Again"})
    s = fold(s, end)
    assert (s.phase, s.retries, s.error.reason) == ("Failed", 1, "Again")
    s = fold(s, ev(EventType.WORKFLOW_RETRIED, second=10, id_extra=round_id(1), round=1, tasks={"b": 1}))
    assert (s.phase, s.retries, s.error.reason) == ("Failed", 1, "Again")


def test_a_run_created_with_spec_retry_counts_rounds_from_there() -> None:
    s = fold(WorkflowExecutionStatus(), ev(EventType.WORKFLOW_STARTED, second=0, taskCount=1, retry=3))
    assert s.retries == 3 and not retry_due(s.model_copy(update={"phase": "Failed"}), 3)


def test_what_ran_after_the_failure_runs_again_and_unreached_tasks_stay_skipped() -> None:
    """a fails, its onError handler h runs and fails: both are reset; a now succeeds, so h is not
    reached: it stays Skipped (its attempt in the history), the run succeeds."""
    spec = wf({"id": "a", "tool": "t", "onError": {"next": "h"}}, {"id": "h", "tool": "t"})
    s = fold(WorkflowExecutionStatus(), ev(EventType.WORKFLOW_STARTED, second=0, taskCount=2),
             *ran("a", 1, False, 1), *ran("h", 1, False, 2), ev(EventType.WORKFLOW_FAILED, second=3))
    assert retry_plan(spec, s) == {"a": 1, "h": 1}
    s = retried(s, spec)
    (action, _) = decide(spec, s, RUN, NOW)
    assert (action.task, action.attempt) == ("a", 2)
    s = fold(s, *ran("a", 2, True, 11, v=1))
    assert decide(spec, s, RUN, NOW) == [Finish("Succeeded", None)]
    s = fold(s, ev(EventType.WORKFLOW_SUCCESS, second=12, id_extra=round_id(1), round=1))
    h = s.tasks["h"]
    assert (s.phase, s.progress, h.phase, h.attempt) == ("Succeeded", "1/1", "Skipped", 1)
    assert [a.phase for a in h.attempts or []] == ["Failed"]


COLLECTION = wf({"id": "each", "type": "collection", "items": "{{ workflow.input.xs }}",
                 "task": {"id": "one", "tool": "t", "with": {"x": "{{ item }}"}}})


def test_a_collection_runs_only_its_failed_children_again() -> None:
    s = fold(WorkflowExecutionStatus(), ev(EventType.WORKFLOW_STARTED, second=0, taskCount=1),
             *ran("each[0]", 1, True, 1, x=1), *ran("each[1]", 1, False, 1), *ran("each[2]", 1, True, 1, x=3),
             ev(EventType.TASK_FAILED, "each", 1, 2, error={"reason": "ChildFailed", "message": "each[1] failed"}),
             ev(EventType.WORKFLOW_FAILED, second=3))
    assert retry_plan(COLLECTION, s) == {"each[1]": 1, "each": 1}
    s = retried(s, COLLECTION)
    (action,) = [a for a in decide(COLLECTION, s, RUN, NOW) if not isinstance(a, WakeAt)]
    assert isinstance(action, Dispatch) and (action.task, action.attempt, action.input) == ("each[1]", 2, {"x": 2})
    s = fold(s, *ran("each[1]", 2, True, 11, x=2))
    (done, _) = decide(COLLECTION, s, RUN, NOW)
    assert done == CompleteTask("each", [{"x": 1}, {"x": 2}, {"x": 3}], 2)  # the collection's own next attempt


PARALLEL = wf({"id": "fan", "type": "parallel", "strategy": "failFast",
               "tasks": [{"id": "p", "tool": "t"}, {"id": "q", "tool": "t"}, {"id": "r", "tool": "t"}]})


def test_a_parallel_task_runs_its_failed_and_cancelled_children_again() -> None:
    s = fold(WorkflowExecutionStatus(), ev(EventType.WORKFLOW_STARTED, second=0, taskCount=1),
             *ran("p", 1, True, 1), *ran("q", 1, False, 1),
             ev(EventType.TASK_FAILED, "r", 1, 2, error={"reason": "Cancelled", "message": "failFast"}),
             ev(EventType.TASK_FAILED, "fan", 1, 2, error={"reason": "ChildFailed", "message": "q failed"}),
             ev(EventType.WORKFLOW_FAILED, second=3))
    assert retry_plan(PARALLEL, s) == {"q": 1, "r": 1, "fan": 1}
    s = retried(s, PARALLEL)
    actions = [a for a in decide(PARALLEL, s, RUN, NOW) if not isinstance(a, WakeAt)]
    assert sorted((a.task, a.attempt) for a in actions) == [("q", 2), ("r", 2)]
    s = fold(s, *ran("r", 2, True, 11)[:2], *ran("q", 2, False, 11))
    (fail, _) = decide(PARALLEL, s, RUN, NOW)  # failFast again: r cancelled, in its own next attempt
    assert isinstance(fail, FailTask) and (fail.task, fail.attempt, fail.reason) == ("r", 2, "Cancelled")
    s = fold(s, ev(EventType.TASK_FAILED, "r", 2, 12, error={"reason": "Cancelled", "message": "failFast"}))
    (fail, _) = decide(PARALLEL, s, RUN, NOW)
    assert isinstance(fail, FailTask) and (fail.task, fail.attempt, fail.reason) == ("fan", 2, "ChildFailed")


def test_a_failed_router_is_decided_again_in_its_next_attempt() -> None:
    spec = wf({"id": "pick", "type": "router", "condition": "{{ workflow.input.k }}", "routes": {"x": "x"}},
              {"id": "x", "tool": "t"})
    s = fold(WorkflowExecutionStatus(), ev(EventType.WORKFLOW_STARTED, second=0, taskCount=2),
             ev(EventType.TASK_FAILED, "pick", 1, 1, error={"reason": "NoRoute", "message": "y"}),
             ev(EventType.WORKFLOW_FAILED, second=2))
    s = retried(s, spec)
    run = RunContext(execution="run", input={"k": "x"})
    (done,) = decide(spec, s, run, NOW)
    assert done == CompleteTask("pick", {"route": "x", "next": "x"}, 2)


def test_a_reset_folded_after_the_rounds_own_news_does_not_undo_it() -> None:
    """Round 1's b attempt 2 was folded before round 1's Retried (a redelivery after a crash): the
    ended round swept it to Cancelled, the late reset brings it back in flight instead of resetting it."""
    s = failed_linear()
    plan = retry_plan(LINEAR, s)
    s = fold(s, ev(EventType.TASK_DISPATCHED, "b", 3, 11, podName="run-b-3"))
    assert s.tasks["b"].phase == "Cancelled"  # news of a later attempt on an ended run (so far)
    s = fold(s, ev(EventType.WORKFLOW_RETRIED, second=10, id_extra=round_id(1), round=1, tasks=plan))
    assert (s.tasks["b"].phase, s.tasks["b"].attempt) == ("Running", 3)
    s = fold(s, *ran("b", 3, True, 12, v=8)[1:])
    assert (s.tasks["b"].phase, s.tasks["b"].output) == ("Succeeded", {"v": 8})


def test_a_round_is_told_as_retried_and_a_reset_is_no_ended_task() -> None:
    ended = failed_linear()
    events = observe("ns", ended, retried(ended, LINEAR))
    assert events == [("Normal", "Retried", "retry 1: running again; 1 task(s) run again from b")]


def test_a_run_refused_at_its_start_is_started_again() -> None:
    refused = fold(WorkflowExecutionStatus(), ev(EventType.WORKFLOW_FAILED, second=1,
                                                 error={"reason": "InvalidSpec", "message": "no Workflow"}))
    assert retry_due(refused, 1) and refused.snapshot is None
    s = fold(refused, ev(EventType.WORKFLOW_RETRIED, second=10, id_extra=round_id(1), round=1, tasks={}))
    assert (s.phase, s.retries, s.message) == ("Pending", 1, "retry 1: starting again")
    s = fold(s, ev(EventType.WORKFLOW_STARTED, second=11, id_extra=round_id(1), taskCount=3))
    assert s.phase == "Running"
