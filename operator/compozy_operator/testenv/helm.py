"""The Helm chart on the local cluster (demo and tests).

The chart installs as it would anywhere, with two local choices: NATS is ``external`` and points
at the environment's nats-server (token in a Secret), and the operator image is one the process
node runs (``compozy/compozy-operator``), so the operator pod is a real pod whose container is
the ``compozy operator`` command. Every pod shares 127.0.0.1 there, so each release gets a free
HTTP port, and the admission webhook is off (the API server cannot reach a pod's Service here).
"""

from __future__ import annotations

import base64
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from ..kube import ApiException, Kube
from .environment import DevEnvironment
from .workdir import free_port, repo_root, which

CHART = Path("charts") / "compozy-operator"
TOKEN_SECRET = "compozy-nats-auth"


def chart_dir() -> Path:
    root = repo_root()
    if root is None:
        raise FileNotFoundError(f"the Helm chart ships in the source checkout ({CHART}); run from a clone")
    return root / CHART


class Helm:
    """The real helm binary against a DevEnvironment, with its caches in the run directory."""

    def __init__(self, env: DevEnvironment) -> None:
        self.argv = [which(env.bindir, "helm"), "--kubeconfig", str(env.kubeconfig)]
        home = env.workdir / "helm"
        self.environ = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"),
                        "HELM_CONFIG_HOME": str(home / "config"), "HELM_DATA_HOME": str(home / "data")}

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.argv, *args], capture_output=True, text=True, timeout=timeout, env=self.environ,
                              check=False)

    def ok(self, *args: str, timeout: float = 300) -> str:
        out = self(*args, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
        return out.stdout


def local_values(env: DevEnvironment, secret: str = TOKEN_SECRET, tag: str = "dev") -> list[str]:
    """``--set`` flags for the local cluster: external NATS (token mode: the local cluster's server),
    the process node's image, a free port."""
    values = {"image.repository": env.images[0], "image.tag": tag, "nats.mode": "external",
              "nats.external.url": env.nats.url, "nats.auth.mode": "token", "nats.auth.existingSecret": secret,
              "operator.httpPort": str(free_port()), "api.port": str(free_port()),
              # one replica, Recreate: every pod of the process node listens on 127.0.0.1, so a standby
              # or a surge pod would find its ports taken (tests/e2e/test_high_availability.py runs
              # two replicas as processes with ports of their own)
              "replicaCount": "1", "leaderElection.enabled": "false",
              # The process node's pods all have IP 127.0.0.1, which Endpoints refuse, and there is no
              # kube-proxy: the API server cannot reach a webhook behind a Service here. The e2e tests
              # run the webhook for real with the operator as a host process (testenv/admission.py).
              "webhook.enabled": "false"}
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


API_TLS_SECRET = "compozy-api-tls"


def serve_api_over_https(env: DevEnvironment, namespace: str, values: list[str]) -> list[str]:
    """``values`` plus api.Service over HTTPS (a loopback certificate in a Secret of ``namespace``,
    accepting the cluster's client certificates), and the kubeconfig's current context told where it
    is (its ``compozy.dev/api`` extension): ``compozy logs`` then works with the kubeconfig alone."""
    from ..cli.logs import API_EXTENSION
    from ..kube import set_context_extension
    from .pki import write_loopback_tls

    tls = write_loopback_tls(env.workdir / "api-tls", "compozy-api")
    kube = env.kube()
    try:
        ensure_namespace(kube, namespace)
        body = {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": API_TLS_SECRET, "namespace": namespace},
                "data": {"tls.crt": base64.b64encode(tls.cert.read_bytes()).decode(),
                         "tls.key": base64.b64encode(tls.key.read_bytes()).decode()}}
        kube.create(f"/api/v1/namespaces/{namespace}/secrets", body)
    finally:
        kube.close()
    port = dict(v.split("=", 1) for v in values[1::2])["api.port"]
    set_context_extension(env.kubeconfig, API_EXTENSION, {
        "url": f"https://127.0.0.1:{port}",
        "certificate-authority-data": base64.b64encode(tls.ca_cert.read_bytes()).decode()})
    return [*values, "--set", f"api.tls.secretName={API_TLS_SECRET}"]


def ensure_namespace(kube: Kube, name: str, labels: dict[str, str] | None = None) -> None:
    try:
        kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                           "metadata": {"name": name, "labels": labels or {}}})
    except ApiException as e:
        if e.status != 409:
            raise


def put_token_secret(kube: Kube, namespace: str, token: str, name: str = TOKEN_SECRET) -> None:
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
            "data": {"token": base64.b64encode(token.encode()).decode()}}
    try:
        kube.create(f"/api/v1/namespaces/{namespace}/secrets", body)
    except ApiException as e:
        if e.status != 409:
            raise
        kube.request("PUT", f"/api/v1/namespaces/{namespace}/secrets/{name}", body)


def operator_pods(kube: Kube, namespace: str, release: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"
    return kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"]


def pod_ready(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conds)


def wait_operator_ready(kube: Kube, namespace: str, release: str, timeout: float = 120) -> dict[str, Any]:
    """The release's operator pod once it is Ready (its /readyz: NATS connected)."""
    deadline = time.monotonic() + timeout
    pods: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        pods = operator_pods(kube, namespace, release)
        ready = [p for p in pods if pod_ready(p)]
        if ready:
            return ready[0]
        time.sleep(0.2)
    raise TimeoutError(f"operator of release {release} not Ready in {timeout:.0f}s: "
                       f"{[(p['metadata']['name'], p.get('status')) for p in pods]}")


def install(env: DevEnvironment, helm: Helm, release: str, namespace: str, *extra: str,
            values: list[str] | None = None, timeout: str = "180s", ready: bool = True) -> str:
    """``helm upgrade --install`` the chart with ``values`` (default :func:`local_values`; later
    ``extra`` flags win) and, if ``ready``, wait until the operator is Ready. The token Secret is
    written into ``namespace`` first."""
    kube = env.kube()
    try:
        ensure_namespace(kube, namespace)
        put_token_secret(kube, namespace, env.nats.token)
        out = helm.ok("upgrade", "--install", release, str(chart_dir()), "-n", namespace,
                      *(values or local_values(env)), *extra, "--wait", "--timeout", timeout)
        if ready:
            wait_operator_ready(kube, namespace, release)
        return out
    finally:
        kube.close()
