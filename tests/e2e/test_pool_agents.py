"""Agents on warm runner pools, end to end: an agent with ``pool`` runs each attempt in a process
forked on the pool's runner, calls the stand-in LLM endpoint with the real SDK, and gets its API key
from the pool's env (a Secret), not from a pod of its own."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from compozy_operator.kube import Kube
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.fakellm import FakeLLM, Request, Response, error, openai_reply
from tests.helpers import Kubectl, pid_alive, wait_for

from .conftest import wait_finished
from .test_pools import apply, execution, pool, read_pid, runners, task_pods

# writes its process id (the agent's: a tool runs in its agent's process) where the test reads it
PID = ("import os\n"
       "def run(input, ctx):\n"
       "    with open(input['pidfile'], 'w') as f:\n"
       "        f.write(str(os.getpid()))\n"
       "    return {'pid': os.getpid()}\n")
COUNT = "def run(input, ctx):\n    return {'words': len(input['text'].split())}\n"
SCHEMA = {"type": "object", "properties": {"words": {"type": "integer"}}, "required": ["words"]}
KEY_ENV = "LLM_API_KEY"


def key_pool(**spec: Any) -> dict[str, Any]:
    """A pool whose runners hold the API key (from the Secret) in LLM_API_KEY."""
    env = [{"name": KEY_ENV, "valueFrom": {"secretKeyRef": {"name": "llm-credentials", "key": "api-key"}}}]
    return pool("warm", env=env, **spec)


def agent_workflow(name: str, model: str, url: str, task: dict[str, Any], tools: dict[str, str],
                   **model_cfg: Any) -> dict[str, Any]:
    agent = {"id": "writer", "pool": "warm", "tools": list(tools),
             "model": {"name": model, "baseURL": url, "apiKeyEnv": KEY_ENV, **model_cfg},
             "actions": [{"id": "go", "prompt": "Count: {{ input.text }}", "outputSchema": SCHEMA}]}
    return {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": name},
            "spec": {"tools": [{"id": t, "python": code, "inputSchema": {"type": "object"}} for t, code in tools.items()],
                     "agents": [agent], "tasks": [{"id": "t", "agent": "writer", "action": "go",
                                                   "with": {"text": "one two three"}, **task}]}}


def counted(request: Request) -> Response:
    """The answer after the tool's result (the second model call)."""
    [result] = [json.loads(m["content"]) for m in request.body["messages"] if m["role"] == "tool"]
    return openai_reply(json.dumps({"words": result["words"]}), prompt_tokens=40, completion_tokens=6)


def test_an_agent_runs_on_the_pool_with_the_pools_key(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                     namespace: str, llm: FakeLLM, api_key: str) -> None:
    model = f"pooled-{namespace}"
    llm.add(openai_reply(tool_calls=[("count", {"text": "one two three"})], prompt_tokens=30, completion_tokens=5),
            counted, model=model)
    apply(kubectl, namespace, key_pool(), agent_workflow("agent", model, llm.url, {}, {"count": COUNT}),
          execution("agent-1", "agent"))
    status = wait_finished(kubectl, namespace, "agent-1", timeout=90)
    assert status["phase"] == "Succeeded", status
    task = status["tasks"]["t"]
    assert task["output"] == {"words": 3}
    assert task["usage"] == {"inputTokens": 70, "outputTokens": 11, "modelCalls": 2}
    assert task["podName"] in {p["metadata"]["name"] for p in runners(kube, namespace)}
    assert task_pods(kube, namespace) == []  # no pod of its own
    requests = [r for r in llm.requests if r.body.get("model") == model]
    assert len(requests) == 2 and all(r.headers["authorization"] == f"Bearer {api_key}" for r in requests)


def test_a_failed_model_call_is_retried_as_in_a_pod(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                   namespace: str, llm: FakeLLM, api_key: str) -> None:
    model = f"flaky-{namespace}"
    llm.add(error(503, "overloaded"), openai_reply(tool_calls=[("count", {"text": "a b"})]), counted, model=model)
    apply(kubectl, namespace, key_pool(),
          agent_workflow("flaky", model, llm.url, {"retry": {"limit": 1, "backoff": {"initial": "100ms"}}},
                         {"count": COUNT}, maxRetries=0),
          execution("flaky-1", "flaky"))
    status = wait_finished(kubectl, namespace, "flaky-1", timeout=90)
    assert status["phase"] == "Succeeded", status
    task = status["tasks"]["t"]
    assert task["attempt"] == 2 and task["output"] == {"words": 2} and task["usage"]["modelCalls"] == 2
    [first] = task["attempts"]
    assert first["error"]["reason"] == "ProviderUnavailable" and "503" in first["error"]["message"], first


def test_cancel_kills_a_pooled_agent_waiting_for_its_model(operator: OperatorProcess, kubectl: Kubectl,
                                                          kube: Kube, namespace: str, llm: FakeLLM, api_key: str,
                                                          tmp_path: Path) -> None:
    model, pidfile, released = f"stuck-{namespace}", tmp_path / "agent.pid", threading.Event()

    def stuck(_: Request) -> Response:  # the second model call never answers (until the test ends)
        released.wait(60)
        return openai_reply(json.dumps({"words": 0}))

    llm.add(openai_reply(tool_calls=[("pid", {"pidfile": str(pidfile)})]), stuck, model=model)
    try:
        apply(kubectl, namespace, key_pool(), agent_workflow("stuck", model, llm.url, {}, {"pid": PID}),
              execution("stuck-1", "stuck"))
        pid = wait_for(lambda: read_pid(pidfile), 60, "the agent's process")
        wait_for(lambda: len(llm.bodies(model)) == 2 or None, 30, "the second model call")
        kubectl.ok("patch", "wfx", "stuck-1", "-n", namespace, "--type=merge", "-p", '{"spec":{"cancel":true}}')
        assert wait_finished(kubectl, namespace, "stuck-1")["phase"] == "Cancelled"
        wait_for(lambda: not pid_alive(pid) or None, 10, "the cancelled agent's process to die")
    finally:
        released.set()


def test_a_missing_pool_variable_fails_the_attempt_for_good(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                           namespace: str, llm: FakeLLM) -> None:
    apply(kubectl, namespace, pool("warm"),  # no LLM_API_KEY among its runners' env
          agent_workflow("nokey", f"nokey-{namespace}", llm.url, {"retry": {"limit": 2}}, {"count": COUNT}),
          execution("nokey-1", "nokey"))
    status = wait_finished(kubectl, namespace, "nokey-1", timeout=90)
    task = status["tasks"]["t"]
    assert status["phase"] == "Failed" and task["attempt"] == 1, status
    assert task["error"]["reason"] == "ApiKeyMissing" and "no variable LLM_API_KEY" in task["error"]["message"]
    assert llm.bodies(f"nokey-{namespace}") == []


def test_what_cannot_work_on_a_pool_is_refused_at_apply(operator: OperatorProcess, kubectl: Kubectl,
                                                       namespace: str, llm: FakeLLM) -> None:
    wf = agent_workflow("refused", "m", llm.url, {}, {"count": COUNT})
    wf["spec"]["agents"][0]["model"] = {"name": "m", "apiKeySecretRef": {"name": "llm-credentials", "key": "api-key"}}
    out = kubectl.apply(namespace, wf)
    assert out.returncode != 0 and "model.apiKeySecretRef: an agent with a pool" in out.stderr, out.stderr
    wf = agent_workflow("refused", "m", llm.url, {}, {"count": COUNT})
    wf["spec"]["tools"][0]["env"] = [{"name": "A", "value": "1"}]
    out = kubectl.apply(namespace, wf)
    assert out.returncode != 0 and "spec.agents[0] (writer).tools[0]: tool 'count' sets env" in out.stderr, out.stderr
