"""workflow.Executor: what to do next, from the workflow spec and the execution status alone.

Pure: no I/O, and the clock comes in as an argument. The orchestrator calls :func:`decide`
whenever the status may have moved (and at the times a :class:`WakeAt` asks for) and carries
out the actions; calling it twice on the same status and time gives the same actions, which the
orchestrator makes harmless (deterministic pod names and event ids).

The walk. Top-level tasks run one at a time: from ``tasks[0]``, each ended task leads to the next
(``onSuccess.next``, a router's chosen route, ``onError.next``) until a task has no successor
(the run ends) or a task would run a second time (the run fails with reason ``Cycle``: a task
runs at most once per run, so its status entry is never ambiguous).

Task types:

* ``basic`` runs its tool, or its agent's action, in a pod (:class:`Dispatch`), with retries and a
  per-attempt timeout. For an agent the action's ``prompt`` and the agent's ``instructions`` are
  rendered here, with the task's rendered ``with`` as ``input``.
* ``router`` renders ``condition``; the value (a string as it is, anything else as JSON, so
  booleans are ``true``/``false``) picks ``routes[value]``, else ``default``. It succeeds with
  output ``{"route": value, "next": task id}`` and the walk continues at that task; the status
  entry, not a second rendering, decides where. No match fails it (``NoRoute``), a template
  error too (``TemplateError``).
* ``parallel`` runs its basic child ``tasks`` (status key: the child's id).
* ``collection`` renders ``items`` (must give a list, else ``InvalidItems``) and runs ``task``
  once per item that passes ``filter`` (status key ``<id>[<index>]``, the index in the full
  list; ``item`` and ``index`` in the template context). A ``filter`` value that is JSON-falsy,
  or a string such as ``false``, ``0``, ``no`` or empty, skips the item. The output is the list
  of the children's outputs in item order (skipped items left out). A collection behaves like a
  ``waitAll`` parallel task; ``mode: sequential`` means ``maxWorkers: 1``. ``items`` and
  ``filter`` may only use facts of earlier tasks: they are rendered before any child starts, and
  a failure then fails the collection at once. More than ``templates.LIMITS.collection_items``
  items fail it with reason ``TemplateLimit``, like any template past a limit of time, memory or
  size (never retried).

Composite tasks (router, parallel, collection) run no pod of their own and have no status entry
while they run: their state is derived from their children's entries. They get one when they
end: decide returns :class:`CompleteTask` or :class:`FailTask` (attempt 1, reason
``ChildFailed`` for children) for them, repeatedly until the status shows it. A parallel task or
collection ends only once none of its children is in flight, so the walk never moves on while a
child of an earlier task still runs. ``retry`` and ``timeout`` belong to basic tasks and
children; composites have neither (validation refuses them). A transition to an unknown id (a
spec that skipped validation) fails the run with reason ``InvalidTransition``.

Children. In flight: ``Waiting`` (a retry scheduled), ``Pending``, ``Running``, or ``Failed``
with a retry still to schedule; ``maxWorkers`` bounds how many are. A child *fails* when it
fails for good (retries exhausted, or not retryable). Strategies of a parallel task:

* ``waitAll`` (default; collections too): once a child fails, no new child starts; those in
  flight run to their end (retries included); then the task fails. Output: child id -> output.
* ``failFast``: the first failure cancels the children in flight (``FailTask`` reason
  ``Cancelled``, stopping the pod of a dispatched one) and no new child starts; the task fails.
* ``bestEffort``: every child runs; the task succeeds when all have ended, with output
  child id -> ``{"output": ...}`` or ``{"error": {"reason": ..., "message": ...}}``.
* ``race``: the first success cancels the others; output ``{"winner": id, "output": ...}``
  (the earliest ``finishedAt`` among successes, ties by declaration order). The task fails only
  when every child has failed.

Retry rounds (``spec.retry``, docs/retry.md). :func:`retry_plan` names what a round resets; the
reducer shows a reset task as ``Skipped`` (reducer.RESET), and the walk treats it as not yet run
in this round: it starts with :func:`next_attempt` (attempt numbers never repeat in a run), and a
composite's own entry ends with its next attempt too. ``retry.limit`` counts the attempts of the
round (:func:`in_round`), and the run's deadline counts from ``retriedAt``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .resources.models import (
    MAX_DURATION_SECONDS, Agent, AgentAction, ErrorInfo, Task, TaskStatus, Tool, WorkflowExecutionStatus, WorkflowSpec,
    parse_duration,
)
from .agents.providers import API_KEY_ENV
from .reducer import RESET, TASK_TERMINAL
from .templates import LIMITS, TaskFacts, TemplateError, render

# Failures that would fail the same way again: never retried. (Agents: a 401/403 or a 400 from
# the provider, an answer that never matched the output schema, a tool loop that never ended.
# TemplateLimit: a template went past a bound of time, memory, output size or collection items.)
NON_RETRYABLE = frozenset({
    "TemplateError", "TemplateLimit", "EvaluationLimit", "ToolLoadError", "InvalidTool", "Cancelled",
    "InputTooLarge", "PodRejected",
    "CommandRefused",  # the runner refused a command not its own (task_executor): not the tool's failure
    "ProviderAuthError", "ProviderBadRequest", "OutputSchemaNotSatisfied", "MaxIterationsExceeded",
    "ApiKeyMissing",  # a pooled agent's model.apiKeyEnv is not among its pool's variables (task_executor)
    # a pod that can never start as it is (orchestrator.pod_state.CONFIG_FAILURES): a missing Secret, ...
    "CreateContainerConfigError", "CreateContainerError", "InvalidImageName", "ErrImageNeverPull",
})
IN_FLIGHT = frozenset({"Waiting", "Pending", "Running"})


@dataclass(frozen=True)
class AgentCall:
    """An agent task's work: the agent, the action, its prompts rendered, the tools it may call."""

    agent: Agent
    action: AgentAction
    instructions: str | None
    prompt: str
    tools: tuple[Tool, ...]


@dataclass(frozen=True)
class Dispatch:
    """Run one attempt of a task in a pod: a tool, or an agent's action."""

    task: str
    attempt: int
    input: dict[str, Any]
    tool: Tool | None = None
    agent: AgentCall | None = None

    @property
    def runs(self) -> dict[str, str]:
        """What the attempt runs, for events and logs: ``{"tool": id}`` or ``{"agent": id, "action": id}``."""
        if self.agent:
            return {"agent": self.agent.agent.id, "action": self.agent.action.id}
        assert self.tool is not None
        return {"tool": self.tool.id}

    def command(self) -> dict[str, Any]:
        """The work part of the TaskExecute command. Holds no secret: the API key stays in its Secret."""
        if self.agent is None:
            assert self.tool is not None
            return {"tool": self.tool.dump(), "input": self.input}
        a = self.agent
        model = a.agent.model.model_copy(update={"api_key_secret_ref": None})
        agent = {"id": a.agent.id, "model": model.dump(), "instructions": a.instructions,
                 "maxIterations": a.agent.max_iterations, "logMessages": a.agent.log_messages}
        action = {"id": a.action.id, "prompt": a.prompt, "outputSchema": a.action.output_schema,
                  "outputRetries": a.action.output_retries}
        return {"agent": {k: v for k, v in agent.items() if v is not None},
                "action": {k: v for k, v in action.items() if v is not None},
                "tools": [t.dump() for t in a.tools], "input": self.input}

    def rendered(self) -> dict[str, Any]:
        """What the attempt receives after templates, for people to read (its TaskDispatched event):
        the input, and an agent's prompt and instructions. No secret is in it: secrets reach the
        attempt only through Secret references in its pod's env (the API key too), never through templates."""
        if self.agent is None:
            return {"input": self.input}
        extra = {"instructions": self.agent.instructions} if self.agent.instructions is not None else {}
        return {"input": self.input, "prompt": self.agent.prompt, **extra}

    @property
    def image(self) -> str | None:
        return self.tool.image if self.tool else None

    @property
    def pool(self) -> str | None:
        """The RunnerPool the attempt runs on (None: a pod of its own)."""
        return self.agent.agent.pool if self.agent else self.tool.pool if self.tool else None

    @property
    def resources(self) -> dict[str, Any] | None:
        return self.tool.resources if self.tool else None

    @property
    def env(self) -> list[dict[str, Any]]:
        """Pod env of the work: the tool's, or the agent's tools' plus the API key from its Secret."""
        if self.agent is None:
            return list(self.tool.env or []) if self.tool else []
        env = [e for t in self.agent.tools for e in t.env or []]
        if ref := self.agent.agent.model.api_key_secret_ref:
            env.append({"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}})
        return env


@dataclass(frozen=True)
class FailTask:
    """The orchestrator itself fails an attempt: its input does not render, or it ran out of time
    (``stop_pod``: the attempt's pod must be stopped)."""

    task: str
    attempt: int
    reason: str
    message: str
    stop_pod: bool = False


@dataclass(frozen=True)
class CompleteTask:
    """A task that runs no pod of its own (router, parallel, collection) succeeded with ``output``
    (``attempt``: 1, or the next one after a retry round reset it)."""

    task: str
    output: Any
    attempt: int = 1


@dataclass(frozen=True)
class ScheduleRetry:
    task: str
    attempt: int  # the attempt to run next
    delay: float  # seconds
    not_before: str  # delay added to the failure's time (RFC 3339)


@dataclass(frozen=True)
class Finish:
    phase: str  # Succeeded | Failed | TimedOut | Cancelled
    output: Any = None
    error: ErrorInfo | None = None


@dataclass(frozen=True)
class WakeAt:
    """Nothing to do now; decide again at ``at`` (epoch seconds) unless something happens first."""

    at: float


Action = Dispatch | FailTask | CompleteTask | ScheduleRetry | Finish | WakeAt


@dataclass(frozen=True)
class RunContext:
    """Facts of the run that are not in the status."""

    execution: str
    input: Any
    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None  # whole-run timeout in seconds (execution spec, else workflow spec)
    cancel: bool = False  # spec.cancel
    # (status key, attempt) of every attempt whose pod is known to exist or to have existed; None when
    # the caller does not track pods. A dispatched attempt missing from it is dispatched again (its pod
    # was never created: a crash or a failed create); a running one is lost (its pod vanished unseen).
    pods: frozenset[tuple[str, int]] | None = None


@dataclass(frozen=True)
class _Child:
    """One child of a parallel task or collection: its status key, its task, its template context."""

    key: str
    task: Task
    context: dict[str, Any]


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def next_attempt(st: TaskStatus | None) -> int:
    """The attempt a task not yet run in this round starts with: 1, or the one after its last (a
    retry round reset it), so every attempt of a run has its own pod name and event ids."""
    return 1 if st is None else st.attempt + 1 if st.phase == RESET else st.attempt


def in_round(st: TaskStatus) -> int:
    """The current attempt counted from the task's first attempt of this retry round (1-based)."""
    return st.attempt - (st.prior_attempts or 0)


def backoff_delay(task: Task, failed_attempt: int) -> float:
    """initial * factor^(n-1), capped at max (and at a year, whatever a spec that skipped validation
    says); 0 without a backoff."""
    b = task.retry.backoff if task.retry else None
    if b is None:
        return 0.0
    growth = b.factor ** min(failed_attempt - 1, 64)  # factor >= 1: 64 doublings pass any cap already
    return min(parse_duration(b.max), parse_duration(b.initial) * growth, MAX_DURATION_SECONDS)


def task_ids(wf: WorkflowSpec) -> list[str]:
    """The ids a template may name under ``tasks``: every task and parallel child, in declaration order."""
    ids = []
    for t in wf.tasks:
        ids.append(t.id)
        ids += [c.id for c in t.tasks or []]
    return ids


def template_context(wf: WorkflowSpec, status: WorkflowExecutionStatus, run: RunContext) -> dict[str, Any]:
    tasks = {}
    for tid, t in status.tasks.items():
        error = t.error or (t.attempts[-1].error if t.attempts else None)
        tasks[tid] = {"output": t.output, "status": t.phase, "error": error.dump() if error else None}
    return {"workflow": {"input": run.input, "id": run.execution}, "tasks": TaskFacts(tasks, task_ids(wf)),
            "env": {**(wf.env or {}), **run.env}}


def _tool(wf: WorkflowSpec, tool_id: str | None) -> Tool:
    for tool in wf.tools or []:
        if tool.id == tool_id:
            return tool
    raise LookupError(f"tool {tool_id!r} is not defined")  # validation prevents this


def _agent_call(wf: WorkflowSpec, task: Task, context: dict[str, Any]) -> AgentCall:
    """The agent and action of ``task`` with prompts rendered (``input`` is the rendered ``with``)."""
    agent = next(a for a in wf.agents or [] if a.id == task.agent)
    action = next(x for x in agent.actions if x.id == task.action)
    where = f"agents.{agent.id}"

    def text(template: str, field: str) -> str:
        value = render(template, context, field)
        return value if isinstance(value, str) else json.dumps(value, default=str)

    instructions = text(agent.instructions, f"{where}.instructions") if agent.instructions else None
    prompt = text(action.prompt, f"{where}.actions.{action.id}.prompt")
    return AgentCall(agent, action, instructions, prompt, tuple(_tool(wf, t) for t in agent.tools or []))


def _start(wf: WorkflowSpec, task: Task, key: str, attempt: int, context: dict[str, Any]) -> Action:
    try:
        rendered = render(task.with_ or {}, context, f"tasks.{key}.with")
        if task.agent:
            return Dispatch(key, attempt, rendered, agent=_agent_call(wf, task, {**context, "input": rendered}))
    except TemplateError as e:
        return FailTask(key, attempt, e.reason, str(e))
    return Dispatch(key, attempt, rendered, tool=_tool(wf, task.tool).pooled(wf.pool))


def _finish_success(wf: WorkflowSpec, status: WorkflowExecutionStatus, run: RunContext) -> Finish:
    if wf.output is None:
        return Finish("Succeeded", None)
    try:
        return Finish("Succeeded", render(wf.output, template_context(wf, status, run), "spec.output"))
    except TemplateError as e:
        return Finish("Failed", error=ErrorInfo(reason=e.reason, message=str(e)))


def _failure(label: str, key: str, st: TaskStatus) -> str:
    err = st.error or ErrorInfo()
    attempts = f" after {st.attempt} attempts" if st.attempt > 1 else ""
    return f"{label} {key} failed{attempts}: {err.message or err.reason}"


def _in_flight(wf: WorkflowSpec, task: Task, key: str, st: TaskStatus, context: dict[str, Any], run: RunContext,
               now: float) -> list[Action]:
    """A dispatched attempt: make sure its pod exists, wait for it, or fail it when its timeout has passed."""
    actions: list[Action] = []
    if run.pods is not None and (key, st.attempt) not in run.pods:
        if st.phase == "Running":
            return [FailTask(key, st.attempt, "PodLost", f"the pod of attempt {st.attempt} no longer exists and "
                             "the task reported no result")]
        actions.append(_start(wf, task, key, st.attempt, context))
    since = st.dispatched_at or st.started_at  # its start, if TaskDispatched was lost (a deleted stream)
    if not task.timeout or not since:
        return actions
    limit = parse_duration(task.timeout)
    deadline = epoch(since) + limit
    if now >= deadline:
        return [FailTask(key, st.attempt, "Timeout",
                         f"attempt {st.attempt} exceeded the task timeout of {task.timeout}", stop_pod=True)]
    return [*actions, WakeAt(deadline)]


def _failed(task: Task, key: str, st: TaskStatus) -> ScheduleRetry | None:
    """The retry to schedule after a failed attempt, if the policy allows one."""
    reason = st.error.reason if st.error else None
    limit = task.retry.limit if task.retry else 0
    if st.phase != "Failed" or reason in NON_RETRYABLE or in_round(st) > limit:
        return None
    # a service that said when to come back (429 Retry-After) is not asked again sooner
    delay = max(backoff_delay(task, in_round(st)), (st.error.retry_after or 0.0) if st.error else 0.0)
    failed_at = epoch(st.finished_at) if st.finished_at else 0.0
    return ScheduleRetry(key, st.attempt + 1, delay, rfc3339(failed_at + delay))


def _advance(wf: WorkflowSpec, task: Task, key: str, st: TaskStatus | None, context: dict[str, Any],
             run: RunContext, now: float) -> list[Action] | None:
    """What moves a pod-running task (basic, or a child) on; None once it has ended for good."""
    if st is None or st.phase == RESET:
        return [_start(wf, task, key, next_attempt(st), context)]
    if st.phase == "Waiting":
        if st.not_before and now < epoch(st.not_before):
            return [WakeAt(epoch(st.not_before))]
        return [_start(wf, task, key, st.attempt, context)]
    if st.phase in ("Pending", "Running"):
        return _in_flight(wf, task, key, st, context, run, now)
    retry = _failed(task, key, st)
    return [retry] if retry else None


def _run_timeout(status: WorkflowExecutionStatus, run: RunContext, now: float) -> list[Action]:
    since = status.retried_at or status.started_at  # a retry round has a deadline of its own
    if run.timeout is None or not since:
        return []
    deadline = epoch(since) + run.timeout
    if now >= deadline:
        return [Finish("TimedOut", error=ErrorInfo(reason="Timeout",
                                                   message=f"the workflow exceeded its timeout of {run.timeout:g}s"))]
    return [WakeAt(deadline)]


def _route(task: Task, attempt: int, context: dict[str, Any]) -> Action:
    try:
        value = render(task.condition or "", context, f"tasks.{task.id}.condition")
    except TemplateError as e:
        return FailTask(task.id, attempt, e.reason, str(e))
    route = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    target = (task.routes or {}).get(route, task.default)
    if target is None:
        known = ", ".join(sorted(task.routes or {}))
        return FailTask(task.id, attempt, "NoRoute",
                        f"router {task.id}: condition gave {route!r}; known routes: {known}")
    return CompleteTask(task.id, {"route": route, "next": target}, attempt)


def _child_state(child: _Child, st: TaskStatus | None) -> str:
    """new | running | retrying (failed, a retry to schedule) | succeeded | failed (for good)."""
    if st is None or st.phase == RESET:
        return "new"
    if st.phase in IN_FLIGHT:
        return "running"
    if st.phase == "Succeeded":
        return "succeeded"
    return "retrying" if _failed(child.task, child.key, st) else "failed"


def _cancel(child: _Child, st: TaskStatus, why: str) -> FailTask:
    """Cancel a child in flight; a dispatched attempt's pod is stopped (a Waiting one has none)."""
    return FailTask(child.key, st.attempt, "Cancelled", f"cancelled: {why}", stop_pod=st.phase != "Waiting")


def _run_children(wf: WorkflowSpec, parent: Task, children: list[_Child], strategy: str, limit: int | None,
                  status: WorkflowExecutionStatus, run: RunContext, now: float) -> list[Action]:
    """Advance the children of a parallel task or collection; end the parent once none is in flight."""
    sts = {c.key: status.tasks.get(c.key) for c in children}
    of: dict[str, list[_Child]] = {s: [] for s in ("new", "running", "retrying", "succeeded", "failed")}
    for c in children:
        of[_child_state(c, sts[c.key])].append(c)
    why = None
    if strategy == "failFast" and of["failed"]:
        why = f"{of['failed'][0].key} failed and {parent.id} is failFast"
    elif strategy == "race" and of["succeeded"]:
        why = f"{of['succeeded'][0].key} won the race of {parent.id}"
    if why is not None:  # a child with a retry still to schedule counts as failed: the retry never comes
        cancels: list[Action] = [_cancel(c, st, why) for c in of["running"] if (st := sts[c.key])]
        return cancels or [_end(parent, strategy, children, sts, status)]
    actions: list[Action] = []
    for c in of["running"] + of["retrying"]:
        actions += _advance(wf, c.task, c.key, sts[c.key], c.context, run, now) or []
    busy = len(of["running"]) + len(of["retrying"])
    stop = strategy == "waitAll" and bool(of["failed"])  # no new child once the outcome is failure
    if not stop:
        slots = len(of["new"]) if limit is None else max(0, limit - busy)
        actions += [_start(wf, c.task, c.key, next_attempt(sts[c.key]), c.context) for c in of["new"][:slots]]
    if not busy and (stop or not of["new"]):
        return [_end(parent, strategy, children, sts, status)]
    return actions


def _end(parent: Task, strategy: str, children: list[_Child], sts: dict[str, TaskStatus | None],
         status: WorkflowExecutionStatus) -> Action:
    """The outcome of a parent whose children have all ended (or will never start)."""
    attempt = next_attempt(status.tasks.get(parent.id))
    ended = [(c.key, st) for c in children if (st := sts[c.key]) is not None and st.phase != RESET]
    wins = [(key, st) for key, st in ended if st.phase == "Succeeded"]
    losses = [(key, st) for key, st in ended if st.phase != "Succeeded"]
    if strategy == "bestEffort":
        return CompleteTask(parent.id, {key: {"output": st.output} if st.phase == "Succeeded"
                                        else {"error": (st.error or ErrorInfo()).dump()} for key, st in ended},
                            attempt)
    if strategy == "race" and wins:
        key, st = min(wins, key=lambda w: epoch(w[1].finished_at) if w[1].finished_at else float("inf"))
        return CompleteTask(parent.id, {"winner": key, "output": st.output}, attempt)
    if losses:
        causes = [(key, st) for key, st in losses if st.phase != "Cancelled"] or losses
        return FailTask(parent.id, attempt, "ChildFailed",
                        "; ".join(_failure("child", key, st) for key, st in causes))
    if parent.type == "collection":
        return CompleteTask(parent.id, [st.output for _, st in ended], attempt)
    return CompleteTask(parent.id, {key: st.output for key, st in ended}, attempt)


def _truthy(value: Any) -> bool:
    """A filter's verdict: JSON-falsy values, and strings like ``false``/``0``/``no``, skip the item."""
    if isinstance(value, str):
        return value.strip().lower() not in ("", "false", "0", "no", "none", "null")
    return bool(value)


def _json_type(value: Any) -> str:
    for kind, name in ((bool, "boolean"), ((int, float), "number"), (str, "string"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def _collection(wf: WorkflowSpec, task: Task, status: WorkflowExecutionStatus, context: dict[str, Any],
                run: RunContext, now: float) -> list[Action]:
    attempt = next_attempt(status.tasks.get(task.id))
    try:
        items = render(task.items, context, f"tasks.{task.id}.items")
    except TemplateError as e:
        return [FailTask(task.id, attempt, e.reason, str(e))]
    if not isinstance(items, list):
        return [FailTask(task.id, attempt, "InvalidItems",
                         f"tasks.{task.id}.items: expected a list, got {_json_type(items)}")]
    if len(items) > LIMITS.collection_items:
        return [FailTask(task.id, attempt, "TemplateLimit",
                         f"tasks.{task.id}.items: {len(items)} items, the limit is {LIMITS.collection_items}")]
    assert task.task is not None  # validation requires it
    children = []
    for index, item in enumerate(items):
        key = f"{task.id}[{index}]"
        scope = {**context, "item": item, "index": index}
        child = status.tasks.get(key)
        if task.filter is not None and (child is None or child.phase == RESET):  # one with a status passed it
            try:
                if not _truthy(render(task.filter, scope, f"tasks.{key}.filter")):
                    continue
            except TemplateError as e:
                return [FailTask(task.id, attempt, e.reason, str(e))]
        children.append(_Child(key, task.task, scope))
    limit = 1 if task.mode == "sequential" else task.max_workers
    return _run_children(wf, task, children, "waitAll", limit, status, run, now)


def _step(wf: WorkflowSpec, task: Task, status: WorkflowExecutionStatus, context: dict[str, Any], run: RunContext,
          now: float) -> list[Action] | None:
    """The actions that move a top-level task on; None once its status shows it ended for good."""
    st = status.tasks.get(task.id)
    if task.type == "basic":
        return _advance(wf, task, task.id, st, context, run, now)
    if st is not None and st.phase in TASK_TERMINAL and st.phase != RESET:
        return None
    if task.type == "router":
        return [_route(task, next_attempt(st), context)]
    if task.type == "parallel":
        children = [_Child(c.id, c, context) for c in task.tasks or []]
        return _run_children(wf, task, children, task.strategy or "waitAll", task.max_workers, status, run, now)
    return _collection(wf, task, status, context, run, now)


def decide(wf: WorkflowSpec, status: WorkflowExecutionStatus, run: RunContext, now: float) -> list[Action]:
    """The next actions of a Running execution (empty after the end). While the run goes on, the
    actions include a :class:`WakeAt` for the run's deadline, if it has one."""
    if status.phase != "Running":
        return []
    if run.cancel:
        return [Finish("Cancelled", error=ErrorInfo(reason="Cancelled", message="cancelled by spec.cancel"))]
    timeout = _run_timeout(status, run, now)
    if timeout and isinstance(timeout[0], Finish):
        return timeout
    context = template_context(wf, status, run)
    by_id = {t.id: t for t in wf.tasks}
    task = wf.tasks[0]
    visited: set[str] = set()
    while True:
        if task.id in visited:
            return [Finish("Failed", error=ErrorInfo(task=task.id, reason="Cycle",
                                                     message=f"task {task.id} would run a second time"))]
        visited.add(task.id)
        actions = _step(wf, task, status, context, run, now)
        if actions is not None:
            return [*actions, *timeout]
        st = status.tasks[task.id]
        if st.phase == "Succeeded":
            if task.type == "router":
                nxt = st.output.get("next") if isinstance(st.output, dict) else None
            elif task.final or not (task.on_success and task.on_success.next):
                return [_finish_success(wf, status, run)]
            else:
                nxt = task.on_success.next
        else:
            nxt = task.on_error.next if task.on_error else None
            if not nxt:
                err = st.error or ErrorInfo()
                return [Finish("Failed", error=ErrorInfo(task=task.id, reason=err.reason,
                                                         message=_failure("task", task.id, st)))]
        if nxt not in by_id:
            return [Finish("Failed", error=ErrorInfo(task=task.id, reason="InvalidTransition",
                                                     message=f"task {task.id}: no task with id {nxt!r} to go to"))]
        task = by_id[nxt]


RETRYABLE_PHASES = ("Failed", "TimedOut", "Cancelled")  # what spec.retry may continue (not Succeeded)


def retry_due(status: WorkflowExecutionStatus, wanted: int) -> bool:
    """Should retry round ``wanted`` (spec.retry) begin? Only once the run has ended without success:
    a raise while the run still goes on (refused at apply by the CRD's rule, unless that was
    bypassed) waits for its end; a Succeeded run is never retried."""
    return status.phase in RETRYABLE_PHASES and wanted > (status.retries or 0)


def retry_plan(wf: WorkflowSpec, status: WorkflowExecutionStatus) -> dict[str, int]:
    """The status keys a retry round resets, with the attempt each is reset from: everything but
    what the run can keep.

    Kept: the tasks that succeeded along the path the ended run took, from ``tasks[0]`` up to the
    first task on it that did not succeed (the walk of :func:`decide`), with their children; and of
    that first task, if it is a parallel task or collection, the children that succeeded. Every
    other entry (the failed, cancelled or timed-out tasks and children, and whatever ran after them,
    e.g. an ``onError`` handler) is reset and runs again, with its next attempt, when the new
    round's walk reaches it. (The attempts make the reset safe in any fold order: an entry that
    has moved on to a later attempt by the time the reset is folded is not reset again.)"""
    by_id = {t.id: t for t in wf.tasks}
    kept: set[str] = set()
    task: Task | None = wf.tasks[0]
    while task is not None and task.id not in kept:
        st = status.tasks.get(task.id)
        children = [k for k in status.tasks if _child_of(task, k)]
        if st is None or st.phase != "Succeeded":
            kept.update(k for k in children if status.tasks[k].phase == "Succeeded")
            break
        kept.update([task.id, *children])
        if task.type == "router":
            nxt = st.output.get("next") if isinstance(st.output, dict) else None
        else:
            nxt = None if task.final or not task.on_success else task.on_success.next
        task = by_id.get(nxt) if isinstance(nxt, str) else None
    return {key: st.attempt for key, st in status.tasks.items() if key not in kept}


def _child_of(task: Task, key: str) -> bool:
    if task.type == "parallel":
        return any(c.id == key for c in task.tasks or [])
    return task.type == "collection" and key.startswith(f"{task.id}[")
