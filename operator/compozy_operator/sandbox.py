"""The evaluation pool: untrusted expressions run in worker processes, bounded, off the event loop.

Templates, the input schema's regexes and collection expansion are written by workflow authors.
The orchestrator does not evaluate them itself: it sends workflow.Executor's ``decide`` and the
start checks (``check_workflow``, ``check_input``) to a small pool of worker processes
(``python -m compozy_operator.sandbox_worker``) and awaits the answer, so one slow evaluation
stalls neither the event loop nor other runs (a free worker is picked; the pool grows to
``eval_workers`` when all are busy).

Bounds, from the inside out:

* the template layer refuses explosive operations and values larger than ``max_rendered_bytes``
  and collections of more than ``max_collection_items`` (:mod:`compozy_operator.templates`);
* in a worker, each template and the input check run under a CPU timer (``eval_timeout``) whose
  signal interrupts Jinja code and ``re`` matching alike; the task fails with reason
  ``TemplateLimit`` and a message naming the field (``tasks.fetch.with.url: the template took
  longer than 1s``); a start check fails the run (``EvaluationLimit``, naming the input field);
* each worker's address space is limited to its size at start plus ``eval_memory_mb``: a
  ``MemoryError`` is reported like a timeout; the worker's OOM score is raised, so under the
  pod's memory limit the kernel picks a worker, never the operator;
* a whole evaluation has ``eval_run_timeout`` of wall time (a timer in the worker answers with
  a limit error), and a few seconds more before the pool kills the worker and starts another.
  A worker that dies or is killed gets the run :class:`EvaluationLimit` (the orchestrator ends
  it ``Failed``), after one more try on a fresh worker (the death may not have been the run's).

Trust: a worker runs attacker-influenced code (inside Jinja's sandbox). Its answers are JSON,
checked field by field; tools and agents are looked up by id in the operator's own copy of the
spec, never taken from the answer, so even an escaped sandbox can neither hand the operator
objects (as unpickling would) nor dispatch anything the workflow does not define. Requests go the
other way (operator -> worker) as pickles. Workers start with a scrubbed environment (no
KUBECONFIG, no NATS credentials) and die with the operator.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import math
import os
import pickle
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

from .resources.models import ErrorInfo, WorkflowExecutionStatus, WorkflowSpec
from .executor import (
    Action, AgentCall, CompleteTask, Dispatch, FailTask, Finish, RunContext, ScheduleRetry, WakeAt, decide,
)
from .settings import Settings
from .templates import configure

log = logging.getLogger(__name__)
HEADER = struct.Struct(">I")
MAX_ANSWER = 32 << 20  # bytes of one worker answer
KILL_GRACE = 5.0  # seconds past eval_run_timeout before a worker that has not answered is killed
START_TIMEOUT = 60.0  # seconds a new worker may take to import and say it is ready
ENV_KEPT = ("PATH", "PYTHONPATH", "LANG", "TZ", "PYTHONHASHSEED")
NICE = 10  # a hostile template's CPU goes after the operator's and the task pods' (its limit counts CPU time)
# the worker's first lines: lower its priority before it imports anything, then run the module
BOOT = ("import os, runpy\ntry:\n    os.nice(%d)\nexcept OSError:\n    pass\n"
        "runpy.run_module('compozy_operator.sandbox_worker', run_name='__main__', alter_sys=True)\n" % NICE)


class EvaluationError(RuntimeError):
    """An evaluation that can never succeed by retrying (the orchestrator ends the run with it)."""

    reason = "InternalError"


class EvaluationLimit(EvaluationError):
    """A whole evaluation went past a bound (time, memory) or killed its worker."""

    reason = "EvaluationLimit"


class _WorkerDied(Exception):
    pass


# ---- the answer codec (the worker encodes, the operator decodes and checks) -------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        return list(value)
    return str(value)


def dumps(value: Any) -> bytes:
    return json.dumps(value, default=_json_default, separators=(",", ":")).encode()


def encode_action(a: Action) -> dict[str, Any]:
    if isinstance(a, Dispatch):
        agent = None
        if a.agent is not None:
            agent = {"agent": a.agent.agent.id, "action": a.agent.action.id, "instructions": a.agent.instructions,
                     "prompt": a.agent.prompt, "tools": [t.id for t in a.agent.tools]}
        return {"type": "Dispatch", "task": a.task, "attempt": a.attempt, "input": a.input,
                "tool": a.tool.id if a.tool else None, "agent": agent}
    if isinstance(a, FailTask):
        return {"type": "FailTask", "task": a.task, "attempt": a.attempt, "reason": a.reason, "message": a.message,
                "stop_pod": a.stop_pod}
    if isinstance(a, CompleteTask):
        return {"type": "CompleteTask", "task": a.task, "output": a.output, "attempt": a.attempt}
    if isinstance(a, ScheduleRetry):
        return {"type": "ScheduleRetry", "task": a.task, "attempt": a.attempt, "delay": a.delay,
                "not_before": a.not_before}
    if isinstance(a, Finish):
        return {"type": "Finish", "phase": a.phase, "output": a.output, "error": a.error.dump() if a.error else None}
    assert isinstance(a, WakeAt)
    return {"type": "WakeAt", "at": a.at}


class _Bad(Exception):
    pass


def _get(d: Any, key: str, kind: type | tuple[type, ...], optional: bool = False) -> Any:
    if not isinstance(d, dict):
        raise _Bad("an action is not an object")
    value = d.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, float, (int, float))):
        raise _Bad(f"field {key!r} is not a {getattr(kind, '__name__', kind)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise _Bad(f"field {key!r} is not finite")
    return value


def _tool(wf: WorkflowSpec, tool_id: str) -> Any:
    for t in wf.tools or []:
        if t.id == tool_id:
            return t
    raise _Bad(f"no tool {tool_id!r} in the workflow")


def _decode_dispatch(d: dict[str, Any], wf: WorkflowSpec) -> Dispatch:
    task, attempt = _get(d, "task", str), _get(d, "attempt", int)
    value = _get(d, "input", dict)
    if (a := _get(d, "agent", dict, optional=True)) is not None:
        agent = next((x for x in wf.agents or [] if x.id == _get(a, "agent", str)), None)
        action = next((x for x in agent.actions if x.id == _get(a, "action", str)), None) if agent else None
        if agent is None or action is None:
            raise _Bad("an agent or action the workflow does not define")
        tools = tuple(_tool(wf, t) for t in _get(a, "tools", list) if isinstance(t, str))
        if [t.id for t in tools] != list(agent.tools or []):
            raise _Bad("agent tools differ from the workflow's")
        call = AgentCall(agent, action, _get(a, "instructions", str, optional=True), _get(a, "prompt", str), tools)
        return Dispatch(task, attempt, value, agent=call)
    return Dispatch(task, attempt, value, tool=_tool(wf, _get(d, "tool", str)).pooled(wf.pool))


def decode_action(d: Any, wf: WorkflowSpec) -> Action:
    kind = _get(d, "type", str)
    if kind == "Dispatch":
        return _decode_dispatch(d, wf)
    if kind == "FailTask":
        return FailTask(_get(d, "task", str), _get(d, "attempt", int), _get(d, "reason", str),
                        _get(d, "message", str), bool(_get(d, "stop_pod", bool)))
    if kind == "CompleteTask":
        return CompleteTask(_get(d, "task", str), d.get("output"), _get(d, "attempt", int))
    if kind == "ScheduleRetry":
        return ScheduleRetry(_get(d, "task", str), _get(d, "attempt", int), float(_get(d, "delay", (int, float))),
                             _get(d, "not_before", str))
    if kind == "Finish":
        phase = _get(d, "phase", str)
        if phase not in ("Succeeded", "Failed", "TimedOut", "Cancelled"):
            raise _Bad(f"unknown phase {phase!r}")
        error = _get(d, "error", dict, optional=True)
        return Finish(phase, d.get("output"), ErrorInfo.model_validate(error) if error is not None else None)
    if kind == "WakeAt":
        return WakeAt(float(_get(d, "at", (int, float))))
    raise _Bad(f"unknown action {kind!r}")


def decode_actions(answer: Any, wf: WorkflowSpec) -> list[Action]:
    try:
        if not isinstance(answer, list):
            raise _Bad("not a list of actions")
        return [decode_action(d, wf) for d in answer]
    except (_Bad, ValueError, TypeError) as e:  # pydantic's ValidationError is a ValueError
        raise EvaluationError(f"the evaluation process gave a malformed answer: {e}") from None


# ---- the pool ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Worker:
    proc: asyncio.subprocess.Process
    specs: set[str] = field(default_factory=set)  # spec keys this worker has been sent
    busy: bool = False

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None


def worker_env() -> dict[str, str]:
    """The environment of a worker: enough to run Python, no credentials of any kind."""
    return {k: v for k, v in os.environ.items() if k in ENV_KEPT or k.startswith("LC_")}


class EvalPool:
    def __init__(self, settings: Settings) -> None:
        self.size = settings.eval_workers
        self.run_timeout = settings.eval_run_timeout
        self.limits = {"timeout": settings.eval_timeout, "run_timeout": settings.eval_run_timeout,
                       "memory_mb": settings.eval_memory_mb, "rendered_bytes": settings.max_rendered_bytes,
                       "collection_items": settings.max_collection_items}
        configure(settings.max_rendered_bytes, settings.max_collection_items)  # the in-process path too
        self.workers: list[_Worker] = []
        self.starting = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.started = 0  # workers started in all (metrics, tests)

    # ---- public ------------------------------------------------------------------------

    async def decide(self, key: str, wf: WorkflowSpec, status: WorkflowExecutionStatus, run: RunContext,
                     now: float) -> list[Action]:
        """workflow.Executor's decide, evaluated in a worker; ``key`` names the spec (the run's uid),
        which a worker keeps so that it travels once."""
        if self.size <= 0:
            return decide(wf, status, run, now)
        return decode_actions(await self._call("decide", key, wf, (status, run, now)), wf)

    async def validate(self, wf: WorkflowSpec, prefix: str, value: Any = None,
                       with_input: bool = True) -> tuple[list[str], str]:
        """The start checks: problems of the workflow (reason ``InvalidWorkflow``), else of the input
        ``value`` against its schema (``InvalidInput``; skipped without ``with_input``, e.g. for a
        Workflow at apply); a check past its limit gives ``EvaluationLimit``."""
        if self.size <= 0:
            from .sandbox_worker import validate  # noqa: PLC0415 - the same checks, unbounded
            answer = validate(wf, prefix, value, with_input)
        else:
            answer = await self._call("validate", None, None, (wf, prefix, value, with_input))
        problems = answer.get("problems") if isinstance(answer, dict) else None
        reason = answer.get("reason") if isinstance(answer, dict) else None
        if not isinstance(problems, list) or not all(isinstance(p, str) for p in problems) or not isinstance(reason, str):
            raise EvaluationError("the evaluation process gave a malformed answer to the start checks")
        return problems, reason

    def start(self) -> None:
        """Start one worker ahead of the first evaluation (call from the running loop)."""
        if self.size > 0 and not self.workers and not self.starting:
            asyncio.ensure_future(self._warm())

    async def close(self) -> None:
        for w in self.workers:
            await self._kill(w)
        self.workers.clear()

    # ---- workers -----------------------------------------------------------------------

    async def _warm(self) -> None:
        try:
            self.starting += 1
            try:
                w = await self._spawn()
            finally:
                self.starting -= 1
                self._wake()
            self.workers.append(w)
            self._wake()
        except Exception as e:  # noqa: BLE001 - the first evaluation will try again and say why
            log.warning("starting an evaluation worker failed: %s", e)

    async def _spawn(self) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", BOOT, json.dumps(self.limits), str(os.getpid()),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=worker_env(), cwd="/",
            limit=1 << 16)
        w = _Worker(proc)
        self.started += 1
        try:
            ready = await asyncio.wait_for(self._read(w), START_TIMEOUT)
        except (asyncio.TimeoutError, _WorkerDied) as e:
            await self._kill(w)
            raise OSError(f"the evaluation worker did not start ({type(e).__name__}: {e})") from None
        if ready != {"ready": True}:
            await self._kill(w)
            raise OSError(f"the evaluation worker did not start: {str(ready)[:200]}")
        return w

    async def _acquire(self, key: str | None = None) -> _Worker:
        """A free worker, the one that knows the run's spec first (it also remembers the run's
        templates that ran out of time); a new one while fewer than ``eval_workers`` run; else wait."""
        while True:
            self.workers = [w for w in self.workers if w.alive]
            free = [w for w in self.workers if not w.busy]
            if free:
                w = next((x for x in free if key in x.specs), free[0])
                w.busy = True
                return w
            if len(self.workers) + self.starting < self.size:
                self.starting += 1
                try:
                    w = await self._spawn()  # OSError: transient, the reconcile is retried
                finally:
                    self.starting -= 1
                    self._wake()  # a waiter may start one in its place if this one failed
                w.busy = True
                self.workers.append(w)
                return w
            waiter = asyncio.get_running_loop().create_future()
            self.waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, then cancelled: the free worker goes to the next waiter
                raise
            finally:
                if waiter in self.waiters:
                    self.waiters.remove(waiter)

    def _release(self, w: _Worker) -> None:
        w.busy = False
        if not w.alive and w in self.workers:
            self.workers.remove(w)
        self._wake()

    def _wake(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _kill(self, w: _Worker) -> None:
        if w.alive:
            try:
                w.proc.kill()
            except ProcessLookupError:
                pass
        try:
            await asyncio.wait_for(w.proc.wait(), 10)
        except asyncio.TimeoutError:
            log.warning("evaluation worker %s did not exit after SIGKILL", w.proc.pid)

    # ---- one request -------------------------------------------------------------------

    async def _call(self, op: str, key: str | None, wf: WorkflowSpec | None, args: tuple[Any, ...]) -> Any:
        for attempt in (1, 2):
            w = await self._acquire(key)
            try:
                return await self._ask(w, op, key, wf, args)
            except _WorkerDied as e:
                log.warning("evaluation worker %s died (%s)%s", w.proc.pid, e, "; trying another" if attempt == 1 else "")
                await self._kill(w)
                if attempt == 2:
                    raise EvaluationLimit(f"the evaluation of the run killed its worker process twice ({e}); "
                                          "does a template or the input schema need too much memory?") from None
            finally:
                self._release(w)
        raise AssertionError("unreachable")

    async def _ask(self, w: _Worker, op: str, key: str | None, wf: WorkflowSpec | None, args: tuple[Any, ...]) -> Any:
        spec = wf if key is not None and key not in w.specs else None
        try:
            answer = await self._exchange(w, (op, key, spec, args))
            if isinstance(answer, dict) and answer.get("need_spec"):
                answer = await self._exchange(w, (op, key, wf, args))
        except asyncio.TimeoutError:
            await self._kill(w)
            raise EvaluationLimit(f"evaluating the run took longer than {self.run_timeout + KILL_GRACE:g}s; its "
                                  "evaluation process was stopped") from None
        except asyncio.CancelledError:
            await asyncio.shield(self._kill(w))  # its answer would be read by the next request
            raise
        if key is not None:
            if len(w.specs) > 4096:
                w.specs.clear()
            w.specs.add(key)
        if not isinstance(answer, dict):
            raise EvaluationError("the evaluation process gave a malformed answer")
        if answer.get("retire"):  # it ran out of memory: it exits after this answer, a fresh one replaces it
            await self._kill(w)
        if "error" in answer:
            error = answer["error"] if isinstance(answer["error"], dict) else {}
            message = str(error.get("message") or "evaluation failed")[:4000]
            raise (EvaluationLimit if error.get("kind") == "limit" else EvaluationError)(message)
        return answer.get("ok")

    async def _exchange(self, w: _Worker, request: tuple[Any, ...]) -> Any:
        body = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        assert w.proc.stdin is not None
        try:
            w.proc.stdin.write(HEADER.pack(len(body)) + body)
            await w.proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as e:
            raise _WorkerDied(f"{type(e).__name__}") from None
        return await asyncio.wait_for(self._read(w), self.run_timeout + KILL_GRACE)

    async def _read(self, w: _Worker) -> Any:
        assert w.proc.stdout is not None
        try:
            (size,) = HEADER.unpack(await w.proc.stdout.readexactly(HEADER.size))
            if size > MAX_ANSWER:
                await self._kill(w)
                raise EvaluationLimit(f"the evaluation of the run gave an answer of {size} bytes; at most "
                                      f"{MAX_ANSWER} are allowed")
            body = await w.proc.stdout.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            code = await w.proc.wait()
            raise _WorkerDied(f"signal {-code}" if code < 0 else f"exit code {code}") from None
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise EvaluationError("the evaluation process gave an answer that is not JSON") from None
