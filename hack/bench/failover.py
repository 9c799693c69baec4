"""Failover time with two operator replicas on one Lease: from the leader's end (SIGKILL, or a graceful
SIGTERM that hands the Lease over) to the next task's pod created by the standby, while a run of
many short sequential tasks goes on.

    make bench-failover                  # or: .venv/bin/python hack/bench/failover.py --rounds 3

Prints figures; asserts nothing (machines here are shared and noisy).
"""

from __future__ import annotations

import argparse
import time

from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.operator_process import OperatorProcess

from common import NS, apply, percentile, prepare

OK = "def run(input, ctx):\n    return {}\n"


def task_pods(env: DevEnvironment) -> set[str]:
    kube = env.kube()
    try:
        pods = kube.get(f"/api/v1/namespaces/{NS}/pods", labelSelector="app.kubernetes.io/component=task")
    finally:
        kube.close()
    return {p["metadata"]["name"] for p in pods.get("items") or []}


def replica(env: DevEnvironment, name: str, lease: float) -> OperatorProcess:
    return OperatorProcess(env, log_path=env.workdir / "logs" / f"operator-{name}.log", extra_env={
        "COMPOZY_NAMESPACES": NS, "COMPOZY_POD_NAMESPACE": NS, "COMPOZY_POD_NAME": name,
        "COMPOZY_LEADER_ELECTION": "true", "COMPOZY_LEADER_LEASE": "bench",
        "COMPOZY_LEADER_LEASE_SECONDS": str(lease), "COMPOZY_LEADER_RENEW_DEADLINE_SECONDS": str(lease * 2 / 3),
        "COMPOZY_LEADER_RETRY_SECONDS": "2", "COMPOZY_DELETE_FINISHED_PODS": "false"})


def holder(env: DevEnvironment) -> str:
    kube = env.kube()
    try:
        return str(kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/bench")["spec"].get("holderIdentity")
                   or "")
    finally:
        kube.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="failovers of each kind (default 3)")
    parser.add_argument("--lease", type=float, default=15, help="Lease duration in seconds (the chart's: 15)")
    args = parser.parse_args()
    with DevEnvironment.start() as env:
        kubectl, _ = prepare(env, start_operator=False)
        ops = {n: replica(env, n, args.lease) for n in ("op-a", "op-b")}
        ops["op-a"].start()
        while not holder(env).startswith("op-a_"):
            time.sleep(0.2)
        ops["op-b"].start()
        tasks = [{"id": f"t{i}", "tool": "ok", **({"onSuccess": {"next": f"t{i + 1}"}} if i < 199 else {})}
                 for i in range(200)]
        apply(kubectl, {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "chain"},
                        "spec": {"tools": [{"id": "ok", "python": OK}], "tasks": tasks}})
        apply(kubectl, {"apiVersion": "compozy.dev/v1alpha1", "kind": "WorkflowExecution",
                        "metadata": {"name": "chain-1"}, "spec": {"workflowRef": {"name": "chain"}}})
        figures: dict[str, list[float]] = {"SIGKILL": [], "SIGTERM (Lease handed over)": []}
        for round_ in range(args.rounds * 2):
            kind = list(figures)[round_ % 2]
            while len(task_pods(env)) < 3 * (round_ + 1):  # the run goes on under the current leader
                time.sleep(0.2)
            leader = next(n for n in ops if holder(env).startswith(f"{n}_"))
            seen = task_pods(env)
            started = time.monotonic()
            ops[leader].kill() if kind == "SIGKILL" else ops[leader].stop()
            while not task_pods(env) - seen:
                time.sleep(0.05)
            figures[kind].append(time.monotonic() - started)
            print(f"round {round_ + 1}: {kind} of {leader}: next task pod after {figures[kind][-1]:.2f}s", flush=True)
            ops[leader] = replica(env, leader, args.lease)
            ops[leader].start(timeout=120)  # back as the standby
        print(f"\nfailover, leader's end -> next task pod created (Lease {args.lease:.0f}s, retry 2s, "
              f"{args.rounds} rounds each):")
        for kind, values in figures.items():
            print(f"  {kind:28s} p50 {percentile(values, 50):6.2f}s  max {max(values):6.2f}s")
        for op in ops.values():
            op.stop()


if __name__ == "__main__":
    main()
