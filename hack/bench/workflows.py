"""Workflow benchmark: N executions of M sequential no-op tasks on the local cluster.

    make bench                                   # default: 20 executions x 5 tasks
    .venv/bin/python hack/bench/workflows.py --executions 50 --tasks 10

Prints figures (asserts nothing; machines here are shared and noisy):
- tasks/s end to end (first execution created -> last one finished);
- dispatch latency: a task's TaskExecutionSuccess event (its `time`) -> the next task's pod seen by
  a watch, p50/p99;
- status PATCHes and other operator API writes per task (from the operator's own counters);
- operator RSS at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from datetime import datetime

import nats

from compozy_operator.testenv import DevEnvironment

from common import NS, apply, counter, percentile, prepare, rss_mib

NOOP = "def run(input, ctx):\n    return {'i': input.get('i', 0)}\n"


def workflow(tasks: int) -> dict:
    steps = [{"id": f"t{i}", "tool": "noop", "with": {"i": i},
              **({"onSuccess": {"next": f"t{i + 1}"}} if i < tasks else {})} for i in range(1, tasks + 1)]
    return {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "bench", "namespace": NS},
            "spec": {"tools": [{"id": "noop", "python": NOOP}], "tasks": steps}}


class Observer:
    """Pod creations (watch) and TaskExecutionSuccess events (NATS), with the times they were seen."""

    def __init__(self, env: DevEnvironment) -> None:
        self.env = env
        self.pods: dict[str, float] = {}
        self.success: dict[tuple[str, str], float] = {}  # (execution, task) -> event time (epoch)
        self.stop = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._pods, daemon=True).start()
        threading.Thread(target=lambda: asyncio.run(self._events()), daemon=True).start()
        time.sleep(0.5)

    def _pods(self) -> None:
        try:
            self._watch_pods()
        except Exception:  # noqa: BLE001 - the cluster stops under the watch at the end
            if not self.stop.is_set():
                raise

    def _watch_pods(self) -> None:
        kube = self.env.kube()
        rv = kube.get(f"/api/v1/namespaces/{NS}/pods")["metadata"]["resourceVersion"]
        while not self.stop.is_set():
            for ev in kube.watch(f"/api/v1/namespaces/{NS}/pods", rv, timeout_seconds=30):
                if ev["type"] == "BOOKMARK":
                    continue
                rv = ev["object"]["metadata"]["resourceVersion"]
                if ev["type"] == "ADDED":
                    self.pods.setdefault(ev["object"]["metadata"]["name"], time.time())

    async def _events(self) -> None:
        nc = await nats.connect(self.env.nats.url, token=self.env.nats.token)

        async def on(msg: nats.aio.msg.Msg) -> None:
            ev = json.loads(msg.data)
            t = datetime.fromisoformat(ev["time"].replace("Z", "+00:00")).timestamp()
            self.success[(ev["data"]["execution"], ev["data"]["task"])] = t

        await nc.subscribe(f"compozy.state.{NS}.*.*.*.*.TaskExecutionSuccess", cb=on)  # the attempt's or the operator's
        while not self.stop.is_set():
            await asyncio.sleep(0.1)
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=5)
    args = parser.parse_args()
    n, m = args.executions, args.tasks

    with DevEnvironment.start() as env:
        kubectl, op = prepare(env)
        apply(kubectl, workflow(m))
        obs = Observer(env)
        obs.start()
        before = op.metrics()
        kube = env.kube()
        t0 = time.time()
        for i in range(n):
            kube.create(f"/apis/compozy.dev/v1alpha1/namespaces/{NS}/workflowexecutions", {
                "apiVersion": "compozy.dev/v1alpha1", "kind": "WorkflowExecution",
                "metadata": {"name": f"run-{i}"}, "spec": {"workflowRef": {"name": "bench"}}})
        deadline = time.time() + 60 + n * m * 2
        phases: dict[str, str] = {}
        while time.time() < deadline:
            items = kube.get(f"/apis/compozy.dev/v1alpha1/namespaces/{NS}/workflowexecutions")["items"]
            phases = {x["metadata"]["name"]: (x.get("status") or {}).get("phase", "Pending") for x in items}
            if all(p in ("Succeeded", "Failed") for p in phases.values()) and len(phases) == n:
                break
            time.sleep(0.2)
        elapsed = time.time() - t0
        after = op.metrics()
        rss = rss_mib(op.proc.pid)
        obs.stop.set()

        done = sum(1 for p in phases.values() if p == "Succeeded")
        lat = []
        for i in range(n):
            for k in range(1, m):
                succ = obs.success.get((f"run-{i}", f"t{k}"))
                pod = obs.pods.get(f"run-{i}-t{k + 1}-1")
                if succ and pod:
                    lat.append(pod - succ)
        tasks = done * m
        print(f"{n} executions x {m} sequential no-op tasks: {done} Succeeded, "
              f"{sum(1 for p in phases.values() if p == 'Failed')} Failed, in {elapsed:.1f}s")
        print(f"throughput: {tasks / elapsed:.1f} tasks/s end to end (each task is a pod whose process starts Python)")
        if lat:
            print(f"dispatch latency (success event -> next pod seen by a watch, {len(lat)} samples): "
                  f"p50 {percentile(lat, 50) * 1000:.0f} ms, p99 {percentile(lat, 99) * 1000:.0f} ms")
        patches = counter(after, "compozy_status_patches_total") - counter(before, "compozy_status_patches_total")
        pods = counter(after, "compozy_task_pods_created_total") - counter(before, "compozy_task_pods_created_total")
        print(f"API writes per task: status PATCH {patches / max(tasks, 1):.2f}, pod create {pods / max(tasks, 1):.2f}, "
              f"pod delete ~1 (finished pods are removed)")
        print(f"operator RSS at the end: {rss:.0f} MiB")
        op.stop()


if __name__ == "__main__":
    main()
