"""Workflow benchmark: N executions of M sequential no-op tasks on the local cluster, beside the
raw limits of the same cluster measured in the same run.

    make bench                                   # default: 20 executions x 5 tasks
    .venv/bin/python hack/bench/workflows.py --executions 50 --tasks 10

Prints figures side by side (asserts nothing; machines here are shared and noisy):
- raw limits: bare pods (``python3 -c pass``) completed per second on the process node, and
  JetStream publish+ack per second (one at a time, and 64 in flight);
- a task pod's own start: CPU of ``compozy task run`` to its first NATS request and of a whole
  no-op attempt, beside ``python3 -c pass`` (hack/bench/runner.py);
- tasks/s end to end (first execution created -> last one finished), and its ratio to the bare-pod
  rate (budget: >= 60%);
- dispatch latency: a task's TaskExecutionSuccess event (its `time`) -> the next task's pod seen by
  a watch, p50/p99;
- Kubernetes API writes per task, by kind (the operator's ``compozy_api_writes_total``; budget:
  <= 3), and status PATCHes per task;
- where the CPU goes: seconds per task of each process (task pods, process node, operator, API
  server, etcd, NATS, ...), and operator RSS at the end.
See docs/performance.md for what the figures mean.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import threading
import time
from datetime import datetime

import nats
from nats.js.api import StorageType, StreamConfig

from compozy_operator.testenv import DevEnvironment, Kube
from compozy_operator.testenv.node import DEFAULT_IMAGES

from runner import runner_start, summary

from common import NS, apply, cpu_seconds, own_cpu, percentile, prepare, rss_mib, samples

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


def bare_pods(kube: Kube, count: int) -> tuple[float, int]:
    """``count`` pods running ``python3 -c pass`` created at once on the process node: completions
    per second (first create -> last Succeeded seen by a watch), and how many completed."""
    done: dict[str, float] = {}
    finished = threading.Event()
    rv = kube.get(f"/api/v1/namespaces/{NS}/pods")["metadata"]["resourceVersion"]

    def watch() -> None:
        for ev in kube.watch(f"/api/v1/namespaces/{NS}/pods", rv, timeout_seconds=120, labelSelector="bench=bare"):
            obj = ev.get("object") or {}
            if (obj.get("status") or {}).get("phase") == "Succeeded":
                done.setdefault(obj["metadata"]["name"], time.time())
                if len(done) == count:
                    finished.set()
                    return

    threading.Thread(target=watch, daemon=True).start()
    time.sleep(0.5)
    t0 = time.time()
    for i in range(count):
        kube.create(f"/api/v1/namespaces/{NS}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"bare-{i}", "labels": {"bench": "bare"}},
            "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1, "containers": [
                {"name": "main", "image": f"{DEFAULT_IMAGES[0]}:bench", "command": ["python3", "-c", "pass"]}]}})
    finished.wait(120)
    return (len(done) / (max(done.values()) - t0) if done else 0.0), len(done)


async def jetstream_rate(url: str, token: str, count: int) -> tuple[float, float]:
    """Publishes acknowledged by a file-backed stream per second: one at a time, and 64 in flight
    (512-byte bodies, about a state event's size)."""
    nc = await nats.connect(url, token=token)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="BENCH", subjects=["bench.>"], storage=StorageType.FILE))
    body = b"x" * 512
    t = time.perf_counter()
    for i in range(count):
        await js.publish(f"bench.{i % 100}", body)
    serial = count / (time.perf_counter() - t)
    t = time.perf_counter()
    for start in range(0, count, 64):
        await asyncio.gather(*(js.publish(f"bench.{i % 100}", body) for i in range(start, min(count, start + 64))))
    pipelined = count / (time.perf_counter() - t)
    await js.delete_stream("BENCH")
    await nc.close()
    return serial, pipelined


class CpuMeter:
    """CPU seconds each process of the cluster spent between :meth:`start` and :meth:`stop`; the
    process nodes' containers (task pods) apart from the nodes themselves."""

    def __init__(self, env: DevEnvironment, operator_pid: int) -> None:
        self.env = env
        self.procs = {name: p.pid for name, p in env.cluster.procs.items() if p is not None}
        self.procs.update({name: p.pid for name, p in env.nodes.items()})
        self.procs["nats-server"] = env.nats.proc.pid
        self.procs["operator"] = operator_pid

    def _read(self) -> tuple[dict[str, float], float]:
        return ({name: cpu_seconds(pid) for name, pid in self.procs.items()},
                sum(own_cpu(p.pid) for p in self.env.nodes.values()))

    def start(self) -> None:
        self.before = self._read()

    def stop(self) -> dict[str, float]:
        (after, nodes), (before, nodes0) = self._read(), self.before
        cpu = {name: after[name] - before[name] for name in self.procs}
        trees = sum(cpu.pop(name) for name in self.env.nodes)  # the nodes' trees: their containers, themselves
        return {"pods": trees - (nodes - nodes0), "process node": nodes - nodes0, **cpu}


def cpu_line(cpu: dict[str, float], count: int, what: str, elapsed: float) -> str:
    return (f"CPU seconds per {what}: {sum(cpu.values()) / count:.3f} = " + ", ".join(
        f"{k} {v / count:.3f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]) if v >= 0.0005)
        + f" (all processes: {sum(cpu.values()) / elapsed:.2f} of {os.cpu_count()} cores busy)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=5)
    parser.add_argument("--bare-pods", type=int, default=100, help="pods of the bare-pod completion rate")
    parser.add_argument("--publishes", type=int, default=2000, help="JetStream publishes of the publish+ack rate")
    parser.add_argument("--runner-attempts", type=int, default=10, help="no-op attempts of the runner's start CPU")
    args = parser.parse_args()
    n, m = args.executions, args.tasks

    with DevEnvironment.start() as env:
        kubectl, op = prepare(env)
        kube = env.kube()
        meter = CpuMeter(env, op.proc.pid)
        meter.start()
        t = time.time()
        bare_rate, bare_done = bare_pods(kube, args.bare_pods)
        bare_cpu, bare_elapsed = meter.stop(), time.time() - t
        kubectl.ok("delete", "pods", "-n", NS, "-l", "bench=bare", "--wait=true")
        js_serial, js_pipelined = asyncio.run(jetstream_rate(env.nats.url, env.nats.token, args.publishes))
        runner = asyncio.run(runner_start(env.nats.url, env.nats.token, args.runner_attempts, env.workdir))

        apply(kubectl, workflow(m))
        obs = Observer(env)
        obs.start()
        before = op.metrics()
        meter.start()
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
        cpu = meter.stop()
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
        per = max(tasks, 1)
        rate = tasks / elapsed
        print(f"raw limits: bare pods (python3 -c pass, {bare_done}/{args.bare_pods} created at once) "
              f"{bare_rate:.1f} completed/s; JetStream publish+ack {js_serial:.0f}/s one at a time, "
              f"{js_pipelined:.0f}/s 64 in flight")
        print(f"task runner CPU ({args.runner_attempts} no-op attempts, one at a time): {summary(runner)}")
        print(f"{n} executions x {m} sequential no-op tasks: {done} Succeeded, "
              f"{sum(1 for p in phases.values() if p == 'Failed')} Failed, in {elapsed:.1f}s")
        print(f"throughput: {rate:.1f} tasks/s end to end = {rate / bare_rate * 100 if bare_rate else 0:.0f}% "
              f"of the bare-pod rate (budget >= 60%)")
        if lat:
            print(f"dispatch latency (success event -> next pod seen by a watch, {len(lat)} samples): "
                  f"p50 {percentile(lat, 50) * 1000:.0f} ms, p99 {percentile(lat, 99) * 1000:.0f} ms")
        writes = {k.split("=", 1)[1].strip('"'): v - samples(before, "compozy_api_writes_total").get(k, 0)
                  for k, v in samples(after, "compozy_api_writes_total").items()}
        pod_task = {k: writes.pop(k, 0) for k in ("create.pods", "delete.pods", "patch.workflowexecutions.status")}
        print(f"API writes per pod task: {sum(pod_task.values()) / per:.2f} (budget <= 3) = " +
              ", ".join(f"{k} {v / per:.2f}" for k, v in pod_task.items()) +
              "; and per execution: " + (", ".join(f"{k} {v / max(done, 1):.2f}" for k, v in
                                                    sorted(writes.items(), key=lambda kv: -kv[1]) if v) or "none"))
        print(cpu_line(bare_cpu, max(bare_done, 1), "bare pod", bare_elapsed))
        print(cpu_line(cpu, per, "task", elapsed))
        print(f"operator: {cpu['operator'] / per:.3f} CPU-s per task, RSS at the end {rss:.0f} MiB")
        op.stop()


if __name__ == "__main__":
    main()
