"""The status reducer: transitions, idempotency, progress."""

from __future__ import annotations

from compozy_operator.resources.models import WorkflowExecutionStatus
from compozy_operator.events import EventType, make_event
from compozy_operator.reducer import fold, fold_all, format_duration

UID = "uid-1"


def ev(etype: EventType, task: str | None = None, attempt: int | None = None, time: str | None = None, **data):
    e = make_event(etype, "test", "ns", "run", UID, task, attempt, **data)
    if time:
        e.time = time
    return e


def run(*events) -> WorkflowExecutionStatus:
    s = WorkflowExecutionStatus()
    for seq, e in enumerate(events, start=1):
        s = fold(s, e, seq)
    return s


HAPPY = [
    ev(EventType.WORKFLOW_STARTED, workflow="hello", taskCount=2, time="2026-01-01T00:00:00.000000Z"),
    ev(EventType.TASK_DISPATCHED, "a", 1, podName="run-a-1"),
    ev(EventType.TASK_STARTED, "a", 1, time="2026-01-01T00:00:01.000000Z"),
    ev(EventType.TASK_SUCCESS, "a", 1, output={"n": 1}, time="2026-01-01T00:00:02.000000Z"),
    ev(EventType.TASK_DISPATCHED, "b", 1, podName="run-b-1"),
    ev(EventType.TASK_STARTED, "b", 1),
    ev(EventType.TASK_SUCCESS, "b", 1, output={"m": 2}),
    ev(EventType.WORKFLOW_SUCCESS, output={"n": 1}, time="2026-01-01T00:01:05.000000Z"),
]


def test_happy_path() -> None:
    s = run(*HAPPY)
    assert s.phase == "Succeeded" and s.progress == "2/2" and s.output == {"n": 1}
    assert s.tasks["a"].phase == "Succeeded" and s.tasks["a"].output == {"n": 1}
    assert s.tasks["a"].pod_name == "run-a-1" and s.tasks["a"].started_at == "2026-01-01T00:00:01.000000Z"
    assert s.duration == "1m5s" and s.state_seq == len(HAPPY)
    assert [(c.type, c.status, c.reason) for c in s.conditions] == [("Succeeded", "True", "Succeeded")]


def test_progress_while_running() -> None:
    s = run(*HAPPY[:4])
    assert (s.phase, s.progress, s.tasks["a"].phase) == ("Running", "1/2", "Succeeded")


def test_redelivery_by_sequence_is_a_no_op() -> None:
    s = run(*HAPPY[:4])
    assert fold(s, HAPPY[1], 2) == s
    assert fold(s, HAPPY[3], 4) == s


def test_the_same_fact_under_a_new_sequence_changes_nothing_but_the_sequence() -> None:
    s = run(*HAPPY[:4])
    again = fold(s, HAPPY[3], 99)
    assert again.model_copy(update={"state_seq": s.state_seq}) == s and again.state_seq == 99
    # a dispatch of an attempt that already finished does not reset the task
    assert fold(s, HAPPY[1], 100).tasks["a"].phase == "Succeeded"


def test_failure_keeps_error_and_attempt_history() -> None:
    s = run(HAPPY[0], HAPPY[1], HAPPY[2],
            ev(EventType.TASK_FAILED, "a", 1, error={"reason": "ToolError", "message": "boom"}),
            ev(EventType.WORKFLOW_FAILED, error={"reason": "ToolError", "message": "task a failed: boom"}))
    assert s.phase == "Failed" and s.message == "task a failed: boom"
    assert s.tasks["a"].error.reason == "ToolError" and s.tasks["a"].attempts[0].error.message == "boom"
    assert s.conditions[0].status == "False" and s.conditions[0].reason == "Failed"


def test_stale_attempt_events_are_ignored() -> None:
    s = run(HAPPY[0], ev(EventType.TASK_DISPATCHED, "a", 2, podName="run-a-2"))
    assert fold(s, ev(EventType.TASK_SUCCESS, "a", 1, output={}), 10).tasks["a"].phase == "Pending"


def test_terminal_workflow_takes_no_new_end() -> None:
    s = run(*HAPPY)
    assert fold(s, ev(EventType.WORKFLOW_FAILED, error={"message": "late"}), 100).phase == "Succeeded"


def test_events_of_unknown_type_only_move_the_sequence() -> None:
    s = run(HAPPY[0])
    e = HAPPY[1].model_copy(update={"type": "SomethingNew"})
    assert fold(s, e, 5).model_copy(update={"state_seq": 1}) == s


def test_format_duration() -> None:
    assert [format_duration(x) for x in (0, 59.6, 61, 3600, 3725)] == ["0s", "1m0s", "1m1s", "1h0m0s", "1h2m5s"]


def test_task_failed_before_dispatch_is_recorded() -> None:
    s = run(HAPPY[0], ev(EventType.TASK_FAILED, "a", 1, error={"reason": "TemplateError", "message": "x: bad"}))
    assert s.tasks["a"].phase == "Failed" and s.tasks["a"].error.reason == "TemplateError"


def test_any_order_and_any_repetition_give_the_same_status() -> None:
    import itertools

    facts = HAPPY[1:4] + [ev(EventType.TASK_DISPATCHED, "b", 1, podName="run-b-1"),
                          ev(EventType.TASK_FAILED, "b", 1, error={"reason": "X", "message": "m"})]
    reference = run(HAPPY[0], *facts)
    for order in itertools.permutations(facts):
        s = run(HAPPY[0], *order, *order[:2])  # and some delivered twice
        assert s.model_copy(update={"state_seq": 0}) == reference.model_copy(update={"state_seq": 0}), order


def test_a_newer_attempt_replaces_an_older_one_in_any_order() -> None:
    first = [ev(EventType.TASK_DISPATCHED, "a", 1, podName="p1"),
             ev(EventType.TASK_FAILED, "a", 1, error={"reason": "X", "message": "one"})]
    second = [ev(EventType.TASK_DISPATCHED, "a", 2, podName="p2"), ev(EventType.TASK_SUCCESS, "a", 2, output={})]
    for events in (first + second, second + first, second[:1] + first + second[1:]):
        task = run(HAPPY[0], *events).tasks["a"]
        assert (task.attempt, task.phase, task.pod_name) == (2, "Succeeded", "p2"), events


def test_retry_scheduled_then_new_attempt_keeps_history() -> None:
    s = run(HAPPY[0], ev(EventType.TASK_DISPATCHED, "a", 1, podName="p1"),
            ev(EventType.TASK_FAILED, "a", 1, error={"reason": "ToolError", "message": "one"}),
            ev(EventType.TASK_RETRY_SCHEDULED, "a", 2, notBefore="2026-01-01T00:00:05.000000Z", delay=1.0))
    a = s.tasks["a"]
    assert (a.phase, a.attempt, a.not_before) == ("Waiting", 2, "2026-01-01T00:00:05.000000Z")
    assert [r.error.message for r in a.attempts] == ["one"]
    s = fold(s, ev(EventType.TASK_DISPATCHED, "a", 2, podName="p2"), 10)
    assert (s.tasks["a"].phase, s.tasks["a"].pod_name, s.tasks["a"].dispatched_at is not None) == ("Pending", "p2", True)


def test_cancelled_failure_and_ended_runs_leave_nothing_in_flight() -> None:
    s = run(HAPPY[0], ev(EventType.TASK_DISPATCHED, "a", 1), ev(EventType.TASK_STARTED, "a", 1),
            ev(EventType.TASK_DISPATCHED, "b", 1),
            ev(EventType.TASK_FAILED, "b", 1, error={"reason": "Cancelled", "message": "stop"}))
    assert s.tasks["b"].phase == "Cancelled"
    s = fold(s, ev(EventType.WORKFLOW_CANCELLED, error={"reason": "Cancelled", "message": "by user"}), 20)
    assert s.phase == "Cancelled" and {t.phase for t in s.tasks.values()} == {"Cancelled"}
    # a's success, arriving late, is still a fact: shown as if it had come before the end
    assert fold(s, ev(EventType.TASK_SUCCESS, "a", 1, output={}), 21).tasks["a"].phase == "Succeeded"
    assert fold(s, ev(EventType.TASK_FAILED, "a", 1, error={"reason": "Terminated"}), 21).tasks["a"].phase == "Cancelled"


def test_a_1000_task_collection_keeps_the_status_under_256_kib() -> None:
    """ARCHITECTURE.md §7: status <= 256 KiB for a 1,000-task execution (outputs of this size stay inline)."""
    import json

    e = lambda t, task=None, att=None, **d: make_event(  # noqa: E731
        t, "x", "ns", "some-execution-name-abc12", "0b8f5a7e-1c0d-4c55-9d57-1234567890ab", task, att, **d)
    events = [e(EventType.WORKFLOW_STARTED, workflow="wf", taskCount=1)]
    for i in range(1000):
        key = f"each-url[{i}]"
        events += [e(EventType.TASK_DISPATCHED, key, 1, podName=f"some-execution-name-abc12-each-url-{i}-ab12c-1"),
                   e(EventType.TASK_STARTED, key, 1),
                   e(EventType.TASK_SUCCESS, key, 1, output={"status": 200, "bytes": 12345})]
    events.append(e(EventType.WORKFLOW_SUCCESS, output={"n": 1000}))
    s = fold_all(WorkflowExecutionStatus(), [(ev, n) for n, ev in enumerate(events, 1)])
    size = len(json.dumps(s.dump()))
    assert size <= 256 * 1024, f"{size / 1024:.0f} KiB"


HANDLED = [
    ev(EventType.WORKFLOW_STARTED, workflow="w", taskCount=2),
    ev(EventType.TASK_DISPATCHED, "count", 1, podName="run-count-1"),
    ev(EventType.TASK_FAILED, "count", 1, error={"reason": "TemplateError", "message": "tasks.frist: no such task"}),
    ev(EventType.TASK_DISPATCHED, "report", 1, podName="run-report-1"),
    ev(EventType.TASK_SUCCESS, "report", 1, output={}),
    ev(EventType.WORKFLOW_SUCCESS, output={}),
]


def test_a_succeeded_run_with_a_handled_failure_says_which_task_failed() -> None:
    """Issue 11.10: onError keeps the run Succeeded, but the failure shows at the top."""
    s = run(*HANDLED)
    assert s.phase == "Succeeded"
    assert s.message == "succeeded; handled failure of count (TemplateError)"
    handled = [c for c in s.conditions if c.type == "FailuresHandled"]
    assert [(c.status, c.reason) for c in handled] == [("True", "TemplateError")]
    assert "task count failed: tasks.frist: no such task" in (handled[0].message or "")
    assert [c.type for c in s.conditions] == ["Succeeded", "FailuresHandled"]


def test_a_failure_folded_after_the_success_is_shown_too() -> None:
    late = [*HANDLED[:2], *HANDLED[3:], HANDLED[2]]  # the failure's event redelivered last
    assert run(*late).message == run(*HANDLED).message


def test_a_clean_success_has_no_handled_condition() -> None:
    s = run(*HAPPY)
    assert s.message == "succeeded" and [c.type for c in s.conditions] == ["Succeeded"]


def test_many_handled_failures_are_counted_not_all_named() -> None:
    events = [HANDLED[0]]
    for i in range(5):
        events.append(ev(EventType.TASK_FAILED, f"t{i}", 1, error={"reason": "ToolError", "message": "x"}))
    s = run(*events, ev(EventType.WORKFLOW_SUCCESS, output={}))
    assert s.message == "succeeded; handled failure of t0 (ToolError), t1 (ToolError), t2 (ToolError) and 2 more"


def test_a_waiting_pod_shows_why_until_it_starts() -> None:
    """Issue 11.4: while a pod waits (a missing Secret, an image pull), the task and the run say why."""
    start = [HAPPY[0], HAPPY[1]]
    waiting = ev(EventType.TASK_POD_WAITING, "a", 1, id_extra="CreateContainerConfigError", podName="run-a-1",
                 reason="CreateContainerConfigError", message='secret "llm" not found')
    s = run(*start, waiting)
    assert s.tasks["a"].message == 'CreateContainerConfigError: secret "llm" not found'
    assert s.message == 'task a waits: CreateContainerConfigError: secret "llm" not found'
    s = run(*start, waiting, HAPPY[2])
    assert s.tasks["a"].message is None and s.message == "running"


def test_waiting_news_of_an_attempt_that_already_started_changes_nothing() -> None:
    waiting = ev(EventType.TASK_POD_WAITING, "a", 1, reason="ImagePullBackOff", message="back-off")
    s = run(HAPPY[0], HAPPY[1], HAPPY[2], waiting)
    assert s.tasks["a"].message is None and s.message == "running"


def test_observed_generation_is_the_spec_acted_on() -> None:
    """Issue 11.5: written at the start (generation 1) and by an end caused by a change (cancel: 2)."""
    s = run(ev(EventType.WORKFLOW_STARTED, workflow="w", taskCount=1, generation=1))
    assert s.observed_generation == 1
    s = fold(s, ev(EventType.WORKFLOW_CANCELLED, error={"reason": "Cancelled"}, generation=2), 5)
    assert s.observed_generation == 2
    assert fold(s, ev(EventType.WORKFLOW_STARTED, workflow="w", taskCount=1, generation=1), 6).observed_generation == 2


def test_a_waiting_message_is_bounded() -> None:
    waiting = ev(EventType.TASK_POD_WAITING, "a", 1, reason="ErrImagePull", message="x" * 100_000)
    s = run(HAPPY[0], HAPPY[1], waiting)
    assert len(s.tasks["a"].message or "") == 1000 and len(s.message or "") < 1100
