"""Runner pools' pure parts: the opt-in's rules, the runners' Deployment, scaling, queue messages."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from compozy_operator.events import pool_consumer, pool_subject, stop_subject
from compozy_operator.executor import AgentCall, Dispatch
from compozy_operator.pools import PoolWork, desired_replicas, parse_work, runner_deployment
from compozy_operator.resources.models import RunnerPoolSpec, Tool
from compozy_operator.settings import Settings
from compozy_operator.validation import SpecError, check_workflow, parse_workflow

POOL = {"metadata": {"name": "warm", "namespace": "team-a", "uid": "u-1"},
        "spec": {"concurrency": 8, "minReplicas": 1, "maxReplicas": 5, "serviceAccountName": "runner",
                 "env": [{"name": "KEY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}}


def test_a_tool_opts_in_with_pool_and_dispatches_to_it() -> None:
    tool = Tool(id="t", python="def run(i, c): return {}", pool="warm")
    assert Dispatch("a", 1, {}, tool=tool).pool == "warm"
    assert Dispatch("a", 1, {}, tool=Tool(id="t", python="x")).pool is None


@pytest.mark.parametrize("field,value", [("image", "other:1"), ("env", [{"name": "A", "value": "1"}]),
                                         ("resources", {"limits": {"cpu": "1"}})])
def test_a_pooled_tool_cannot_bring_its_own_pod_settings(field: str, value: object) -> None:
    spec = {"tools": [{"id": "t", "python": "x", "pool": "warm", field: value}], "tasks": [{"id": "a", "tool": "t"}]}
    with pytest.raises(SpecError) as e:
        parse_workflow(spec)
    assert f"{field}: a tool with a pool runs on the pool's runners" in str(e.value)


def test_pool_bounds_are_checked() -> None:
    with pytest.raises(ValidationError, match="minReplicas \\(3\\) is greater than maxReplicas \\(2\\)"):
        RunnerPoolSpec.model_validate({"minReplicas": 3, "maxReplicas": 2})
    with pytest.raises(ValidationError):
        RunnerPoolSpec.model_validate({"concurrency": 0})


def test_attempt_memory_reaches_the_runner_as_mebibytes() -> None:
    for quantity, mib in (("256Mi", "256"), ("2Gi", "2048")):
        pool = {**POOL, "spec": {**POOL["spec"], "attemptMemory": quantity}}
        [c] = runner_deployment(Settings(), pool, replicas=1)["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["COMPOZY_POOL_ATTEMPT_MEMORY_MB"] == mib and env["MALLOC_ARENA_MAX"] == "2"
    [c] = runner_deployment(Settings(), POOL, replicas=1)["spec"]["template"]["spec"]["containers"]
    assert "COMPOZY_POOL_ATTEMPT_MEMORY_MB" not in {e["name"] for e in c["env"]}
    for bad in ("256M", "0Mi", "1.5Gi", "-1Gi", "512"):
        with pytest.raises(ValidationError, match="attempt_memory|attemptMemory"):
            RunnerPoolSpec.model_validate({"attemptMemory": bad})


def test_the_runners_deployment() -> None:
    d = runner_deployment(Settings(task_image="img:1"), POOL, replicas=2)
    assert d["metadata"]["name"] == "compozy-runner-warm" and d["metadata"]["namespace"] == "team-a"
    assert d["metadata"]["ownerReferences"][0] == {"apiVersion": "compozy.dev/v1alpha1", "kind": "RunnerPool",
                                                   "name": "warm", "uid": "u-1", "controller": True,
                                                   "blockOwnerDeletion": True}
    assert d["spec"]["replicas"] == 2
    pod = d["spec"]["template"]["spec"]
    [c] = pod["containers"]
    assert c["image"] == "img:1" and c["args"] == ["runner", "--pool", "warm"]
    env = {e["name"]: e for e in c["env"]}
    assert env["COMPOZY_POOL_CONCURRENCY"]["value"] == "8" and "KEY" in env and "COMPOZY_NATS_URL" in env
    assert env["COMPOZY_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert pod["serviceAccountName"] == "runner" and pod["automountServiceAccountToken"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] and pod["securityContext"]["runAsNonRoot"]
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in d["spec"]["selector"]["matchLabels"].items())


@pytest.mark.parametrize("pending,in_flight,current,wanted", [
    (0, 0, 1, 1),     # idle: the minimum
    (0, 0, 4, 3),     # down one at a time
    (30, 8, 1, 5),    # up at once, to the maximum
    (9, 0, 1, 2),     # 9 attempts at 8 a runner
    (0, 16, 2, 2),    # busy runners are kept
])
def test_replicas_follow_the_queue(pending: int, in_flight: int, current: int, wanted: int) -> None:
    spec = RunnerPoolSpec.model_validate(POOL["spec"])
    assert desired_replicas(spec, pending, in_flight, current) == wanted


def test_min_zero_scales_to_zero_when_idle() -> None:
    spec = RunnerPoolSpec(min_replicas=0, max_replicas=3)
    assert desired_replicas(spec, 0, 0, 1) == 0 and desired_replicas(spec, 1, 0, 0) == 1


def test_queue_messages_are_checked() -> None:
    work = PoolWork("team-a", "run-1", "uid-1", "each[2]", 3, "n0nce")
    assert parse_work(work.dump(), "team-a") == work
    assert "namespace 'team-b'" in str(parse_work({**work.dump(), "namespace": "team-b"}, "team-a"))
    assert parse_work({**work.dump(), "attempt": True}, "team-a") == "attempt is not an integer >= 1"
    assert parse_work({**work.dump(), "nonce": ""}, "team-a") == "nonce is not a non-empty string"
    assert parse_work([1], "team-a") == "not a JSON object"


def test_pool_subjects() -> None:
    assert pool_subject("team-a", "warm") == "compozy.pool.team-a.warm"
    assert pool_consumer("team-a", "warm") == "pool_team-a_warm"
    assert stop_subject("a.b", "run-1", "u-1", "each[2]", 3) == "compozy.cmd.a_b.run-1.task.stop.u-1.each_5b2_5d.3"


AGENT = {"id": "w", "pool": "warm", "model": {"name": "m", "apiKeyEnv": "LLM_KEY"}, "actions": [{"id": "go", "prompt": "p"}]}


def agent_spec(agent: dict, tools: list[dict] | None = None) -> dict:
    return {"tools": tools or [], "agents": [agent], "tasks": [{"id": "a", "agent": "w", "action": "go"}]}


def test_an_agent_opts_in_with_pool_and_names_the_pools_key_variable() -> None:
    wf = parse_workflow(agent_spec(AGENT))
    [agent] = wf.agents or []
    call = AgentCall(agent, agent.actions[0], None, "p", ())
    d = Dispatch("a", 1, {}, agent=call)
    assert d.pool == "warm" and d.env == []
    assert d.command()["agent"]["model"]["apiKeyEnv"] == "LLM_KEY"  # a name, never the key
    assert Dispatch("a", 1, {}, agent=AgentCall(agent.model_copy(update={"pool": None}), agent.actions[0], None, "p",
                                                ())).pool is None


@pytest.mark.parametrize("model,message", [
    ({"name": "m", "apiKeySecretRef": {"name": "s", "key": "k"}}, "model.apiKeySecretRef: an agent with a pool"),
    ({"name": "m", "apiKeyEnv": "COMPOZY_NATS_TOKEN"}, "model.apiKeyEnv: COMPOZY_ variables are the runner's own"),
    ({"name": "m", "apiKeyEnv": "A-B"}, "apiKeyEnv"),
])
def test_a_pooled_agents_key_comes_from_the_pools_env(model: dict, message: str) -> None:
    with pytest.raises(SpecError) as e:
        parse_workflow(agent_spec({**AGENT, "model": model}))
    assert message in str(e.value)


def test_an_agent_without_a_pool_has_no_key_variable() -> None:
    with pytest.raises(SpecError, match="model.apiKeyEnv: only for an agent with a pool"):
        parse_workflow(agent_spec({k: v for k, v in AGENT.items() if k != "pool"}))


@pytest.mark.parametrize("field,value", [("image", "other:1"), ("env", [{"name": "A", "value": "1"}]),
                                         ("resources", {"limits": {"cpu": "1"}})])
def test_a_pooled_agents_tools_cannot_bring_pod_settings(field: str, value: object) -> None:
    spec = agent_spec({**AGENT, "tools": ["t"]}, [{"id": "t", "python": "x", field: value}])
    problems = check_workflow(parse_workflow(spec))
    assert [p for p in problems if p.startswith(f"spec.agents[0] (w).tools[0]: tool 't' sets {field}, but the agent "
                                                "runs its tools in its own process on pool 'warm'")], problems
    assert check_workflow(parse_workflow(agent_spec({**AGENT, "tools": ["t"]}, [{"id": "t", "python": "x"}]))) == []


def test_the_fork_server_preload_leaves_an_agent_attempt_nothing_to_import() -> None:
    """What the pool runner's fork server imports (pool_preload) is all a model call of either
    provider loads (here one to a closed port): an agent attempt's process pays no import. And the
    inherited heap is left out of collections (gc.freeze)."""
    code = ("import asyncio, gc, sys\n"
            "import compozy_operator.pool_preload\n"
            "from compozy_operator.agents.providers import PROVIDERS, AgentError, _TLS\n"
            "before = set(sys.modules)\n"
            "async def call():\n"
            "    for chat in PROVIDERS.values():\n"
            "        model = {'name': 'm', 'baseURL': 'http://127.0.0.1:9', 'maxRetries': 0}\n"
            "        try:\n"
            "            await chat(model, 'k', 's', 'p', [], {'type': 'object'}).send()\n"
            "        except AgentError as e:\n"
            "            assert e.reason == 'ProviderConnectionError', e.reason\n"
            "asyncio.run(call())\n"
            "print(sorted(set(sys.modules) - before), len(_TLS), gc.get_freeze_count() > 100_000)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["[]", "1", "True"], out.stdout + out.stderr


@pytest.mark.parametrize(("tool", "pool"), [
    ({}, "warm"),
    ({"pool": "own"}, "own"),
    ({"isolation": "pod"}, None),
    ({"image": "example.com/tool:1"}, None),
    ({"env": [{"name": "A", "value": "1"}]}, None),
    ({"resources": {"limits": {"memory": "1Gi"}}}, None),
])
def test_a_workflows_default_pool_takes_each_tool_that_can_run_there(tool: dict[str, Any], pool: str | None) -> None:
    t = Tool.model_validate({"id": "t", "python": "def run(i, c): return {}", **tool})
    assert t.pooled("warm").pool == pool
    assert t.pooled(None).pool == tool.get("pool")


def test_a_tool_cannot_ask_for_a_pool_and_a_pod_of_its_own() -> None:
    with pytest.raises(ValidationError, match="isolation: a tool with isolation pod runs in a pod of its own"):
        Tool.model_validate({"id": "t", "python": "x", "pool": "warm", "isolation": "pod"})
    with pytest.raises(ValidationError, match="isolation"):
        Tool.model_validate({"id": "t", "python": "x", "isolation": "pool"})  # pod is the only value
