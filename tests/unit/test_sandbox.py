"""The evaluation pool: real worker processes, bounded in time, memory and output, answering in JSON."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from compozy_operator import sandbox
from compozy_operator.resources.models import TaskStatus, WorkflowExecutionStatus, WorkflowSpec
from compozy_operator.executor import CompleteTask, Dispatch, FailTask, RunContext, decide
from compozy_operator.sandbox import EvalPool, EvaluationError, EvaluationLimit, decode_actions
from compozy_operator.settings import Settings

NOW = 1_800_000_000.0
RUN = RunContext(execution="run-1", input={"text": "a b", "urls": ["u1", "u2", "u3"], "name": "a" * 29 + "!"})
TOOLS = [{"id": "t", "python": "def run(i, c): return i"}]
NESTED = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"


def wf(*tasks: dict[str, Any], **spec: Any) -> WorkflowSpec:
    return WorkflowSpec.model_validate({"tools": TOOLS, "tasks": list(tasks), **spec})


def running(**tasks: TaskStatus) -> WorkflowExecutionStatus:
    return WorkflowExecutionStatus(phase="Running", started_at="2027-01-15T08:00:00Z", tasks=tasks)


def settings(**kw: Any) -> Settings:
    values = {"eval_workers": 2, "eval_timeout": 0.5, "eval_run_timeout": 5.0, "eval_memory_mb": 256}
    return dataclasses.replace(Settings(), **{**values, **kw})


def with_pool(fn: Callable[[EvalPool], Awaitable[Any]], **kw: Any) -> Any:
    async def main() -> Any:
        pool = EvalPool(settings(**kw))
        try:
            return await fn(pool)
        finally:
            await pool.close()
    return asyncio.run(main())


AGENT_WF = wf(
    {"id": "a", "tool": "t", "with": {"text": "{{ workflow.input.text }}", "n": 3}, "onSuccess": {"next": "each"}},
    {"id": "each", "type": "collection", "items": "{{ workflow.input.urls }}", "maxWorkers": 2,
     "task": {"id": "fetch", "agent": "w", "action": "s", "with": {"url": "{{ item }}"}}},
    agents=[{"id": "w", "model": {"provider": "openai", "name": "m", "apiKeySecretRef": {"name": "s", "key": "k"}},
             "instructions": "Be {{ input.url }}", "tools": ["t"],
             "actions": [{"id": "s", "prompt": "Fetch {{ input.url }}"}]}],
)


def test_the_pool_decides_like_the_executor() -> None:
    statuses = [running(), running(a=TaskStatus(phase="Succeeded", output={"n": 1})),
                running(a=TaskStatus(phase="Succeeded"), **{"each[0]": TaskStatus(phase="Succeeded", output=1),
                                                            "each[1]": TaskStatus(phase="Running", attempt=1)})]

    async def go(pool: EvalPool) -> list[Any]:
        return [await pool.decide("uid-1", AGENT_WF, s, RUN, NOW) for s in statuses]

    got = with_pool(go)
    assert got == [decide(AGENT_WF, s, RUN, NOW) for s in statuses]
    dispatch = got[1][0]
    assert isinstance(dispatch, Dispatch) and dispatch.agent is not None and dispatch.agent.prompt == "Fetch u1"
    assert dispatch.agent.tools[0] is AGENT_WF.tools[0]  # the operator's own objects, looked up by id


def test_a_slow_template_fails_its_task_naming_the_field_while_others_are_served() -> None:
    slow = wf({"id": "fetch", "tool": "t", "with": {"url": NESTED}})
    canary = wf({"id": "c", "tool": "t", "with": {"x": "{{ workflow.input.text }}"}})

    async def go(pool: EvalPool) -> tuple[list[Any], float, float]:
        start = time.monotonic()
        hostile = asyncio.ensure_future(pool.decide("slow", slow, running(), RUN, NOW))
        await asyncio.sleep(0.05)
        await pool.decide("canary", canary, running(), RUN, NOW)
        canary_done = time.monotonic() - start
        actions = await hostile
        return actions, canary_done, time.monotonic() - start

    (action,), canary_done, hostile_done = with_pool(go)
    assert isinstance(action, FailTask) and action.reason == "TemplateLimit"
    assert action.message.startswith("tasks.fetch.with.url: the template took longer than 0.5s")
    assert canary_done < hostile_done  # served beside it, not after it


@pytest.mark.parametrize("template, message", [
    ("{{ 'x' * 10**9 }}", "repeating a str of 1 1000000000 times would be larger than the limit"),
    ("{{ 2 ** 1000000000 }}", "2 ** 1000000000 would be larger than the limit"),
    ("{{ 'x'.ljust(10**9) }}", "a width of 1000000000"),
    ("{% set ns = namespace(s='x' * 1000000) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
     "{{ ns.s | length }}", "needs more memory than allowed"),
    ("{{ range(100000) | join('-' * 20) }}", "the rendered value would be larger than the limit"),
])
def test_explosive_templates_fail_their_task(template: str, message: str) -> None:
    w = wf({"id": "bomb", "tool": "t", "with": {"x": template}})
    (action,) = with_pool(lambda pool: pool.decide("bomb", w, running(), RUN, NOW), eval_memory_mb=200)
    assert isinstance(action, FailTask) and action.reason == "TemplateLimit", action
    assert action.message.startswith("tasks.bomb.with.x: ") and message in action.message


def test_a_collection_past_the_item_limit_fails() -> None:
    w = wf({"id": "each", "type": "collection", "items": "{{ range(100000) | list }}",
            "task": {"id": "f", "tool": "t", "with": {"i": "{{ item }}"}}})
    (action,) = with_pool(lambda pool: pool.decide("big", w, running(), RUN, NOW))
    assert action == FailTask("each", 1, "TemplateLimit", "tasks.each.items: 100000 items, the limit is 10000")


def test_a_backtracking_input_pattern_fails_the_start_naming_the_field() -> None:
    w = wf({"id": "t", "tool": "t"}, input={"type": "object", "properties": {
        "name": {"type": "string", "pattern": "^(a+)+$"}, "text": {"type": "string"}}})

    async def go(pool: EvalPool) -> Any:
        return await pool.validate(w, "workflow.spec", RUN.input), await pool.validate(w, "workflow.spec", {"text": "x"})

    (problems, reason), ok = with_pool(go)
    assert reason == "EvaluationLimit"
    assert problems == ["spec.input.name: matching the input schema's pattern '^(a+)+$' took longer than 0.5s"]
    assert ok == ([], "InvalidInput")


def test_the_start_checks_report_the_workflow_and_input_problems() -> None:
    bad = wf({"id": "t", "tool": "nope"})
    typed = wf({"id": "t", "tool": "t"}, input={"type": "object", "properties": {"n": {"type": "integer"}}})

    async def go(pool: EvalPool) -> Any:
        return (await pool.validate(bad, "spec.workflow", {}), await pool.validate(typed, "workflow.spec", {"n": "x"}),
                await pool.validate(typed, "spec", with_input=False))

    (wf_problems, wf_reason), (in_problems, in_reason), alone = with_pool(go)
    assert alone == ([], "InvalidWorkflow")  # a Workflow alone (apply): no input to check
    assert wf_reason == "InvalidWorkflow" and "tool 'nope' is not defined" in wf_problems[0]
    assert (in_problems, in_reason) == (["spec.input.n: 'x' is not of type 'integer'"], "InvalidInput")


def test_a_stuck_worker_is_killed_and_the_run_gets_a_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "KILL_GRACE", 0.5)
    w = wf({"id": "c", "tool": "t"})

    async def go(pool: EvalPool) -> Any:
        await pool.decide("k", w, running(), RUN, NOW)  # a worker is up
        (worker,) = pool.workers
        os.kill(worker.proc.pid, signal.SIGSTOP)  # it can no longer answer, nor react to its own timer
        with pytest.raises(EvaluationLimit) as err:
            await pool.decide("k", w, running(), RUN, NOW)
        assert worker.proc.returncode is not None and worker not in pool.workers
        return str(err.value), await pool.decide("k", w, running(), RUN, NOW)  # a new worker serves

    message, actions = with_pool(go, eval_run_timeout=1.0)
    assert message == "evaluating the run took longer than 1.5s; its evaluation process was stopped"
    assert isinstance(actions[0], Dispatch)


def test_a_worker_that_died_is_replaced() -> None:
    w = wf({"id": "c", "tool": "t"})

    async def go(pool: EvalPool) -> Any:
        await pool.decide("k", w, running(), RUN, NOW)
        (worker,) = pool.workers
        worker.proc.kill()
        await worker.proc.wait()
        return await pool.decide("k", w, running(), RUN, NOW), pool.started

    actions, started = with_pool(go)
    assert isinstance(actions[0], Dispatch) and started == 2


def test_workers_get_no_credentials_and_a_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", "/secret/kubeconfig")
    monkeypatch.setenv("COMPOZY_NATS_TOKEN", "s3cret")

    async def go(pool: EvalPool) -> tuple[bytes, str, int]:
        await pool.decide("k", wf({"id": "c", "tool": "t"}), running(), RUN, NOW)
        pid = pool.workers[0].proc.pid
        nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
        return Path(f"/proc/{pid}/environ").read_bytes(), Path(f"/proc/{pid}/limits").read_text(), nice

    environ, limits, nice = with_pool(go)
    assert nice == min(19, os.nice(0) + sandbox.NICE)  # hostile CPU yields to the operator and the task pods
    assert b"KUBECONFIG" not in environ and b"s3cret" not in environ and b"NATS" not in environ
    line = next(x for x in limits.splitlines() if x.startswith("Max address space"))
    assert line.split()[3] != "unlimited"


@pytest.mark.parametrize("answer, problem", [
    ([{"type": "Dispatch", "task": "c", "attempt": 1, "input": {}, "tool": "rm-rf"}], "no tool 'rm-rf'"),
    ([{"type": "Dispatch", "task": "c", "attempt": "1", "input": {}, "tool": "t"}], "'attempt' is not a int"),
    ([{"type": "Finish", "phase": "Exploded"}], "unknown phase"),
    ([{"type": "__reduce__"}], "unknown action"),
    ({"py/object": "os.system"}, "not a list"),
])
def test_answers_are_checked_not_trusted(answer: Any, problem: str) -> None:
    with pytest.raises(EvaluationError) as err:
        decode_actions(answer, wf({"id": "c", "tool": "t"}))
    assert problem in str(err.value)


def test_complete_and_finish_round_trip() -> None:
    w = wf({"id": "p", "type": "parallel", "tasks": [{"id": "x", "tool": "t"}]}, output={"r": "{{ tasks.p.output }}"})
    s = running(x=TaskStatus(phase="Succeeded", output={"v": [1, 2]}))
    got = with_pool(lambda pool: pool.decide("p", w, s, RUN, NOW))
    assert got == [CompleteTask("p", {"x": {"v": [1, 2]}})] == decide(w, s, RUN, NOW)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_template_that_ran_out_of_time_fails_at_once_on_the_next_decision() -> None:
    slow = wf({"id": "fetch", "tool": "t", "with": {"url": NESTED}})

    async def go(pool: EvalPool) -> tuple[Any, Any, float]:
        (first,) = await pool.decide("slow", slow, running(), RUN, NOW)
        pid = pool.workers[0].proc.pid
        before = _cpu_seconds(pid)
        (again,) = await pool.decide("slow", slow, running(), RUN, NOW)  # same worker: it knows the run
        return first, again, _cpu_seconds(pid) - before

    first, again, cpu = with_pool(go)
    assert first == again and first.reason == "TemplateLimit"
    assert cpu < 0.3  # not another 0.5 s of CPU


def test_a_memory_bomb_fails_its_task_once_and_the_worker_serves_on() -> None:
    bomb = wf({"id": "t", "tool": "t", "with": {"v": (
        "{% set ns = namespace(s='x' * 1000000) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}"
        "{{ ns.s | length }}")}})
    ok = wf({"id": "c", "tool": "t"})

    async def go(pool: EvalPool) -> Any:
        (failed,) = await pool.decide("bomb", bomb, running(), RUN, NOW)
        pid = pool.workers[0].proc.pid
        before = _cpu_seconds(pid)
        (again,) = await pool.decide("bomb", bomb, running(), RUN, NOW)  # remembered: not allocated again
        return failed, again, _cpu_seconds(pid) - before, await pool.decide("ok", ok, running(), RUN, NOW), pool.started

    failed, again, cpu, actions, started = with_pool(go, eval_workers=1, eval_memory_mb=150)
    assert isinstance(failed, FailTask) and failed.reason == "TemplateLimit" and "more memory" in failed.message
    assert again == failed and cpu < 0.15
    assert isinstance(actions[0], Dispatch) and started == 1


def test_a_worker_that_ran_out_of_memory_outside_a_template_retires(monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    from compozy_operator import sandbox_worker

    def no_memory(*_: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(sandbox_worker, "decide", no_memory)
    worker = sandbox_worker.Worker({"run_timeout": 5, "memory_mb": 150})
    answer = worker.answer(pickle.dumps(("decide", "k", wf({"id": "c", "tool": "t"}), (running(), RUN, NOW))))
    assert worker.retire
    assert answer == b'{"error":{"kind":"limit","message":"evaluating the run needed more than 150 MiB"},"retire":true}'


def test_more_requests_than_workers_wait_their_turn() -> None:
    w = wf({"id": "c", "tool": "t", "with": {"x": "{{ workflow.input.text }}"}})

    async def go(pool: EvalPool) -> Any:
        results = await asyncio.gather(*(pool.decide(f"k{i}", w, running(), RUN, NOW) for i in range(6)))
        return results, pool.started, len(pool.workers)

    results, started, alive = with_pool(go, eval_workers=2)
    assert all(r == decide(w, running(), RUN, NOW) for r in results)
    assert started == 2 and alive == 2
