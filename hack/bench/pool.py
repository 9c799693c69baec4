"""Warm runner pool benchmark: pooled attempts beside a pod per attempt, on the local cluster.

    make bench-pool
    .venv/bin/python hack/bench/pool.py --items 400 --runs 200 --pod-items 40

Prints (asserts nothing):
* throughput: one run of an N-item collection of a trivial tool, tasks/s from the run's start to
  the collection's end, pooled and with a pod per attempt;
* dispatch latency at C concurrent executions (one pooled task each, started together): from an
  attempt's TaskDispatched to its TaskExecutionStarted (the forked process has fetched, checked
  and claimed its command), p50/p99, and the same for pods;
* task overhead: TaskDispatched to TaskExecutionSuccess of the trivial tool, p50;
* API writes per task (the operator's ``compozy_api_writes_total``) and pods created per task.
The machine's cores are shared with whatever else runs: read the figures as such.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
import time
from datetime import datetime
from typing import Any

import nats

from compozy_operator.testenv import DevEnvironment

from common import NS, apply, percentile, prepare, samples

NOOP = "def run(input, ctx):\n    return {'i': input.get('i')}\n"
API = f"/apis/compozy.dev/v1alpha1/namespaces/{NS}/workflowexecutions"


def epoch(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class Events:
    """Every state event of the namespace, by (execution, task, attempt) and type, with its time."""

    def __init__(self, url: str, token: str) -> None:
        self.times: dict[tuple[str, str, int], dict[str, float]] = {}
        self.ready = threading.Event()
        threading.Thread(target=lambda: asyncio.run(self._run(url, token)), daemon=True).start()
        self.ready.wait(10)

    async def _run(self, url: str, token: str) -> None:
        async def quiet(_: Exception) -> None:  # the cluster stops under it at the end
            pass
        nc = await nats.connect(url, token=token, error_cb=quiet, max_reconnect_attempts=0)

        async def on(msg: Any) -> None:
            ev = json.loads(msg.data)
            d = ev["data"]
            if d.get("task") is not None:
                self.times.setdefault((d["execution"], d["task"], d["attempt"]), {})[ev["type"]] = epoch(ev["time"])
        await nc.subscribe(f"compozy.state.{NS}.>", cb=on)
        self.ready.set()
        await asyncio.Event().wait()

    def spans(self, executions: set[str], start: str, end: str) -> list[float]:
        return [t[end] - t[start] for (e, _, _), t in list(self.times.items()) if e in executions and start in t
                and end in t]


def wait_done(kube: Any, names: list[str], timeout: float) -> dict[str, dict]:
    deadline, done = time.time() + timeout, {}
    while time.time() < deadline and len(done) < len(names):
        for item in kube.get(API)["items"]:
            st = item.get("status") or {}
            if item["metadata"]["name"] in names and st.get("phase") in ("Succeeded", "Failed", "TimedOut"):
                done[item["metadata"]["name"]] = st
        time.sleep(0.5)
    return done


def collection(kube: Any, name: str, items: int, pool: str | None) -> tuple[float, str]:
    tool = {"id": "noop", "python": NOOP, **({"pool": pool} if pool else {})}
    spec = {"tools": [tool], "tasks": [{"id": "each", "type": "collection", "items": list(range(items)),
                                        "task": {"id": "one", "tool": "noop", "with": {"i": "{{ item }}"}}}]}
    kube.create(API, {"apiVersion": "compozy.dev/v1alpha1", "kind": "WorkflowExecution", "metadata": {"name": name},
                      "spec": {"workflow": spec}})
    st = wait_done(kube, [name], 60 + items * 2).get(name, {})
    each = (st.get("tasks") or {}).get("each") or {}
    if st.get("phase") != "Succeeded" or not each.get("finishedAt"):
        return 0.0, st.get("phase", "unfinished")
    return items / (epoch(each["finishedAt"]) - epoch(st["startedAt"])), "Succeeded"


def fan_out(kube: Any, prefix: str, runs: int, pool: str | None) -> list[str]:
    tool = {"id": "noop", "python": NOOP, **({"pool": pool} if pool else {})}
    kube.create(f"/apis/compozy.dev/v1alpha1/namespaces/{NS}/workflows", {
        "apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": prefix},
        "spec": {"tools": [tool], "tasks": [{"id": "one", "tool": "noop", "with": {"i": 1}}]}})
    names = [f"{prefix}-{i}" for i in range(runs)]
    threads = [threading.Thread(target=kube.create, args=(API, {
        "apiVersion": "compozy.dev/v1alpha1", "kind": "WorkflowExecution", "metadata": {"name": n},
        "spec": {"workflowRef": {"name": prefix}}})) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_done(kube, names, 120 + runs)
    return names


def total(text: str, name: str) -> float:
    """A counter's sum over its label sets (or its one value, without labels)."""
    plain = re.findall(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return sum(samples(text, name).values()) + sum(float(v) for v in plain)


def ms(values: list[float], p: float) -> str:
    return f"{percentile(values, p) * 1000:.0f} ms" if values else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=400, help="items of the pooled collection")
    parser.add_argument("--pod-items", type=int, default=40, help="items of the collection run as pods")
    parser.add_argument("--runs", type=int, default=200, help="concurrent executions for the latency figures")
    parser.add_argument("--pod-runs", type=int, default=30, help="concurrent executions run as pods")
    parser.add_argument("--replicas", type=int, default=2, help="runners of the pool")
    parser.add_argument("--concurrency", type=int, default=16, help="attempts per runner")
    args = parser.parse_args()

    with DevEnvironment.start() as env:
        kubectl, op = prepare(env)
        kube = env.kube()
        events = Events(env.nats.url, env.nats.token)
        apply(kubectl, {"apiVersion": "compozy.dev/v1alpha1", "kind": "RunnerPool", "metadata": {"name": "warm"},
                        "spec": {"concurrency": args.concurrency, "minReplicas": args.replicas,
                                 "maxReplicas": args.replicas}})
        while len([p for p in kube.get(f"/api/v1/namespaces/{NS}/pods")["items"]
                   if (p.get("status") or {}).get("phase") == "Running"]) < args.replicas:
            time.sleep(0.5)
        collection(kube, "warm-up", args.replicas * args.concurrency, "warm")  # forks once per runner first

        before = op.metrics()
        pooled_rate, phase = collection(kube, "pooled", args.items, "warm")
        after = op.metrics()
        writes = total(after, "compozy_api_writes_total") - total(before, "compozy_api_writes_total")
        print(f"pooled: {args.items}-item collection {phase}: {pooled_rate:.1f} tasks/s "
              f"({args.replicas} runners x {args.concurrency}); {writes / max(1, args.items):.2f} API writes per task")
        pod_rate, phase = collection(kube, "pods", args.pod_items, None)
        print(f"pods:   {args.pod_items}-item collection {phase}: {pod_rate:.1f} tasks/s")

        for label, runs, pool in (("pooled", args.runs, "warm"), ("pods", args.pod_runs, None)):
            before = op.metrics()
            names = set(fan_out(kube, f"fan-{label}", runs, pool))
            after = op.metrics()
            dispatch = events.spans(names, "TaskDispatched", "TaskExecutionStarted")
            overhead = events.spans(names, "TaskDispatched", "TaskExecutionSuccess")
            pods = total(after, "compozy_task_pods_created_total") - total(before, "compozy_task_pods_created_total")
            writes = total(after, "compozy_api_writes_total") - total(before, "compozy_api_writes_total")
            print(f"{label}: {runs} concurrent executions: dispatch -> started p50 {ms(dispatch, 50)}, "
                  f"p99 {ms(dispatch, 99)}; dispatch -> succeeded p50 {ms(overhead, 50)}; "
                  f"{pods / max(1, runs):.2f} pods created and {writes / max(1, runs):.2f} API writes per task "
                  f"(the run's start included; {len(dispatch)} attempts measured)")
        op.stop()


if __name__ == "__main__":
    main()
