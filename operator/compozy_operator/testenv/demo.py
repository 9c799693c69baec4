"""``compozy dev demo``: the local cluster at work, end to end, in under a minute."""

from __future__ import annotations

import asyncio
import subprocess
import time

from .environment import DevEnvironment
from ..kube import Kube
from .natsclient import jetstream_round_trip
from .workdir import free_port

NAMESPACE = "demo"


def _kubectl(env: DevEnvironment, *args: str) -> None:
    print(f"\n$ kubectl {' '.join(args)}", flush=True)
    subprocess.run([str(env.bindir / "kubectl"), "--kubeconfig", str(env.kubeconfig), *args], check=True)


def _deployment(image: str, port: int) -> dict:
    container = {
        "name": "web",
        "image": image,
        "command": ["python", "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        "env": [{"name": "GREETING", "valueFrom": {"secretKeyRef": {"name": "demo-greeting", "key": "text"}}}],
        "readinessProbe": {"httpGet": {"path": "/", "port": port}, "periodSeconds": 1},
    }
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "hello", "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "hello"}},
            "template": {"metadata": {"labels": {"app": "hello"}}, "spec": {"containers": [container]}},
        },
    }


def _wait_available(kube: Kube, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = kube.get(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/hello").get("status") or {}
        if status.get("availableReplicas") == 1:
            return
        time.sleep(0.2)
    raise TimeoutError("deployment hello was not available after 60s")


def run_demo(keep: bool = False) -> int:
    t0 = time.monotonic()
    with DevEnvironment.start() as env:
        print(f"local cluster up in {time.monotonic() - t0:.1f}s: kube-apiserver {env.cluster.server}, "
              f"NATS {env.nats.url}", flush=True)
        _kubectl(env, "get", "nodes", "-o", "wide")
        kube = env.kube()
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        env.cluster.wait_default_service_account(NAMESPACE)
        kube.create(f"/api/v1/namespaces/{NAMESPACE}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo-greeting"},
            "stringData": {"text": "hello from a Secret"}})
        t1 = time.monotonic()
        kube.create(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments", _deployment(f"{env.images[0]}:dev", free_port()))
        _wait_available(kube)
        print(f"\nDeployment hello: scheduled, started and Ready on the process node in {time.monotonic() - t1:.1f}s")
        _kubectl(env, "-n", NAMESPACE, "get", "deployments,pods", "-o", "wide")
        data = asyncio.run(jetstream_round_trip(env.nats.url, env.nats.token, "DEMO", "demo.hello", b"hello, JetStream"))
        print(f"\nJetStream round trip with token auth through nats-server: {data.decode()!r}")
        kube.close()
        if keep:
            print("\nThe cluster stays up; in another shell:")
            for k, v in env.exports().items():
                print(f"export {k}={v}")
            print("Ctrl-C stops it.", flush=True)
            try:
                while True:
                    time.sleep(1)
                    env.check_alive()
            except KeyboardInterrupt:
                pass
    print(f"\ndemo done in {time.monotonic() - t0:.1f}s; everything stopped")
    return 0
