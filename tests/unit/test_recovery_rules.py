"""Crash recovery rules in the pure parts: dispatched attempts without a pod, bounded durations,
the run's snapshot in its status, and which failures the orchestrator retries."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from kubernetes.client.exceptions import ApiException
from nats.errors import ConnectionClosedError, MaxPayloadError, NoRespondersError
from pydantic import ValidationError

from compozy_operator.resources.models import TaskStatus, WorkflowExecutionStatus, WorkflowSpec
from compozy_operator.events import EventType, make_event
from compozy_operator.executor import Dispatch, FailTask, ScheduleRetry, WakeAt, decide
from compozy_operator.orchestrator.effects import Effects, backoff, transient
from compozy_operator.reducer import fold_all
from compozy_operator.validation import json_depth

from .test_executor import NOW, RUN, WF, status

TRACKED = dataclasses.replace(RUN, pods=frozenset())


def test_a_dispatched_attempt_without_a_pod_is_dispatched_again() -> None:
    (action,) = decide(WF, status(a=TaskStatus(phase="Pending", attempt=2)), TRACKED, NOW)
    assert isinstance(action, Dispatch) and (action.task, action.attempt, action.input) == ("a", 2, {"text": "hi"})


def test_a_dispatched_attempt_whose_pod_exists_is_left_alone() -> None:
    run = dataclasses.replace(RUN, pods=frozenset({("a", 2)}))
    assert decide(WF, status(a=TaskStatus(phase="Pending", attempt=2)), run, NOW) == []
    assert decide(WF, status(a=TaskStatus(phase="Running", attempt=2)), run, NOW) == []


def test_a_running_attempt_whose_pod_vanished_unseen_is_lost() -> None:
    (action,) = decide(WF, status(a=TaskStatus(phase="Running", attempt=1)), TRACKED, NOW)
    assert isinstance(action, FailTask) and (action.task, action.attempt, action.reason) == ("a", 1, "PodLost")
    assert not action.stop_pod


def test_untracked_pods_change_nothing() -> None:
    assert decide(WF, status(a=TaskStatus(phase="Pending")), RUN, NOW) == []


def test_a_redispatch_keeps_the_task_timeout() -> None:
    wf = WorkflowSpec.model_validate({**WF.dump(), "tasks": [{**WF.tasks[0].dump(), "timeout": "10s"}]})
    st = TaskStatus(phase="Pending", dispatched_at="2027-01-15T08:00:00.000Z")
    actions = decide(wf, status(a=st), TRACKED, 1_800_000_000.0)
    assert [type(a) for a in actions] == [Dispatch, WakeAt]


def test_collection_children_are_redispatched_too() -> None:
    wf = WorkflowSpec.model_validate({
        "tools": [{"id": "t", "python": "def run(i, c): return i"}],
        "tasks": [{"id": "each", "type": "collection", "items": [1, 2], "task": {"id": "x", "tool": "t",
                                                                                 "with": {"v": "{{ item }}"}}}]})
    run = dataclasses.replace(RUN, pods=frozenset({("each[0]", 1)}))
    s = status(**{"each[0]": TaskStatus(phase="Pending"), "each[1]": TaskStatus(phase="Pending")})
    (action,) = decide(wf, s, run, NOW)
    assert isinstance(action, Dispatch) and (action.task, action.input) == ("each[1]", {"v": 2})


def test_a_huge_backoff_is_capped_not_an_overflow() -> None:
    raw = {**WF.dump(), "tasks": [{**WF.tasks[0].dump(), "retry": {"limit": 5, "backoff": {"max": "8000h"}}}]}
    wf = WorkflowSpec.model_validate(raw)
    failed = TaskStatus(phase="Failed", attempt=60, finished_at="2027-01-15T08:00:00.000Z")
    wf.tasks[0].retry.limit = 100  # type: ignore[union-attr]
    (action,) = [a for a in decide(wf, status(a=failed), RUN, NOW) if isinstance(a, ScheduleRetry)]
    assert action.delay == 8000 * 3600


@pytest.mark.parametrize("field,value,problem", [
    ("timeout", "0s", "must be greater than zero"),
    ("timeout", "999999999h", "longer than the limit of 8784h"),
    ("retry", {"limit": 1, "backoff": {"max": "999999999h"}}, "longer than the limit of 8784h"),
])
def test_durations_out_of_range_are_refused(field: str, value: object, problem: str) -> None:
    with pytest.raises(ValidationError) as err:
        WorkflowSpec.model_validate({**WF.dump(), "tasks": [{**WF.tasks[0].dump(), field: value}]})
    assert problem in str(err.value)


def test_started_puts_the_snapshot_in_the_status() -> None:
    started = make_event(EventType.WORKFLOW_STARTED, "t", "ns", "run-1", "u1", workflow="w", taskCount=3,
                         spec=WF.dump(), inputRef={"bucket": "B", "key": "k", "size": 9, "digest": "d"},
                         timeoutSeconds=60.0)
    s = fold_all(WorkflowExecutionStatus(), [(started, 1)])
    assert s.snapshot is not None and WorkflowSpec.model_validate(s.snapshot.spec) == WF
    assert s.snapshot.input_ref is not None and s.snapshot.input_ref.key == "k" and s.snapshot.timeout_seconds == 60
    again = make_event(EventType.WORKFLOW_STARTED, "t", "ns", "run-1", "u1", id_extra="x", spec={"tasks": []})
    assert fold_all(s, [(again, 2)]).snapshot == s.snapshot  # the first start is the one kept


def test_a_large_workflow_output_is_a_reference() -> None:
    ref = {"bucket": "B", "key": "ns/run-1/u1/_workflow/output", "size": 2_000_000, "digest": "d"}
    s = WorkflowExecutionStatus(phase="Running", started_at="2027-01-15T08:00:00.000Z")
    end = make_event(EventType.WORKFLOW_SUCCESS, "t", "ns", "run-1", "u1", outputRef=ref)
    s = fold_all(s, [(end, 3)])
    assert s.phase == "Succeeded" and s.output is None and s.output_ref is not None and s.output_ref.size == 2_000_000


def test_json_depth_counts_without_recursion() -> None:
    deep: object = 1
    for _ in range(10_000):
        deep = {"a": [deep]}
    assert (json_depth(None), json_depth({}), json_depth({"a": [1, {"b": 2}]}), json_depth(deep)) == (0, 1, 3, 20_000)


@pytest.mark.parametrize("error,retried", [
    (ApiException(status=500), True), (ApiException(status=503), True), (ApiException(status=429), True),
    (ApiException(status=409), True), (ApiException(status=422), False), (ApiException(status=400), False),
    (ConnectionClosedError(), True), (NoRespondersError(), True), (asyncio.TimeoutError(), True),
    (ConnectionRefusedError(), True), (MaxPayloadError(), False), (KeyError("x"), False),
    (RecursionError(), False), (ValueError("too large"), False),
])
def test_which_failures_are_retried(error: Exception, retried: bool) -> None:
    assert transient(error) is retried


def test_backoff_doubles_to_a_cap() -> None:
    assert [backoff(n) for n in (1, 2, 3, 10, 100)] == [0.5, 1.0, 2.0, 15.0, 15.0]


def test_an_effect_that_fails_transiently_is_retried_until_done() -> None:
    calls: list[int] = []

    async def flaky() -> None:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("NATS away")

    async def scenario() -> None:
        effects = Effects()
        await effects.run("k", flaky, "a flaky effect")
        assert calls == [1] and "k" in effects.pending
        await asyncio.wait_for(effects.pending["k"], 5)
        assert len(calls) == 3 and not effects.pending

    asyncio.run(scenario())


def test_an_effect_that_fails_for_good_is_not_retried() -> None:
    calls: list[int] = []

    async def broken() -> None:
        calls.append(1)
        raise KeyError("bug")

    async def scenario() -> None:
        effects = Effects()
        await effects.run("k", broken, "a broken effect")
        assert calls == [1] and not effects.pending

    asyncio.run(scenario())


def _task_event(etype: EventType, attempt: int, **data: object) -> object:
    return make_event(etype, "t", "ns", "run-1", "u1", "a", attempt, **data)


def test_an_attempts_failure_redelivered_after_its_retry_keeps_its_record() -> None:
    failed = _task_event(EventType.TASK_FAILED, 1, podName="p1", error={"reason": "Timeout", "message": "slow"})
    retry = _task_event(EventType.TASK_RETRY_SCHEDULED, 2, notBefore="2027-01-15T08:00:00.000Z")
    started = _task_event(EventType.TASK_STARTED, 2)
    in_order = fold_all(WorkflowExecutionStatus(phase="Running"), [(failed, 1), (retry, 2), (started, 3)])
    late = fold_all(WorkflowExecutionStatus(phase="Running"), [(retry, 2), (started, 3), (failed, 1)])
    for s in (in_order, late):
        (record,) = s.tasks["a"].attempts or []
        assert (record.attempt, record.phase, record.error.reason) == (1, "Failed", "Timeout")
    assert late.tasks["a"].phase == "Running" and late.tasks["a"].attempt == 2


def test_a_task_event_that_arrives_after_the_run_ended_leaves_nothing_in_flight() -> None:
    s = WorkflowExecutionStatus(phase="Running", started_at="2027-01-15T08:00:00.000Z")
    end = make_event(EventType.WORKFLOW_CANCELLED, "t", "ns", "run-1", "u1", error={"reason": "Cancelled"})
    s = fold_all(s, [(end, 5), (_task_event(EventType.TASK_DISPATCHED, 1, podName="p"), 2),
                     (_task_event(EventType.TASK_STARTED, 1), 3)])
    assert s.tasks["a"].phase == "Cancelled" and s.tasks["a"].finished_at == s.finished_at


def test_history_the_status_does_not_show_is_kept_whatever_its_sequence() -> None:
    """After a crash the state manager folds redelivered events after later ones: a status can hold
    sequence 9 without sequence 3. The orchestrator keeps what the status does not show."""
    from compozy_operator.orchestrator.run import Run

    p3_done = make_event(EventType.TASK_SUCCESS, "t", "ns", "run-1", "u1", "p3", 1, output={"v": 3})
    fan_done = make_event(EventType.TASK_SUCCESS, "t", "ns", "run-1", "u1", "fan", 1, output={})
    status = fold_all(WorkflowExecutionStatus(phase="Running", tasks={"p3": TaskStatus(phase="Running")}),
                      [(fan_done, 9)])
    run = Run("u1", "ns", "run-1", history=[(3, p3_done), (9, fan_done)])
    virtual = run.virtual(status)
    assert virtual.tasks["p3"].phase == "Succeeded" and virtual.tasks["p3"].output == {"v": 3}
    assert [seq for seq, _ in run.history] == [3]  # fan's success is in the status: dropped


@pytest.mark.parametrize("end", [EventType.WORKFLOW_SUCCESS, EventType.WORKFLOW_CANCELLED])
def test_a_tasks_late_success_is_shown_whatever_the_order(end: EventType) -> None:
    """A task's events redelivered after the run's end (a crash) give the same status in any order:
    its success is a fact, never hidden as Cancelled."""
    import itertools

    events = [(make_event(end, "t", "ns", "run-1", "u1", error={"reason": "Cancelled"}), 9),
              (_task_event(EventType.TASK_DISPATCHED, 1, podName="p"), 2), (_task_event(EventType.TASK_STARTED, 1), 3),
              (_task_event(EventType.TASK_SUCCESS, 1, output={"v": 1}), 4)]
    start = WorkflowExecutionStatus(phase="Running", started_at="2027-01-15T08:00:00.000Z")
    outcomes = {(s.tasks["a"].phase, json.dumps(s.tasks["a"].output)) for order in itertools.permutations(events)
                if (s := fold_all(start, list(order)))}
    assert outcomes == {("Succeeded", '{"v": 1}')}


def test_a_running_attempt_whose_dispatch_event_was_lost_still_times_out() -> None:
    wf = WorkflowSpec.model_validate({**WF.dump(), "tasks": [{**WF.tasks[0].dump(), "timeout": "10s"}]})
    st = TaskStatus(phase="Running", started_at="2027-01-15T08:00:00.000Z")  # no dispatchedAt
    (action,) = decide(wf, status(a=st), RUN, 1_800_000_020.0)
    assert isinstance(action, FailTask) and action.reason == "Timeout"
