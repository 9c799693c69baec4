"""workflow.Executor: what to do next, from the workflow spec and the execution status alone.

Pure: no clock, no I/O. The orchestrator calls :func:`decide` whenever the status may have
moved and carries out the actions; calling it twice on the same status gives the same actions,
which the orchestrator makes harmless (deterministic pod names and event ids).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .api.models import ErrorInfo, Task, Tool, WorkflowExecutionStatus, WorkflowSpec
from .templates import TemplateError, render


@dataclass(frozen=True)
class Dispatch:
    """Run one attempt of a task in a pod."""

    task: str
    attempt: int
    tool: Tool
    input: dict[str, Any]


@dataclass(frozen=True)
class FailTask:
    """The orchestrator itself fails an attempt (e.g. its input template does not render)."""

    task: str
    attempt: int
    reason: str
    message: str


@dataclass(frozen=True)
class Finish:
    phase: str  # Succeeded | Failed
    output: Any = None
    error: ErrorInfo | None = None


Action = Dispatch | FailTask | Finish


@dataclass(frozen=True)
class RunContext:
    """Facts of the run that templates may read."""

    execution: str
    input: Any
    env: dict[str, str] = field(default_factory=dict)


def template_context(wf: WorkflowSpec, status: WorkflowExecutionStatus, run: RunContext) -> dict[str, Any]:
    tasks = {
        tid: {"output": t.output, "status": t.phase, "error": t.error.dump() if t.error else None}
        for tid, t in status.tasks.items()
    }
    return {"workflow": {"input": run.input, "id": run.execution}, "tasks": tasks, "env": {**(wf.env or {}), **run.env}}


def _tool(wf: WorkflowSpec, task: Task) -> Tool:
    for tool in wf.tools or []:
        if tool.id == task.tool:
            return tool
    raise LookupError(f"task {task.id}: tool {task.tool!r} is not defined")  # validation prevents this


def _start_task(wf: WorkflowSpec, task: Task, status: WorkflowExecutionStatus, run: RunContext) -> Action:
    try:
        rendered = render(task.with_ or {}, template_context(wf, status, run), f"tasks.{task.id}.with")
    except TemplateError as e:
        return FailTask(task.id, 1, "TemplateError", str(e))
    return Dispatch(task.id, 1, _tool(wf, task), rendered)


def _finish_success(wf: WorkflowSpec, status: WorkflowExecutionStatus, run: RunContext) -> Finish:
    if wf.output is None:
        return Finish("Succeeded", None)
    try:
        return Finish("Succeeded", render(wf.output, template_context(wf, status, run), "spec.output"))
    except TemplateError as e:
        return Finish("Failed", error=ErrorInfo(reason="TemplateError", message=str(e)))


def decide(wf: WorkflowSpec, status: WorkflowExecutionStatus, run: RunContext) -> list[Action]:
    """The next actions of a Running execution (empty while tasks are in flight or after the end)."""
    if status.phase != "Running":
        return []
    by_id = {t.id: t for t in wf.tasks}
    task: Task | None = wf.tasks[0]
    visited: set[str] = set()
    while task is not None:
        if task.id in visited:
            return [Finish("Failed", error=ErrorInfo(task=task.id, reason="Cycle",
                                                     message=f"task {task.id} would run a second time"))]
        visited.add(task.id)
        st = status.tasks.get(task.id)
        if st is None:
            return [_start_task(wf, task, status, run)]
        if st.phase in ("Pending", "Running"):
            return []
        if st.phase == "Succeeded":
            nxt = task.on_success.next if task.on_success else None
            if task.final or not nxt:
                return [_finish_success(wf, status, run)]
            task = by_id[nxt]
            continue
        # Failed (retries arrive with the full task model)
        nxt = task.on_error.next if task.on_error else None
        if nxt:
            task = by_id[nxt]
            continue
        err = st.error or ErrorInfo()
        return [Finish("Failed", error=ErrorInfo(task=task.id, reason=err.reason,
                                                 message=f"task {task.id} failed: {err.message or err.reason}"))]
    return []
