"""Small helpers for tests against the local cluster."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar


from compozy_operator.testenv import Kube
from compozy_operator.testenv.node import DEFAULT_IMAGES

T = TypeVar("T")
# The operator processes the session keeps running (the e2e tests' cluster-wide one): tests that need
# the cluster to themselves (tests/resources: what the API server alone stores) stop them meanwhile.
SESSION_OPERATORS: list[Any] = []
IMAGE = f"{DEFAULT_IMAGES[0]}:test"


@contextlib.contextmanager
def session_operators_stopped() -> Iterator[None]:
    """The session's running operators stopped meanwhile, started again after."""
    stopped = [op for op in SESSION_OPERATORS if op.proc is not None and op.proc.alive()]
    for op in stopped:
        op.stop()
    try:
        yield
    finally:
        for op in stopped:
            op.start()


def wait_for(fn: Callable[[], T | None], timeout: float = 30, what: str = "condition", interval: float = 0.1) -> T:
    """Poll ``fn`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def pod_manifest(name: str, command: list[str], *, image: str = IMAGE, restart: str = "Never",
                 node: str | None = None, **container: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "restartPolicy": restart,
        "terminationGracePeriodSeconds": 5,
        "containers": [{"name": "main", "image": image, "command": command, **container}],
    }
    if node:
        spec["nodeSelector"] = {"kubernetes.io/hostname": node}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def create_pod(kube: Kube, namespace: str, manifest: dict[str, Any]) -> dict[str, Any]:
    return kube.create(f"/api/v1/namespaces/{namespace}/pods", manifest)


def get_pod(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return kube.get(f"/api/v1/namespaces/{namespace}/pods/{name}")
    except Exception as e:  # noqa: BLE001
        if getattr(e, "status", None) == 404:
            return None
        raise


def wait_phase(kube: Kube, namespace: str, name: str, *phases: str, timeout: float = 30) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        pod = get_pod(kube, namespace, name)
        return pod if pod and (pod.get("status") or {}).get("phase") in phases else None

    return wait_for(check, timeout, f"pod {namespace}/{name} in phase {'/'.join(phases)}")


def container_status(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["status"]["containerStatuses"][0]


def pid_of(pod: dict[str, Any]) -> int:
    """The process id behind a pod's container (``process://<node>/<pid>``)."""
    return int(container_status(pod)["containerID"].rsplit("/", 1)[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Kubectl:
    """The real kubectl against the local cluster."""

    def __init__(self, bindir: Path, kubeconfig: Path) -> None:
        self.argv = [str(bindir / "kubectl"), "--kubeconfig", str(kubeconfig)]

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*self.argv, *args], input=stdin, capture_output=True, text=True, timeout=60)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        proc = self(*args, stdin=stdin)
        assert proc.returncode == 0, f"kubectl {' '.join(args)} failed:\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    def apply(self, namespace: str, *docs: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        # JSON documents: YAML 1.1 readers (kubectl's) would turn keys like `n` or `y` into booleans
        return self("apply", "-n", namespace, "-f", "-", stdin="\n---\n".join(json.dumps(d) for d in docs))


CRD_DIR = Path(__file__).resolve().parents[1] / "crds"
CRD_NAMES = ["workflows.compozy.dev", "workflowexecutions.compozy.dev", "runnerpools.compozy.dev"]


def apply_crds(kubectl: Kubectl) -> None:
    """Apply crds/ and wait until both CRDs are Established and served. Idempotent.

    A just-started apiserver can refuse a first apply while its storage initialises, so the apply
    is retried for a few seconds."""
    wait_for(lambda: kubectl("apply", "-f", str(CRD_DIR)).returncode == 0, 30, "kubectl apply -f crds/")
    established = ("wait", "--for=condition=Established", "--timeout=30s", *(f"crd/{n}" for n in CRD_NAMES))
    wait_for(lambda: kubectl(*established).returncode == 0, 60,
             "the CRDs to be Established")
    wait_for(lambda: kubectl("get", "workflows.compozy.dev,workflowexecutions.compozy.dev", "-A").returncode == 0,
             30, "the compozy.dev resources to be served", interval=0.2)
