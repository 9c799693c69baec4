"""Agent benchmark: N executions of one agent task (a tool call, then a structured answer) against
the stand-in LLM endpoint of the tests, all at once.

    make bench-agents                             # 20 executions
    .venv/bin/python hack/bench/agents.py --executions 50 --llm-latency 0.2

Prints (asserts nothing; machines here are shared and noisy), from the events in COMPOZY_STATE:
- agent runtime start: TaskExecutionStarted -> AgentExecutionStarted (SDK import, client), p50/p99;
- the agent loop: AgentExecutionStarted -> AgentExecutionSuccess (2 model calls + 1 tool call);
- attempt overhead: TaskDispatched -> TaskExecutionSuccess minus the loop;
- agent tasks/s end to end, and operator RSS at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from datetime import datetime

import nats

from compozy_operator.testenv import DevEnvironment

from common import NS, apply, percentile, prepare, rss_mib
from tests.fakellm import FakeLLM, Request, Response, openai_reply  # the stand-in endpoint

COUNT = "def run(input, ctx):\n    return {'words': len(input['text'].split())}\n"


def workflow(url: str) -> dict:
    return {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "agent", "namespace": NS},
            "spec": {
                "tools": [{"id": "word-count", "python": COUNT, "inputSchema": {"type": "object"}}],
                "agents": [{"id": "writer", "model": {"name": "bench", "baseURL": url}, "tools": ["word-count"],
                            "actions": [{"id": "go", "prompt": "Count: {{ input.text }}", "outputSchema": {
                                "type": "object", "required": ["words"]}}]}],
                "tasks": [{"id": "go", "agent": "writer", "action": "go", "with": {"text": "a b c"}}]}}


def scripted(latency: float):
    """Replies by conversation state: a tool call first, then the answer with the tool's count."""
    def reply(request: Request) -> Response:
        time.sleep(latency)
        results = [m for m in request.body["messages"] if m["role"] == "tool"]
        if not results:
            return openai_reply(tool_calls=[("word-count", {"text": "a b c"})])
        return openai_reply(json.dumps({"words": json.loads(results[0]["content"])["words"]}))
    return reply


def stream_events(env: DevEnvironment) -> list[dict]:
    async def read() -> list[dict]:
        nc = await nats.connect(env.nats.url, token=env.nats.token)
        sub = await nc.jetstream().pull_subscribe(f"compozy.state.{NS}.>", stream="COMPOZY_STATE")
        out: list[dict] = []
        while True:
            try:
                out += [json.loads(m.data) for m in await sub.fetch(1000, timeout=1)]
            except asyncio.TimeoutError:
                break
        await nc.close()
        return out
    return asyncio.run(read())


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=20)
    parser.add_argument("--llm-latency", type=float, default=0.0, help="seconds the stand-in waits per reply")
    args = parser.parse_args()
    llm = FakeLLM()
    llm.add(*[scripted(args.llm_latency)] * (2 * args.executions))
    with DevEnvironment.start() as env:
        kubectl, op = prepare(env)
        apply(kubectl, workflow(llm.url))
        kube = env.kube()
        t0 = time.time()
        for i in range(args.executions):
            kube.create(f"/apis/compozy.dev/v1alpha1/namespaces/{NS}/workflowexecutions", {
                "apiVersion": "compozy.dev/v1alpha1", "kind": "WorkflowExecution",
                "metadata": {"name": f"run-{i}"}, "spec": {"workflowRef": {"name": "agent"}}})
        deadline = time.time() + 120 + args.executions * 5
        phases: list[str] = []
        while time.time() < deadline:
            items = kube.get(f"/apis/compozy.dev/v1alpha1/namespaces/{NS}/workflowexecutions")["items"]
            phases = [(o.get("status") or {}).get("phase", "Pending") for o in items]
            if all(p in ("Succeeded", "Failed") for p in phases):
                break
            time.sleep(0.5)
        wall = time.time() - t0
        rss = rss_mib(op.proc.pid) if op.proc else 0.0
        at: dict[tuple[str, str], float] = {}
        for ev in stream_events(env):
            at[(ev["data"]["execution"], ev["type"])] = epoch(ev["time"])
        runs = [f"run-{i}" for i in range(args.executions)]

        def span(a: str, b: str) -> list[float]:
            return [at[(r, b)] - at[(r, a)] for r in runs if (r, a) in at and (r, b) in at]

        start = span("TaskExecutionStarted", "AgentExecutionStarted")
        loop = span("AgentExecutionStarted", "AgentExecutionSuccess")
        attempt = span("TaskDispatched", "TaskExecutionSuccess")
        print(f"{args.executions} agent executions (2 model calls + 1 tool call each, stand-in latency "
              f"{args.llm_latency:g}s): {phases.count('Succeeded')} succeeded in {wall:.1f}s "
              f"({args.executions / wall:.2f} agent tasks/s)")
        for label, values in (("agent runtime start (SDK import, client)", start), ("agent loop", loop),
                              ("dispatch -> task success", attempt)):
            if values:
                print(f"{label}: p50 {percentile(values, 50) * 1000:.0f} ms, p99 {percentile(values, 99) * 1000:.0f} ms")
        print(f"model calls answered by the stand-in: {len(llm.requests)}; operator RSS {rss:.0f} MiB")
        op.stop()
    llm.close()


if __name__ == "__main__":
    main()
