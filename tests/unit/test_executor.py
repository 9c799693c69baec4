"""workflow.Executor: decisions from spec + status."""

from __future__ import annotations

from compozy_operator.resources.models import ErrorInfo, TaskStatus, WorkflowExecutionStatus, WorkflowSpec
from compozy_operator.executor import (Dispatch, FailTask, Finish, RunContext, ScheduleRetry, WakeAt, backoff_delay,
                                       decide, rfc3339)

WF = WorkflowSpec.model_validate({
    "env": {"STYLE": "terse"},
    "tools": [{"id": "t", "python": "def run(i, c): return i"}],
    "tasks": [
        {"id": "a", "tool": "t", "with": {"text": "{{ workflow.input.text }}"}, "onSuccess": {"next": "b"},
         "onError": {"next": "report"}},
        {"id": "b", "tool": "t", "with": {"n": "{{ tasks.a.output.n }}", "s": "{{ env.STYLE }}"}},
        {"id": "report", "tool": "t", "with": {"why": "{{ tasks.a.error.message }}"}},
    ],
    "output": {"n": "{{ tasks.b.output.n }}"},
})
RUN = RunContext(execution="run-1", input={"text": "hi"})
NOW = 1_800_000_000.0


def status(phase: str = "Running", **tasks: TaskStatus) -> WorkflowExecutionStatus:
    return WorkflowExecutionStatus(phase=phase, tasks=tasks)


def test_first_task_is_dispatched_with_rendered_input() -> None:
    (action,) = decide(WF, status(), RUN, NOW)
    assert isinstance(action, Dispatch) and (action.task, action.attempt, action.input) == ("a", 1, {"text": "hi"})


def test_nothing_while_a_task_is_in_flight() -> None:
    assert decide(WF, status(a=TaskStatus(phase="Running")), RUN, NOW) == []
    assert decide(WF, status(a=TaskStatus(phase="Pending")), RUN, NOW) == []


def test_next_task_sees_predecessor_output_and_env() -> None:
    (action,) = decide(WF, status(a=TaskStatus(phase="Succeeded", output={"n": 7})), RUN, NOW)
    assert isinstance(action, Dispatch) and action.task == "b" and action.input == {"n": 7, "s": "terse"}


def test_end_renders_output() -> None:
    s = status(a=TaskStatus(phase="Succeeded", output={"n": 7}), b=TaskStatus(phase="Succeeded", output={"n": 8}))
    assert decide(WF, s, RUN, NOW) == [Finish("Succeeded", {"n": 8})]


def test_failure_takes_on_error_path_with_error_in_context() -> None:
    s = status(a=TaskStatus(phase="Failed", error=ErrorInfo(reason="ToolError", message="boom")))
    (action,) = decide(WF, s, RUN, NOW)
    assert isinstance(action, Dispatch) and action.task == "report" and action.input == {"why": "boom"}


def test_failure_without_on_error_fails_the_workflow() -> None:
    s = status(a=TaskStatus(phase="Succeeded", output={"n": 1}),
               b=TaskStatus(phase="Failed", error=ErrorInfo(reason="ToolError", message="bad")))
    (action,) = decide(WF, s, RUN, NOW)
    assert isinstance(action, Finish) and action.phase == "Failed"
    assert action.error.task == "b" and action.error.message == "task b failed: bad"


def test_template_error_fails_the_task_without_a_pod() -> None:
    (action,) = decide(WF, status(a=TaskStatus(phase="Succeeded", output={})), RUN, NOW)
    assert isinstance(action, FailTask) and action.task == "b" and action.reason == "TemplateError"
    assert "tasks.b.with.n" in action.message


def test_output_template_error_fails_the_workflow() -> None:
    s = status(a=TaskStatus(phase="Succeeded", output={"n": 1}), b=TaskStatus(phase="Succeeded", output={}))
    (action,) = decide(WF, s, RUN, NOW)
    assert isinstance(action, Finish) and action.phase == "Failed" and action.error.reason == "TemplateError"


def test_not_running_means_no_actions() -> None:
    for phase in ("Pending", "Succeeded", "Failed", "Cancelled", "TimedOut"):
        assert decide(WF, status(phase), RUN, NOW) == []


def test_a_cycle_fails_instead_of_looping() -> None:
    wf = WF.model_copy(deep=True)
    wf.tasks[1].on_success = type(wf.tasks[0].on_success)(next="a")
    s = status(a=TaskStatus(phase="Succeeded", output={"n": 1}), b=TaskStatus(phase="Succeeded", output={"n": 1}))
    (action,) = decide(wf, s, RUN, NOW)
    assert isinstance(action, Finish) and action.error.reason == "Cycle"


def test_decide_is_deterministic() -> None:
    s = status(a=TaskStatus(phase="Succeeded", output={"n": 7}))
    assert decide(WF, s, RUN, NOW) == decide(WF, s, RUN, NOW)


# --- retries, timeouts, cancel -------------------------------------------------------------------------

RETRYING = WorkflowSpec.model_validate({
    "tools": [{"id": "t", "python": "x"}],
    "timeout": "10m",
    "tasks": [{"id": "a", "tool": "t", "timeout": "30s",
               "retry": {"limit": 2, "backoff": {"initial": "1s", "factor": 3, "max": "2s"}}}],
})


def failed(attempt: int, reason: str = "ToolError", at: float = NOW - 10) -> TaskStatus:
    return TaskStatus(phase="Failed", attempt=attempt, finished_at=rfc3339(at),
                      error=ErrorInfo(reason=reason, message="boom"))


def test_backoff_grows_and_caps() -> None:
    task = RETRYING.tasks[0]
    assert [backoff_delay(task, n) for n in (1, 2, 3)] == [1.0, 2.0, 2.0]


def test_failed_attempt_schedules_a_retry_with_backoff() -> None:
    (action,) = decide(RETRYING, status(a=failed(1)), RUN, NOW)
    assert action == ScheduleRetry("a", 2, 1.0, rfc3339(NOW - 9))
    (action,) = decide(RETRYING, status(a=failed(2)), RUN, NOW)
    assert isinstance(action, ScheduleRetry) and (action.attempt, action.delay) == (3, 2.0)


def test_retries_exhausted_fail_the_workflow_naming_the_attempts() -> None:
    (action,) = decide(RETRYING, status(a=failed(3)), RUN, NOW)
    assert isinstance(action, Finish) and action.phase == "Failed"
    assert action.error.message == "task a failed after 3 attempts: boom"


def test_non_retryable_failures_are_not_retried() -> None:
    for reason in ("TemplateError", "ToolLoadError", "Cancelled"):
        (action,) = decide(RETRYING, status(a=failed(1, reason)), RUN, NOW)
        assert isinstance(action, Finish), reason


def test_a_waiting_retry_starts_when_due_and_not_before() -> None:
    waiting = TaskStatus(phase="Waiting", attempt=2, not_before=rfc3339(NOW + 5))
    assert decide(RETRYING, status(a=waiting), RUN, NOW) == [WakeAt(NOW + 5)]
    (action,) = decide(RETRYING, status(a=waiting), RUN, NOW + 5)
    assert isinstance(action, Dispatch) and (action.task, action.attempt) == ("a", 2)


def test_task_timeout_fails_the_attempt_and_stops_its_pod() -> None:
    running = TaskStatus(phase="Running", attempt=1, dispatched_at=rfc3339(NOW - 10))
    assert decide(RETRYING, status(a=running), RUN, NOW) == [WakeAt(NOW + 20)]
    (action,) = decide(RETRYING, status(a=running), RUN, NOW + 20)
    assert action == FailTask("a", 1, "Timeout", "attempt 1 exceeded the task timeout of 30s", stop_pod=True)


def test_workflow_timeout_ends_the_run() -> None:
    run = RunContext(execution="r", input={}, timeout=60)
    s = status(a=TaskStatus(phase="Running", attempt=1, dispatched_at=rfc3339(NOW)))
    s.started_at = rfc3339(NOW - 30)
    assert decide(RETRYING, s, run, NOW) == [WakeAt(NOW + 30), WakeAt(NOW + 30)]
    (action,) = decide(RETRYING, s, run, NOW + 30)
    assert isinstance(action, Finish) and action.phase == "TimedOut" and action.error.reason == "Timeout"


def test_cancel_ends_a_running_run_at_once() -> None:
    run = RunContext(execution="r", input={}, cancel=True)
    (action,) = decide(RETRYING, status(a=TaskStatus(phase="Running")), run, NOW)
    assert isinstance(action, Finish) and action.phase == "Cancelled"
    assert decide(RETRYING, status("Succeeded"), run, NOW) == []


def test_unknown_transition_target_fails_the_run_instead_of_crashing() -> None:
    wf = WF.model_copy(deep=True)  # a spec that skipped validation
    wf.tasks[0].on_success = type(wf.tasks[0].on_success)(next="nowhere")
    (action,) = decide(wf, status(a=TaskStatus(phase="Succeeded", output={"n": 1})), RUN, NOW)
    assert isinstance(action, Finish) and action.phase == "Failed" and action.error.reason == "InvalidTransition"
    assert action.error.message == "task a: no task with id 'nowhere' to go to"


def test_final_ends_the_run_even_with_a_next_task() -> None:
    wf = WF.model_copy(deep=True)
    wf.tasks[0].final = True
    wf.output = None
    assert decide(wf, status(a=TaskStatus(phase="Succeeded", output={"n": 1})), RUN, NOW) == [Finish("Succeeded")]


def test_run_deadline_wake_comes_with_every_action_set() -> None:
    run = RunContext(execution="r", input={"text": "hi"}, timeout=60)
    s = status()
    s.started_at = rfc3339(NOW - 30)
    actions = decide(WF, s, run, NOW)
    assert isinstance(actions[0], Dispatch) and actions[1:] == [WakeAt(NOW + 30)]
