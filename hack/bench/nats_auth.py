"""What the NATS auth callout adds to a task pod's start: connect time through the callout (TokenReview
and a pod GET per connect) beside a configured user's and a plain shared token's, on one local cluster;
and to a pooled attempt's start (its process logs in with its runner pod's token and its queue message:
TokenReview, the pod, the run and the command; docs/pools.md).

    make bench-nats-auth                 # or: .venv/bin/python hack/bench/nats_auth.py --rounds 50

Prints figures; asserts nothing (machines here are shared and noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import time
import uuid
from typing import Any

import nats

from compozy_operator.bus import Bus
from compozy_operator.events import command_subject, pool_attempt_user
from compozy_operator.kube import Kube
from compozy_operator.nats_auth.callout import CalloutConfig, CalloutService
from compozy_operator.nats_auth.keys import SYSTEM_USER
from compozy_operator.pods import task_pod
from compozy_operator.pools import LABEL_POOL, PoolWork, runner_deployment
from compozy_operator.resources.models import API_VERSION
from compozy_operator.settings import Settings
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.natsserver import NatsServer
from compozy_operator.testenv.node.volumes import service_account_token
from compozy_operator.testenv.workdir import repo_root

from common import percentile

POOL = "warm"


async def timed(url: str, token: str | None, rounds: int, user: str | None = None) -> list[float]:
    times = []
    login: dict[str, str | None] = {"user": user, "password": token} if user else {"token": token}
    for _ in range(rounds):
        started = time.perf_counter()
        nc = await nats.connect(url, **login, allow_reconnect=False, connect_timeout=5)
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
        runner = _runner_pod(kube, ns)
        runner_token = service_account_token(kube, runner, "compozy-nats", 600)
        work = PoolWork(ns, "run", execution["metadata"]["uid"], "p", 1, "bench-nonce")

        async def run() -> dict[str, list[float]]:
            operator = Bus(server.operator_url, None, "bench-operator")  # stores the command, reads it for the callout
            await operator.connect(attempts=5)
            await operator.ensure_streams()
            await operator.publish_command(command_subject(ns, "run", "p", 1), {**work.dump(), "pool": POOL})
            service = await CalloutService(CalloutConfig(
                server.url, auth.issuer_seed, auth.account, user=auth.callout_user, password=auth.callout_password,
                system_user=SYSTEM_USER, system_password=auth.keys.system_password), kube,
                commands=operator.get_command, pods_watched=True).start()
            attempt_user = pool_attempt_user(work.dump())
            try:
                times = {"plain shared token (token mode)": await timed(env.nats.url, env.nats.token, args.rounds),
                         "configured user (the operator)": await timed(server.operator_url, None, args.rounds),
                         "task pod through the callout": await timed(server.url, token, args.rounds),
                         "pooled attempt through the callout": await timed(server.url, runner_token, args.rounds,
                                                                           attempt_user)}
                service.review_seconds = 0.0
                service.reviews.clear()
                times["the same, reviewed at each login"] = await timed(server.url, runner_token, args.rounds,
                                                                        attempt_user)
                return times
            finally:
                await service.stop()
                await operator.close()

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
    pooled = percentile(results["pooled attempt through the callout"], 50)
    unkept = percentile(results["the same, reviewed at each login"], 50)
    print(f"added to a pooled attempt's start by the callout: {(pooled - base) * 1000:.1f} ms (p50; "
          f"{(unkept - base) * 1000:.1f} ms without the runner token's review kept)")


def _runner_pod(kube: Kube, namespace: str) -> dict[str, Any]:
    """A runner pod as a pool's Deployment makes it (a real Deployment and ReplicaSet; never scheduled,
    and owned by no RunnerPool, which the garbage collector would miss)."""
    deployment = runner_deployment(Settings(nats_auth="callout"),
                                   {"metadata": {"name": POOL, "namespace": namespace, "uid": "none"}}, 1)
    del deployment["metadata"]["ownerReferences"]
    deployment["spec"]["template"]["spec"]["nodeSelector"] = {"compozy.dev/bench-never-scheduled": "true"}
    kube.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", deployment)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pods = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=f"{LABEL_POOL}={POOL}")["items"]
        if pods:
            return pods[0]
        time.sleep(0.2)
    raise RuntimeError("the runner Deployment made no pod in 60 s")


if __name__ == "__main__":
    main()
