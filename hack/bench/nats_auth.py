"""What the NATS auth callout adds to a task pod's start: connect time through the callout (TokenReview
and a pod GET per connect) beside a configured user's and a plain shared token's, on one local cluster.

    make bench-nats-auth                 # or: .venv/bin/python hack/bench/nats_auth.py --rounds 50

Prints figures; asserts nothing (machines here are shared and noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time
import uuid

import nats

from compozy_operator.nats_auth.callout import CalloutConfig, CalloutService
from compozy_operator.nats_auth.keys import SYSTEM_USER
from compozy_operator.pods import task_pod
from compozy_operator.resources.models import API_VERSION
from compozy_operator.settings import Settings
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.natsserver import NatsServer
from compozy_operator.testenv.node.volumes import service_account_token
from compozy_operator.testenv.workdir import repo_root

from common import percentile


async def timed(url: str, token: str | None, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        nc = await nats.connect(url, token=token, allow_reconnect=False, connect_timeout=5)
        await nc.flush()
        times.append(time.perf_counter() - started)
        await nc.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    env = DevEnvironment.start()
    server = NatsServer(env.bindir, env.workdir / "callout-nats", callout=True).start()
    auth = server.callout
    assert auth is not None
    kube = env.kube()
    try:
        root = repo_root()
        assert root is not None
        subprocess.run([str(env.bindir / "kubectl"), "--kubeconfig", str(env.kubeconfig), "apply", "-f",
                        str(root / "crds")], check=True, stdout=subprocess.DEVNULL)
        ns = f"bench-{uuid.uuid4().hex[:5]}"
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        env.cluster.wait_default_service_account(ns)
        execution = kube.create(f"/apis/{API_VERSION}/namespaces/{ns}/workflowexecutions", {
            "apiVersion": API_VERSION, "kind": "WorkflowExecution", "metadata": {"name": "run"},
            "spec": {"workflowRef": {"name": "absent"}, "cancel": True}})
        pod = task_pod(Settings(), execution, "t", 1, nonce="n")
        pod["spec"]["nodeSelector"] = {"compozy.dev/bench-never-scheduled": "true"}
        pod = kube.create(f"/api/v1/namespaces/{ns}/pods", pod)
        token = service_account_token(kube, pod, "compozy-nats", 600)

        async def run() -> dict[str, list[float]]:
            service = await CalloutService(CalloutConfig(
                server.url, auth.issuer_seed, auth.account, user=auth.callout_user, password=auth.callout_password,
                system_user=SYSTEM_USER, system_password=auth.keys.system_password), kube).start()
            try:
                return {"plain shared token (token mode)": await timed(env.nats.url, env.nats.token, args.rounds),
                        "configured user (the operator)": await timed(server.operator_url, None, args.rounds),
                        "task pod through the callout": await timed(server.url, token, args.rounds)}
            finally:
                await service.stop()

        results = asyncio.run(run())
    finally:
        kube.close()
        server.stop()
        env.stop()
    print(f"\nNATS connect + first flush, {args.rounds} rounds each (ms):")
    for what, times in results.items():
        ms = [t * 1000 for t in times]
        print(f"  {what:34s} p50 {percentile(ms, 50):6.1f}   p99 {percentile(ms, 99):6.1f}")
    base = percentile(results["plain shared token (token mode)"], 50)
    callout = percentile(results["task pod through the callout"], 50)
    print(f"added to a task pod's start by the callout: {(callout - base) * 1000:.1f} ms (p50), "
          f"{callout / base:.1f}x the token-mode connect")


if __name__ == "__main__":
    main()
