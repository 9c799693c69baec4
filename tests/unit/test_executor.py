"""workflow.Executor: decisions from spec + status."""

from __future__ import annotations

from compozy_operator.api.models import ErrorInfo, TaskStatus, WorkflowExecutionStatus, WorkflowSpec
from compozy_operator.executor import Dispatch, FailTask, Finish, RunContext, decide

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


def status(phase: str = "Running", **tasks: TaskStatus) -> WorkflowExecutionStatus:
    return WorkflowExecutionStatus(phase=phase, tasks=tasks)


def test_first_task_is_dispatched_with_rendered_input() -> None:
    (action,) = decide(WF, status(), RUN)
    assert isinstance(action, Dispatch) and (action.task, action.attempt, action.input) == ("a", 1, {"text": "hi"})


def test_nothing_while_a_task_is_in_flight() -> None:
    assert decide(WF, status(a=TaskStatus(phase="Running")), RUN) == []
    assert decide(WF, status(a=TaskStatus(phase="Pending")), RUN) == []


def test_next_task_sees_predecessor_output_and_env() -> None:
    (action,) = decide(WF, status(a=TaskStatus(phase="Succeeded", output={"n": 7})), RUN)
    assert isinstance(action, Dispatch) and action.task == "b" and action.input == {"n": 7, "s": "terse"}


def test_end_renders_output() -> None:
    s = status(a=TaskStatus(phase="Succeeded", output={"n": 7}), b=TaskStatus(phase="Succeeded", output={"n": 8}))
    assert decide(WF, s, RUN) == [Finish("Succeeded", {"n": 8})]


def test_failure_takes_on_error_path_with_error_in_context() -> None:
    s = status(a=TaskStatus(phase="Failed", error=ErrorInfo(reason="ToolError", message="boom")))
    (action,) = decide(WF, s, RUN)
    assert isinstance(action, Dispatch) and action.task == "report" and action.input == {"why": "boom"}


def test_failure_without_on_error_fails_the_workflow() -> None:
    s = status(a=TaskStatus(phase="Succeeded", output={"n": 1}),
               b=TaskStatus(phase="Failed", error=ErrorInfo(reason="ToolError", message="bad")))
    (action,) = decide(WF, s, RUN)
    assert isinstance(action, Finish) and action.phase == "Failed"
    assert action.error.task == "b" and action.error.message == "task b failed: bad"


def test_template_error_fails_the_task_without_a_pod() -> None:
    (action,) = decide(WF, status(a=TaskStatus(phase="Succeeded", output={})), RUN)
    assert isinstance(action, FailTask) and action.task == "b" and action.reason == "TemplateError"
    assert "tasks.b.with.n" in action.message


def test_output_template_error_fails_the_workflow() -> None:
    s = status(a=TaskStatus(phase="Succeeded", output={"n": 1}), b=TaskStatus(phase="Succeeded", output={}))
    (action,) = decide(WF, s, RUN)
    assert isinstance(action, Finish) and action.phase == "Failed" and action.error.reason == "TemplateError"


def test_not_running_means_no_actions() -> None:
    for phase in ("Pending", "Succeeded", "Failed", "Cancelled", "TimedOut"):
        assert decide(WF, status(phase), RUN) == []


def test_a_cycle_fails_instead_of_looping() -> None:
    wf = WF.model_copy(deep=True)
    wf.tasks[1].on_success = type(wf.tasks[0].on_success)(next="a")
    s = status(a=TaskStatus(phase="Succeeded", output={"n": 1}), b=TaskStatus(phase="Succeeded", output={"n": 1}))
    (action,) = decide(wf, s, RUN)
    assert isinstance(action, Finish) and action.error.reason == "Cycle"


def test_decide_is_deterministic() -> None:
    s = status(a=TaskStatus(phase="Succeeded", output={"n": 7}))
    assert decide(WF, s, RUN) == decide(WF, s, RUN)
