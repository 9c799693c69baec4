"""Agent tasks end to end: real task pods on the process node call the stand-in LLM endpoint with
the real openai/anthropic SDKs; tools run in the pod; events, status, metrics and secrets checked."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import nats
import yaml

from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.fakellm import FakeLLM, Request, Response, anthropic_reply, error, openai_reply
from tests.helpers import Kubectl

from .conftest import wait_finished
from .test_workflows import apply, execution

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
COUNT = ("def run(input, ctx):\n    ctx.log.info('counting words')\n"
         "    return {'words': len(input['text'].split())}\n")
TOOLS = [{"id": "word-count", "description": "Count words", "python": COUNT,
          "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}]
SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}


def agent(aid: str, model: str, url: str, actions: list[dict[str, Any]], provider: str = "openai",
          settings: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    model_cfg = {"provider": provider, "name": model, "baseURL": url,
                 "apiKeySecretRef": {"name": "llm-credentials", "key": "api-key"}, **(settings or {})}
    return {"id": aid, "model": model_cfg, "instructions": "Be brief.", "actions": actions, **extra}


def agent_workflow(name: str, agents: list[dict[str, Any]], tasks: list[dict[str, Any]], **spec: Any) -> dict:
    return {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": name},
            "spec": {"tools": TOOLS, "agents": agents, "tasks": tasks, **spec}}


def child(tid: str, aid: str, **extra: Any) -> dict[str, Any]:
    return {"id": tid, "agent": aid, "action": "go", "with": {"text": "one two three"}, **extra}


def go(schema: dict | None = None, **extra: Any) -> list[dict[str, Any]]:
    action = {"id": "go", "prompt": "Handle: {{ input.text }}", **extra}
    if schema:
        action["outputSchema"] = schema
    return [action]


def run_workflow(kubectl: Kubectl, namespace: str, wf: dict[str, Any], name: str, timeout: float = 90) -> dict:
    apply(kubectl, namespace, wf, execution(name, wf["metadata"]["name"]))
    return wait_finished(kubectl, namespace, name, timeout)


def stream_messages(devenv: DevEnvironment, namespace: str) -> list[bytes]:
    """Every stored NATS message of the namespace: state events, log events, commands."""
    async def read() -> list[bytes]:
        nc = await nats.connect(devenv.nats.url, token=devenv.nats.token)
        js = nc.jetstream()
        out: list[bytes] = []
        try:
            for stream, kind in (("COMPOZY_STATE", "state"), ("COMPOZY_LOGS", "log"), ("COMPOZY_COMMANDS", "cmd")):
                sub = await js.pull_subscribe(f"compozy.{kind}.{namespace}.>", stream=stream)
                while True:
                    try:
                        msgs = await sub.fetch(500, timeout=1)
                    except asyncio.TimeoutError:
                        break
                    out += [m.data for m in msgs]
                await sub.unsubscribe()
        finally:
            await nc.close()
        return out

    return asyncio.run(read())


def events_of(messages: list[bytes], etype: str) -> list[dict[str, Any]]:
    parsed = [json.loads(m) for m in messages]
    return [e for e in parsed if e.get("type") == etype]


def tool_output_reached_model(request: Request) -> Response:
    """Second reply of the summarize example: answers with the word count the tool reported."""
    results = [json.loads(m["content"]) for m in request.body["messages"] if m["role"] == "tool"]
    return openai_reply(json.dumps({"summary": "Compozy runs agent workflows.", "words": results[0]["words"]}),
                        prompt_tokens=90, completion_tokens=12)


def test_summarize_example_tool_round_trip_usage_and_metrics(operator: OperatorProcess, kubectl: Kubectl,
                                                             namespace: str, llm: FakeLLM, api_key: str,
                                                             devenv: DevEnvironment) -> None:
    docs = list(yaml.safe_load_all((EXAMPLES / "agent-summarize.yaml").read_text()))
    wf, ex = docs
    wf["spec"]["agents"][0]["model"]["baseURL"] = llm.url
    wf["spec"]["agents"][0]["model"]["name"] = model = f"summarize-{namespace}"
    text = ex["spec"]["input"]["text"]
    llm.add(openai_reply(tool_calls=[("word-count", {"text": text})], prompt_tokens=50, completion_tokens=9),
            tool_output_reached_model, model=model)
    before = operator.metrics()
    apply(kubectl, namespace, wf, ex)
    status = wait_finished(kubectl, namespace, "agent-summarize-1", 90)
    assert status["phase"] == "Succeeded", status
    assert status["output"] == {"summary": "Compozy runs agent workflows.", "words": len(text.split())}
    task = status["tasks"]["summarize"]
    assert task["usage"] == {"inputTokens": 140, "outputTokens": 21, "modelCalls": 2}
    assert status["usage"] == task["usage"]

    first, second = llm.bodies(model)
    assert first["messages"][0] == {"role": "system", "content": "You write terse summaries. Call the word-count "
                                                                 "tool to learn how long the text is."}
    assert first["messages"][1]["content"] == f"Summarize this text in one sentence: {text}"
    assert first["response_format"]["json_schema"]["schema"]["required"] == ["summary", "words"]
    assert json.loads(second["messages"][-1]["content"]) == {"words": len(text.split())}  # ran in the pod

    messages = stream_messages(devenv, namespace)
    (tool_ok,) = events_of(messages, "ToolExecutionSuccess")
    assert tool_ok["data"]["tool"] == "word-count" and tool_ok["data"]["call"] == "1.0"
    (done,) = events_of(messages, "AgentExecutionSuccess")
    assert done["data"]["usage"]["modelCalls"] == 2 and done["data"]["provider"] == "openai"
    logs = [e["data"]["message"] for e in events_of(messages, "LogEmitted")]
    assert any(re.match(r"model call 1 \(openai/summarize-.*\): 1 tool call\(s\): word-count; 50 input / 9 output",
                        line) for line in logs), logs
    assert not any(text in line for line in logs)  # no prompts unless the agent opts in

    def tokens(metrics: str, direction: str) -> float:
        m = re.search(rf'compozy_llm_tokens_total{{direction="{direction}",model="{model}",provider="openai"}} (\S+)',
                      metrics)
        return float(m.group(1)) if m else 0.0

    after = operator.metrics()
    assert tokens(after, "input") - tokens(before, "input") == 140
    assert tokens(after, "output") - tokens(before, "output") == 21
    assert f'compozy_llm_call_duration_seconds_count{{model="{model}",provider="openai"}} 2.0' in after


def test_router_driven_by_an_anthropic_agent(operator: OperatorProcess, kubectl: Kubectl, namespace: str,
                                             llm: FakeLLM, api_key: str) -> None:
    wf, ex = yaml.safe_load_all((EXAMPLES / "agent-router.yaml").read_text())
    model_cfg = wf["spec"]["agents"][0]["model"]
    model_cfg.update(provider="anthropic", baseURL=llm.anthropic_url, name=f"triage-{namespace}")
    del model_cfg["temperature"]  # Anthropic's Messages API has no sampling temperature any more
    llm.add(anthropic_reply('{"label": "bug", "reason": "a crash"}'), model=model_cfg["name"])
    apply(kubectl, namespace, wf, ex)
    status = wait_finished(kubectl, namespace, "ticket-triage-1", 90)
    assert status["phase"] == "Succeeded", status
    assert status["output"] == {"label": "bug", "route": "file-bug"}
    assert status["tasks"]["file-bug"]["output"]["queue"] == "engineering" and "refund" not in status["tasks"]
    (request,) = [r for r in llm.requests if r.body.get("model") == model_cfg["name"]]
    assert request.path == "/v1/messages"
    assert request.body["output_config"]["format"]["schema"]["properties"]["label"]["enum"] == ["bug", "billing",
                                                                                                "other"]
    assert request.headers.get("x-api-key") == api_key or request.headers.get("authorization") == f"Bearer {api_key}"


def test_structured_output_corrected_and_never_valid(operator: OperatorProcess, kubectl: Kubectl, namespace: str,
                                                     llm: FakeLLM, api_key: str) -> None:
    fixes, never = f"fixes-{namespace}", f"never-{namespace}"
    llm.add(openai_reply('{"summary": 1}'), openai_reply('{"summary": "ok"}'), model=fixes)
    llm.add(*[openai_reply("I cannot do JSON") for _ in range(6)], model=never)
    wf = agent_workflow("structured", [agent("fixes", fixes, llm.url, go(SCHEMA)),
                                       agent("never", never, llm.url, go(SCHEMA, outputRetries=1))],
                        [{"id": "both", "type": "parallel", "strategy": "bestEffort", "tasks": [
                            child("fix", "fixes"), child("nope", "never", retry={"limit": 2})]}])
    status = run_workflow(kubectl, namespace, wf, "structured-1")
    assert status["phase"] == "Succeeded", status
    out = status["output"] if status.get("output") else status["tasks"]["both"]["output"]
    assert out["fix"] == {"output": {"summary": "ok"}}
    assert out["nope"]["error"]["reason"] == "OutputSchemaNotSatisfied"
    nope = status["tasks"]["nope"]
    assert nope["attempt"] == 1 and nope["error"]["reason"] == "OutputSchemaNotSatisfied"  # not retried
    assert "after 2 tries" in nope["error"]["message"]
    assert len(llm.bodies(never)) == 2 and len(llm.bodies(fixes)) == 2
    assert "is not of type 'string'" in llm.bodies(fixes)[1]["messages"][-1]["content"]


def test_parallel_tool_calls_and_max_iterations(operator: OperatorProcess, kubectl: Kubectl, namespace: str,
                                                llm: FakeLLM, api_key: str, devenv: DevEnvironment) -> None:
    par, loop = f"par-{namespace}", f"loop-{namespace}"
    llm.add(openai_reply(tool_calls=[("word-count", {"text": "a b"}), ("word-count", {"text": "c d e"})]),
            openai_reply("five words in all"), model=par)
    llm.add(*[openai_reply(tool_calls=[("word-count", {"text": "again"})]) for _ in range(3)], model=loop)
    wf = agent_workflow("tools", [agent("par", par, llm.url, go(), tools=["word-count"]),
                                  agent("loop", loop, llm.url, go(), tools=["word-count"], maxIterations=2)],
                        [{"id": "both", "type": "parallel", "strategy": "bestEffort", "tasks": [
                            child("par", "par"), child("loop", "loop", retry={"limit": 2})]}])
    status = run_workflow(kubectl, namespace, wf, "tools-1")
    assert status["tasks"]["par"]["output"] == {"text": "five words in all"}
    results = [json.loads(m["content"]) for m in llm.bodies(par)[1]["messages"] if m["role"] == "tool"]
    assert results == [{"words": 2}, {"words": 3}]
    messages = stream_messages(devenv, namespace)
    calls = sorted(e["data"]["call"] for e in events_of(messages, "ToolExecutionSuccess") if e["data"]["task"] == "par")
    assert calls == ["1.0", "1.1"]
    assert [e["data"]["message"] for e in events_of(messages, "LogEmitted")].count("counting words") >= 4
    looped = status["tasks"]["loop"]
    assert looped["phase"] == "Failed" and looped["attempt"] == 1
    assert looped["error"]["reason"] == "MaxIterationsExceeded" and len(llm.bodies(loop)) == 2
    assert looped["usage"]["modelCalls"] == 2


def test_rate_limit_then_success_waits_for_retry_after(operator: OperatorProcess, kubectl: Kubectl,
                                                       namespace: str, llm: FakeLLM, api_key: str) -> None:
    model = f"limited-{namespace}"
    llm.add(error(429, "slow down", {"retry-after": "2"}), openai_reply("made it"), model=model)
    wf = agent_workflow("limited", [agent("a", model, llm.url, go(), settings={"maxRetries": 0})],
                        [child("t", "a", retry={"limit": 2, "backoff": {"initial": "100ms"}})])
    status = run_workflow(kubectl, namespace, wf, "limited-1")
    assert status["phase"] == "Succeeded", status
    task = status["tasks"]["t"]
    assert task["attempt"] == 2 and task["output"] == {"text": "made it"}
    (first,) = task["attempts"]
    assert first["error"]["reason"] == "RateLimited" and first["error"]["retryAfter"] == 2
    from compozy_operator.executor import epoch
    assert epoch(task["startedAt"]) - epoch(first["finishedAt"]) >= 2.0  # not the 100ms backoff


def test_auth_failure_is_not_retried_and_the_key_appears_nowhere(operator: OperatorProcess, kubectl: Kubectl,
                                                                 namespace: str, llm: FakeLLM, api_key: str,
                                                                 devenv: DevEnvironment) -> None:
    ok, denied = f"ok-{namespace}", f"denied-{namespace}"
    # the stand-in echoes the key in its 401 body and in the ok reply, as careless providers might
    llm.add(openai_reply(tool_calls=[("word-count", {"text": "x y"})]), openai_reply(f"fine {api_key[:6]}"),
            model=ok)
    llm.add(error(401, f"Incorrect API key provided: {api_key}"), model=denied)
    wf = agent_workflow("secrets", [agent("ok", ok, llm.url, go(), tools=["word-count"], logMessages=True),
                                    agent("denied", denied, llm.url, go(), logMessages=True)],
                        [{"id": "both", "type": "parallel", "strategy": "bestEffort", "tasks": [
                            child("ok", "ok"), child("denied", "denied", retry={"limit": 3})]}])
    status = run_workflow(kubectl, namespace, wf, "secrets-1")
    denied_task = status["tasks"]["denied"]
    assert denied_task["phase"] == "Failed" and denied_task["attempt"] == 1, denied_task
    assert denied_task["error"]["reason"] == "ProviderAuthError" and len(llm.bodies(denied)) == 1
    assert status["tasks"]["ok"]["phase"] == "Succeeded"
    # the key did reach the provider, from the Secret
    assert all(r.headers["authorization"] == f"Bearer {api_key}" for r in llm.requests
               if r.body.get("model") in (ok, denied))

    messages = stream_messages(devenv, namespace)
    (agent_failed,) = events_of(messages, "AgentExecutionFailed")
    assert agent_failed["data"]["error"]["reason"] == "ProviderAuthError" and agent_failed["data"]["task"] == "denied"
    places: dict[str, str] = {
        "status": json.dumps(status),
        "events": kubectl.ok("get", "events", "-n", namespace, "-o", "json"),
        "nats": "\n".join(m.decode(errors="replace") for m in messages),
    }
    for path in [*(devenv.workdir / "logs").rglob("*"), *(devenv.workdir / "nodes").rglob("*.log"),
                 *(devenv.workdir / "nats").rglob("*")]:
        if path.is_file():
            places[str(path)] = path.read_bytes().decode(errors="replace")
    assert "prompt: Handle: one two three" in places["nats"]  # logMessages reached the logs: the search is real
    leaked = [where for where, text in places.items() if api_key in text]
    assert leaked == []
