"""Agent tasks in the pure parts: dispatch (prompts, pod env, no secret in the command), retries
after provider failures, token usage in status, metrics from events."""

from __future__ import annotations

import itertools
import json

from prometheus_client import REGISTRY

from compozy_operator.resources.models import ErrorInfo, TaskStatus, WorkflowExecutionStatus, WorkflowSpec
from compozy_operator.events import EventType, make_event
from compozy_operator.executor import Dispatch, FailTask, RunContext, ScheduleRetry, decide, epoch
from compozy_operator.monitoring import observe_event
from compozy_operator.pods import task_pod
from compozy_operator.reducer import fold
from compozy_operator.settings import Settings

WF = WorkflowSpec.model_validate({
    "env": {"STYLE": "terse"},
    "tools": [{"id": "word-count", "python": "def run(i, c): return {}", "inputSchema": {"type": "object"},
               "env": [{"name": "TOOL_VAR", "value": "1"}], "image": "other:1"}],
    "agents": [{
        "id": "writer",
        "model": {"provider": "anthropic", "name": "claude-x", "baseURL": "http://llm:8000",
                  "apiKeySecretRef": {"name": "llm", "key": "api-key"}, "maxTokens": 500},
        "instructions": "You write {{ env.STYLE }} summaries.",
        "tools": ["word-count"],
        "maxIterations": 4,
        "actions": [{"id": "summarize", "prompt": "Summarize for {{ workflow.input.who }}: {{ input.text }}",
                     "outputSchema": {"type": "object"}}],
    }],
    "tasks": [{"id": "sum", "agent": "writer", "action": "summarize", "with": {"text": "{{ workflow.input.text }}"},
               "retry": {"limit": 3, "backoff": {"initial": "1s"}}}],
})
RUN = RunContext(execution="run-1", input={"text": "a b c", "who": "ops"})
NOW = 1_800_000_000.0


def test_agent_task_dispatch_renders_prompts_and_carries_no_secret() -> None:
    (d,) = decide(WF, WorkflowExecutionStatus(phase="Running"), RUN, NOW)
    assert isinstance(d, Dispatch) and d.tool is None and d.agent is not None
    assert d.runs == {"agent": "writer", "action": "summarize"}
    command = d.command()
    assert command["action"] == {"id": "summarize", "prompt": "Summarize for ops: a b c",
                                 "outputSchema": {"type": "object"}}
    assert command["agent"]["instructions"] == "You write terse summaries."
    assert command["agent"]["model"] == {"provider": "anthropic", "name": "claude-x", "baseURL": "http://llm:8000",
                                         "maxTokens": 500}
    assert command["agent"]["maxIterations"] == 4 and command["input"] == {"text": "a b c"}
    assert [t["id"] for t in command["tools"]] == ["word-count"]
    assert "apiKeySecretRef" not in json.dumps(command) and "api-key" not in json.dumps(command)
    # what people see of it (api.Service's /attempt): the rendered input, prompt and instructions only
    assert d.rendered() == {"input": {"text": "a b c"}, "prompt": "Summarize for ops: a b c",
                            "instructions": "You write terse summaries."}
    assert d.image is None  # the agent's tools run in the agent's pod, of the runner image
    pod = task_pod(Settings(task_image="img:1"), {"metadata": {"name": "run-1", "namespace": "ns", "uid": "u"}},
                   d.task, d.attempt, image=d.image, env=d.env, resources=d.resources)
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["COMPOZY_MODEL_API_KEY"] == {"name": "COMPOZY_MODEL_API_KEY",
                                            "valueFrom": {"secretKeyRef": {"name": "llm", "key": "api-key"}}}
    assert env["TOOL_VAR"]["value"] == "1" and pod["spec"]["containers"][0]["image"] == "img:1"


def test_a_prompt_that_does_not_render_fails_the_attempt() -> None:
    wf = WF.model_copy(deep=True)
    wf.agents[0].actions[0].prompt = "{{ input.missing.deeper }}"
    (action,) = decide(wf, WorkflowExecutionStatus(phase="Running"), RUN, NOW)
    assert isinstance(action, FailTask) and action.reason == "TemplateError"
    assert "agents.writer.actions.summarize.prompt" in action.message


def failed(reason: str, retry_after: float | None = None) -> WorkflowExecutionStatus:
    err = ErrorInfo(reason=reason, message="x", retry_after=retry_after)
    return WorkflowExecutionStatus(phase="Running", tasks={"sum": TaskStatus(
        phase="Failed", attempt=1, error=err, finished_at="2027-01-15T08:00:00.000Z")})


def test_rate_limited_attempt_is_retried_no_sooner_than_retry_after() -> None:
    (retry,) = decide(WF, failed("RateLimited", retry_after=30), RUN, NOW)
    assert isinstance(retry, ScheduleRetry) and retry.delay == 30
    assert epoch(retry.not_before) == epoch("2027-01-15T08:00:30.000Z")
    (retry,) = decide(WF, failed("ProviderUnavailable"), RUN, NOW)
    assert isinstance(retry, ScheduleRetry) and retry.delay == 1


def test_non_retryable_agent_failures_end_the_task() -> None:
    for reason in ("ProviderAuthError", "ProviderBadRequest", "OutputSchemaNotSatisfied", "MaxIterationsExceeded"):
        (action,) = decide(WF, failed(reason), RUN, NOW)
        assert not isinstance(action, ScheduleRetry), reason


def ev(etype: EventType, attempt: int, **data):
    return make_event(etype, "test", "ns", "run", "uid", "sum", attempt, **data)


def usage(i: int, o: int, c: int) -> dict[str, int]:
    return {"inputTokens": i, "outputTokens": o, "modelCalls": c}


EVENTS = [
    ev(EventType.TASK_DISPATCHED, 1), ev(EventType.TASK_STARTED, 1),
    ev(EventType.TASK_FAILED, 1, error={"reason": "RateLimited", "message": "429", "retryAfter": 2.5},
       usage=usage(10, 0, 1)),
    ev(EventType.TASK_RETRY_SCHEDULED, 2, notBefore="2027-01-01T00:00:00Z"),
    ev(EventType.TASK_DISPATCHED, 2), ev(EventType.TASK_STARTED, 2),
    ev(EventType.TASK_SUCCESS, 2, output={"summary": "s"}, usage=usage(30, 8, 2)),
]


def test_token_usage_per_attempt_and_per_run_in_any_order() -> None:
    """Any order within an attempt (attempt 2 exists only after attempt 1's failure was folded)."""
    results = set()
    for first, second in itertools.product(itertools.permutations(EVENTS[:3]), itertools.permutations(EVENTS[3:])):
        order = [*first, *second, *first[:2]]  # and some re-delivered
        s = WorkflowExecutionStatus(phase="Running")
        for seq, e in enumerate(order, start=1):
            s = fold(s, e, seq)
        results.add(s.model_copy(update={"state_seq": 0}).model_dump_json())
        task = s.tasks["sum"]
        assert task.usage.model_dump() == {"input_tokens": 30, "output_tokens": 8, "model_calls": 2}
        assert task.attempts[0].usage.input_tokens == 10 and task.attempts[0].error.retry_after == 2.5
        assert s.usage.model_dump() == {"input_tokens": 40, "output_tokens": 8, "model_calls": 3}
    assert len(results) == 1


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_agent_events_move_the_token_counters_and_latency_histogram() -> None:
    labels = {"provider": "openai", "model": "unit-model"}
    before = sample("compozy_llm_tokens_total", **labels, direction="input")
    observe_event(ev(EventType.AGENT_SUCCESS, 1, provider="openai", model="unit-model", usage=usage(12, 3, 2),
                     callSeconds=[0.2, 0.4]))
    observe_event(ev(EventType.AGENT_FAILED, 2, provider="openai", model="unit-model", usage=usage(5, 0, 1),
                     callSeconds=[0.1], error={"reason": "RateLimited"}))
    assert sample("compozy_llm_tokens_total", **labels, direction="input") - before == 17
    assert sample("compozy_llm_call_duration_seconds_count", **labels) >= 3
    assert sample("compozy_agent_attempts_total", **labels, outcome="RateLimited") >= 1
