"""Warm runner pools beside a pod per attempt, and the raw limits of the same cluster, in one run
(issue 15's figures).

    make bench-pool
    .venv/bin/python hack/bench/pool.py --executions 200 --tasks 5 --pod-tasks 2 --light 10 --agents 100 --active 1000

Prints a table (asserts nothing; the machine's cores are shared with whatever else runs):
* raw limits: bare pods (``python3 -c pass``) completed/s, JetStream publish+ack/s;
* one run of an N-item collection of a no-op python tool on the pool: tasks/s and API writes per task;
* E executions of sequential no-op python tasks started at once (2 each with a pod per attempt, 5
  each pooled; pooled also with L executions, where no attempt waits for a slot): tasks/s (first
  create -> last run ended), dispatch latency (a task's TaskExecutionSuccess -> the next task's
  TaskExecutionStarted, both events' own times; and -> its TaskDispatched, the operator's share),
  operator CPU-s and API writes per task, and where a pooled attempt's time goes (its events);
* agent tasks on the pool (2 model calls and a tool call each, against the tests' stand-in endpoint
  answering at once), L/2 and then A at once: agent tasks/s and the overhead, dispatch -> success;
* operator RSS with N active executions (each one pooled task waiting in its queue).
See docs/pools.md and docs/performance.md for what the figures mean.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import nats

from compozy_operator.testenv import DevEnvironment, Kube

from common import NS, apply, percentile, prepare, rss_mib, samples
from tests.fakellm import FakeLLM, Request, Response, openai_reply  # the stand-in endpoint
from workflows import CpuMeter, bare_pods, jetstream_rate

NOOP = "def run(input, ctx):\n    return {'i': input.get('i')}\n"
COUNT = "def run(input, ctx):\n    return {'words': len(input['text'].split())}\n"
API = f"/apis/compozy.dev/v1alpha1/namespaces/{NS}"
ENDED = ("Succeeded", "Failed", "TimedOut", "Cancelled")


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class Events:
    """Every state event of the namespace with a task, by (execution, task) and type: its own time."""

    def __init__(self, url: str, token: str) -> None:
        self.times: dict[tuple[str, str], dict[str, float]] = {}
        ready = threading.Event()
        threading.Thread(target=lambda: asyncio.run(self._run(url, token, ready)), daemon=True).start()
        ready.wait(10)

    async def _run(self, url: str, token: str, ready: threading.Event) -> None:
        async def quiet(_: Exception) -> None:  # the cluster stops under it at the end
            pass
        nc = await nats.connect(url, token=token, error_cb=quiet, max_reconnect_attempts=0)

        async def on(msg: Any) -> None:
            ev = json.loads(msg.data)
            d = ev["data"]
            if d.get("task") is not None and "call" not in d:  # an agent's tool calls have Tool* events too
                self.times.setdefault((d["execution"], d["task"]), {}).setdefault(ev["type"], epoch(ev["time"]))
        await nc.subscribe(f"compozy.state.{NS}.>", cb=on)
        ready.set()
        await asyncio.Event().wait()

    def spans(self, runs: set[str], start: str, end: str) -> list[float]:
        return [t[end] - t[start] for (e, _), t in list(self.times.items()) if e in runs and start in t and end in t]

    def hops(self, runs: set[str], tasks: int, end: str, first: int = 1) -> list[float]:
        """Task i's TaskExecutionSuccess -> task i+1's ``end`` event, in each run, from task ``first`` on."""
        out = []
        for run in runs:
            for i in range(first, tasks):
                a, b = self.times.get((run, f"t{i}"), {}), self.times.get((run, f"t{i + 1}"), {})
                if "TaskExecutionSuccess" in a and end in b:
                    out.append(b[end] - a["TaskExecutionSuccess"])
        return out


def create_all(kube: Kube, names: list[str], spec: Callable[[str], dict[str, Any]]) -> None:
    """Create the executions at once (8 clients in parallel)."""
    def one(name: str) -> None:
        kube.create(f"{API}/workflowexecutions", {"apiVersion": "compozy.dev/v1alpha1", "kind": "WorkflowExecution",
                                                  "metadata": {"name": name}, "spec": spec(name)})
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, names))


def phases(kube: Kube, prefix: str) -> dict[str, str]:
    return {x["metadata"]["name"]: (x.get("status") or {}).get("phase", "Pending")
            for x in kube.get(f"{API}/workflowexecutions")["items"] if x["metadata"]["name"].startswith(prefix)}


def wait_until(kube: Kube, prefix: str, count: int, done: tuple[str, ...], timeout: float) -> dict[str, str]:
    deadline, seen = time.time() + timeout, {}
    while time.time() < deadline:
        seen = phases(kube, prefix)
        if len(seen) == count and all(p in done for p in seen.values()):
            break
        time.sleep(0.25)
    return seen


def chain(name: str, tasks: int, pool: str | None) -> dict[str, Any]:
    steps = [{"id": f"t{i}", "tool": "noop", "with": {"i": i}, **({"onSuccess": {"next": f"t{i + 1}"}} if i < tasks
                                                                  else {})} for i in range(1, tasks + 1)]
    return {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": name},
            "spec": {"tools": [{"id": "noop", "python": NOOP, **({"pool": pool} if pool else {})}], "tasks": steps}}


def agent_workflow(url: str, pool: str) -> dict[str, Any]:
    agent = {"id": "writer", "pool": pool, "model": {"name": "bench", "baseURL": url}, "tools": ["word-count"],
             "actions": [{"id": "go", "prompt": "Count: {{ input.text }}",
                          "outputSchema": {"type": "object", "required": ["words"]}}]}
    return {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "agent"},
            "spec": {"tools": [{"id": "word-count", "python": COUNT, "inputSchema": {"type": "object"}}],
                     "agents": [agent], "tasks": [{"id": "t1", "agent": "writer", "action": "go",
                                                   "with": {"text": "a b c"}}]}}


def instant(request: Request) -> Response:
    """The stand-in's reply by the conversation's state: a tool call first, then the answer."""
    results = [m for m in request.body["messages"] if m["role"] == "tool"]
    if not results:
        return openai_reply(tool_calls=[("word-count", {"text": "a b c"})])
    return openai_reply(json.dumps({"words": json.loads(results[0]["content"])["words"]}))


def writes(before: str, after: str) -> dict[str, float]:
    b = samples(before, "compozy_api_writes_total")
    return {k.split("=", 1)[1].strip('"'): v - b.get(k, 0) for k, v in samples(after, "compozy_api_writes_total").items()
            if v - b.get(k, 0)}


def ms(values: list[float], p: float) -> str:
    return f"{percentile(values, p) * 1000:.0f} ms" if values else "-"


class Bench:
    def __init__(self, env: DevEnvironment) -> None:
        self.env = env
        self.kubectl, self.op = prepare(env)
        self.kube = env.kube()
        self.events = Events(env.nats.url, env.nats.token)
        self.meter = CpuMeter(env, self.op.proc.pid)
        self.rows: list[tuple[str, str, str]] = []  # figure, measured, budget

    def row(self, figure: str, value: str, budget: str = "") -> None:
        self.rows.append((figure, value, budget))
        print(f"  {figure}: {value}" + (f"  (budget {budget})" if budget else ""), flush=True)

    def chains(self, label: str, pool: str | None, t: int, e: int) -> float:
        """``e`` executions of ``t`` no-op tasks at once; returns tasks/s."""
        name = f"chain-{label}"
        apply(self.kubectl, chain(name, t, pool))
        runs = [f"{label}-{i}" for i in range(e)]
        before = self.op.metrics()
        self.meter.start()
        t0 = time.time()
        create_all(self.kube, runs, lambda _: {"workflowRef": {"name": name}})
        seen = wait_until(self.kube, f"{label}-", e, ENDED, 120 + e * t)
        elapsed = time.time() - t0
        cpu = self.meter.stop()
        after = self.op.metrics()
        ok = sum(1 for p in seen.values() if p == "Succeeded")
        done = max(1, ok * t)
        rate = ok * t / elapsed
        w = writes(before, after)
        per_task = {k: v / done for k, v in w.items() if k in ("create.pods", "delete.pods",
                                                               "patch.workflowexecutions.status")}
        names = set(runs)
        started = self.events.hops(names, t, "TaskExecutionStarted")
        dispatched = self.events.hops(names, t, "TaskDispatched")
        print(f"{label}: {e} executions x {t} no-op tasks: {ok} Succeeded in {elapsed:.1f}s", flush=True)
        self.row(f"{label} tasks/s ({e} x {t} at once)", f"{rate:.1f}", ">= 100" if pool and e > 10 else "")
        self.row(f"{label} dispatch latency p50 / p99 (success -> next TaskExecutionStarted, {len(started)} hops)",
                 f"{ms(started, 50)} / {ms(started, 99)}", "p50 <= 20 ms, p99 <= 100 ms" if pool and e > 10 else "")
        self.row(f"{label} of it the operator's: success -> next TaskDispatched p50 / p99",
                 f"{ms(dispatched, 50)} / {ms(dispatched, 99)}", "p50 <= 50 ms, p99 <= 250 ms")
        if t > 2:  # the first hop of every run falls in the burst of their starts
            steady = self.events.hops(names, t, "TaskExecutionStarted", first=2)
            self.row(f"{label} the same after each run's first hop p50 / p99", f"{ms(steady, 50)} / {ms(steady, 99)}")
        self.row(f"{label} operator CPU-s per task", f"{cpu['operator'] / done:.4f}")
        self.row(f"{label} CPU-s per task, all processes", f"{sum(cpu.values()) / done:.3f} = " + ", ".join(
            f"{k} {v / done:.3f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v / done >= 0.0005))
        self.row(f"{label} API writes per task (run's own apart)",
                 f"{sum(per_task.values()):.2f} = " + ", ".join(f"{k} {v:.2f}" for k, v in per_task.items()),
                 "<= 1" if pool else "<= 3")
        if pool:
            for a, b in (("TaskDispatched", "TaskExecutionStarted"), ("TaskExecutionStarted", "ToolExecutionStarted"),
                         ("ToolExecutionStarted", "ToolExecutionSuccess"),
                         ("ToolExecutionSuccess", "TaskExecutionSuccess")):
                spans = self.events.spans(names, a, b)
                self.row(f"{label} {a} -> {b} p50 / p99", f"{ms(spans, 50)} / {ms(spans, 99)}")
        return rate

    def collection(self, items: int, pool: str) -> None:
        """One run of an ``items``-item collection of the no-op tool: the pool's rate where a run's own
        costs (its start, its status) are shared by many tasks."""
        spec = {"tools": [{"id": "noop", "python": NOOP, "pool": pool}],
                "tasks": [{"id": "each", "type": "collection", "items": list(range(items)),
                           "task": {"id": "one", "tool": "noop", "with": {"i": "{{ item }}"}}}]}
        before = self.op.metrics()
        create_all(self.kube, ["wide"], lambda _: {"workflow": spec})
        wait_until(self.kube, "wide", 1, ENDED, 60 + items)
        st = self.kube.get(f"{API}/workflowexecutions/wide").get("status") or {}
        each = (st.get("tasks") or {}).get("each") or {}
        w = writes(before, self.op.metrics())
        if st.get("phase") == "Succeeded" and each.get("finishedAt"):
            rate = items / (epoch(each["finishedAt"]) - epoch(st["startedAt"]))
            self.row(f"pooled tasks/s, one {items}-item collection", f"{rate:.1f}", ">= 100")
            self.row("  API writes per task there", f"{sum(w.values()) / items:.2f}", "<= 1")
        else:
            self.row(f"pooled tasks/s, one {items}-item collection", st.get("phase", "unfinished"))

    def agents(self, pool: str, n: int, label: str) -> None:
        llm = FakeLLM()
        llm.add(*[instant] * (2 * n))
        try:
            apply(self.kubectl, agent_workflow(llm.url, pool))
            runs = [f"{label}-{i}" for i in range(n)]
            t0 = time.time()
            create_all(self.kube, runs, lambda _: {"workflowRef": {"name": "agent"}})
            seen = wait_until(self.kube, f"{label}-", n, ENDED, 120 + n)
            elapsed = time.time() - t0
        finally:
            llm.close()
        ok = sum(1 for p in seen.values() if p == "Succeeded")
        names = set(runs)
        overhead = self.events.spans(names, "TaskDispatched", "TaskExecutionSuccess")
        print(f"{label}: {n} executions of one agent task (2 model calls + 1 tool call): {ok} Succeeded in "
              f"{elapsed:.1f}s; {len(llm.requests)} model calls", flush=True)
        self.row(f"{label} pooled agent tasks/s ({n} at once)", f"{ok / elapsed:.1f}")
        self.row(f"{label} pooled agent task overhead p50 / p99 (TaskDispatched -> TaskExecutionSuccess)",
                 f"{ms(overhead, 50)} / {ms(overhead, 99)}", "p50 <= 50 ms")
        for a, b in (("TaskDispatched", "TaskExecutionStarted"), ("TaskExecutionStarted", "AgentExecutionStarted"),
                     ("AgentExecutionStarted", "AgentExecutionSuccess"), ("AgentExecutionSuccess", "TaskExecutionSuccess")):
            spans = self.events.spans(names, a, b)
            self.row(f"{label} {a} -> {b} p50", ms(spans, 50))

    def active(self, n: int) -> None:
        """N executions, each with one pooled task waiting in the queue of a pool that does not
        exist: all Running at once."""
        apply(self.kubectl, chain("waits", 1, "absent"))
        runs = [f"active-{i}" for i in range(n)]
        t0 = time.time()
        create_all(self.kube, runs, lambda _: {"workflowRef": {"name": "waits"}})
        seen = wait_until(self.kube, "active-", n, ("Running",), 120 + n / 5)
        running = sum(1 for p in seen.values() if p == "Running")
        print(f"active: {running} of {n} executions Running after {time.time() - t0:.1f}s", flush=True)
        self.row(f"operator RSS with {running} active executions", f"{rss_mib(self.op.proc.pid):.0f} MiB", "<= 250 MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=200, help="executions started at once, pods and pooled")
    parser.add_argument("--tasks", type=int, default=5, help="sequential no-op tasks per pooled execution")
    parser.add_argument("--pod-tasks", type=int, default=2, help="sequential no-op tasks per execution with pods")
    parser.add_argument("--items", type=int, default=400, help="items of the pooled collection")
    parser.add_argument("--light", type=int, default=10, help="executions of the pooled figures without a queue")
    parser.add_argument("--agents", type=int, default=100, help="agent executions on the pool, started at once")
    parser.add_argument("--active", type=int, default=1000, help="active executions of the RSS figure")
    parser.add_argument("--bare-pods", type=int, default=100, help="pods of the bare-pod completion rate")
    parser.add_argument("--publishes", type=int, default=2000, help="JetStream publishes of the publish+ack rate")
    parser.add_argument("--replicas", type=int, default=2, help="runners of the pool")
    parser.add_argument("--concurrency", type=int, default=32, help="attempts per runner")
    parser.add_argument("--skip-pods", action="store_true", help="leave out the pod-per-attempt run (the longest)")
    args = parser.parse_args()

    t_start = time.time()
    with DevEnvironment.start() as env:
        b = Bench(env)
        bare_rate, bare_done = bare_pods(b.kube, args.bare_pods)
        b.kubectl.ok("delete", "pods", "-n", NS, "-l", "bench=bare", "--wait=true")
        serial, pipelined = asyncio.run(jetstream_rate(env.nats.url, env.nats.token, args.publishes))
        print("raw limits:", flush=True)
        b.row(f"bare pods completed/s ({bare_done} python3 -c pass at once)", f"{bare_rate:.1f}")
        b.row("JetStream publish+ack/s, one at a time / 64 in flight", f"{serial:.0f} / {pipelined:.0f}")

        apply(b.kubectl, {"apiVersion": "compozy.dev/v1alpha1", "kind": "RunnerPool", "metadata": {"name": "warm"},
                          "spec": {"concurrency": args.concurrency, "minReplicas": args.replicas,
                                   "maxReplicas": args.replicas}})
        if not args.skip_pods:
            pod_rate = b.chains("pods", None, args.pod_tasks, args.executions)
            b.row("per-pod tasks/s / bare-pod rate", f"{pod_rate / bare_rate * 100 if bare_rate else 0:.0f}%", ">= 60%")
            deadline = time.time() + 120  # the pooled figures start once the last task pod is deleted
            while time.time() < deadline and b.kube.get(f"/api/v1/namespaces/{NS}/pods",
                                                        labelSelector="app.kubernetes.io/component=task")["items"]:
                time.sleep(1)
        while len([p for p in b.kube.get(f"/api/v1/namespaces/{NS}/pods",
                                         labelSelector="app.kubernetes.io/component=runner")["items"]
                   if (p.get("status") or {}).get("phase") == "Running"]) < args.replicas:
            time.sleep(0.5)
        create_all(b.kube, ["warm-up"], lambda _: {"workflow": chain("x", 1, "warm")["spec"]})
        wait_until(b.kube, "warm-up", 1, ENDED, 60)
        if args.items:
            b.collection(args.items, "warm")
        # a few at once first (the pool's own latency, no queue), then all at once
        b.chains("light", "warm", args.tasks, args.light)
        b.agents("warm", max(1, args.light // 2), "few-agents")  # (no label may start with another's + "-")
        b.chains("pooled", "warm", args.tasks, args.executions)
        if args.agents:
            b.agents("warm", args.agents, "agents")
        if args.active:
            b.active(args.active)
        b.op.stop()

    print(f"\nissue 15 figures ({args.replicas} runners x {args.concurrency} slots; bench took "
          f"{time.time() - t_start:.0f}s):")
    width = max(len(f) for f, _, _ in b.rows)
    print(f"| {'figure':{width}} | measured | budget |")
    print(f"|{'-' * (width + 2)}|---|---|")
    for figure, value, budget in b.rows:
        print(f"| {figure:{width}} | {value} | {budget} |")


if __name__ == "__main__":
    main()
