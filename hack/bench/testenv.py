"""Figures of the local cluster: warm start time, pod creation -> Running, memory.

    make bench-testenv                   # or: .venv/bin/python hack/bench/testenv.py --pods 50
    .venv/bin/python hack/bench/testenv.py --cold-build   # also time a build with an empty Go build cache

Prints figures; asserts nothing (machines here are shared and noisy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import threading
import time

from compozy_operator.testenv import DevEnvironment, Kube
from compozy_operator.testenv.node import DEFAULT_IMAGES
from compozy_operator.testenv.workdir import find_binaries, repo_root

from common import percentile, rss_mib


def cold_build() -> float:
    root = repo_root()
    assert root is not None
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as gocache:
        env = {**os.environ, "COMPOZY_TESTENV_CACHE": cache, "GOCACHE": gocache}
        t = time.monotonic()
        subprocess.run([str(root / "hack/testenv/build.sh")], env=env, check=True, stdout=subprocess.DEVNULL)
        return time.monotonic() - t


def pod_start_latencies(kube: Kube, namespace: str, count: int) -> list[float]:
    created: dict[str, float] = {}
    running: dict[str, float] = {}
    done = threading.Event()
    rv = kube.get(f"/api/v1/namespaces/{namespace}/pods")["metadata"]["resourceVersion"]

    def watch() -> None:
        for ev in kube.watch(f"/api/v1/namespaces/{namespace}/pods", rv, timeout_seconds=300):
            obj = ev["object"]
            name = obj["metadata"].get("name")
            if (obj.get("status") or {}).get("phase") == "Running" and name not in running:
                running[name] = time.monotonic()
                if len(running) == count:
                    done.set()
                    return

    threading.Thread(target=watch, daemon=True).start()
    time.sleep(0.5)  # let the watch open
    for i in range(count):
        name = f"bench-{i}"
        created[name] = time.monotonic()
        kube.create(f"/api/v1/namespaces/{namespace}/pods", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 1, "containers": [
                {"name": "m", "image": f"{DEFAULT_IMAGES[0]}:bench", "command": ["sleep", "600"]}]}})
        time.sleep(0.1)
    done.wait(120)
    return [running[n] - created[n] for n in created if n in running]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--starts", type=int, default=3, help="warm cluster starts to time")
    parser.add_argument("--pods", type=int, default=30, help="pods to create for the start-latency figure")
    parser.add_argument("--cold-build", action="store_true", help="also time a build with empty caches (~8 min)")
    args = parser.parse_args()

    bindir = find_binaries()
    if args.cold_build:
        print(f"cold build (empty Go build cache, modules already downloaded): {cold_build():.0f}s", flush=True)

    starts = []
    for _ in range(args.starts):
        t = time.monotonic()
        env = DevEnvironment.start(bindir=bindir)
        starts.append(time.monotonic() - t)
        env.stop()
    print(f"warm start (control plane + 1 process node + NATS, all Ready): "
          f"median {statistics.median(starts):.1f}s, runs {', '.join(f'{s:.1f}' for s in starts)}", flush=True)

    with DevEnvironment.start(bindir=bindir) as env:
        kube = env.kube()
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
        env.cluster.wait_default_service_account("bench")
        lat = pod_start_latencies(kube, "bench", args.pods)
        print(f"pod create -> Running on the process node ({len(lat)}/{args.pods} pods): "
              f"p50 {percentile(lat, 50) * 1000:.0f} ms, p90 {percentile(lat, 90) * 1000:.0f} ms, "
              f"max {max(lat) * 1000:.0f} ms")
        procs = {**env.cluster.procs, **env.nodes, "nats-server": env.nats.proc}
        rss = {name: rss_mib(p.pid) for name, p in procs.items() if p is not None}
        print("memory (RSS, MiB) with", len(lat), "sleeping pods: " +
              ", ".join(f"{n} {v:.0f}" for n, v in rss.items()) + f"; total {sum(rss.values()):.0f}")
        kube.close()


if __name__ == "__main__":
    main()
