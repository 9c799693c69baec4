"""What the benchmarks share: figures, and a local cluster with the CRDs, a namespace and the operator."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from compozy_operator.api.crd import generate
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.operator_process import OperatorProcess

NS = "bench"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def counter(text: str, name: str) -> float:
    """Sum of a Prometheus metric's samples (all label sets) in /metrics text."""
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))


class Kubectl:
    def __init__(self, env: DevEnvironment) -> None:
        self.argv = [str(env.bindir / "kubectl"), "--kubeconfig", str(env.kubeconfig)]

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        return subprocess.run([*self.argv, *args], input=stdin, capture_output=True, text=True, check=True).stdout

    def apply(self, text: str) -> None:
        """kubectl apply, retried while the apiserver is still learning new CRDs."""
        for _ in range(50):
            if subprocess.run([*self.argv, "apply", "-f", "-"], input=text, capture_output=True,
                              text=True).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError("kubectl apply kept failing")


def prepare(env: DevEnvironment, start_operator: bool = True) -> tuple[Kubectl, OperatorProcess]:
    """CRDs established, namespace ``bench`` ready, the operator started (a local process)."""
    kubectl = Kubectl(env)
    kubectl.apply("---\n".join(generate().values()))
    kubectl("wait", "--for=condition=Established", "crd/workflowexecutions.compozy.dev")
    kubectl("create", "namespace", NS)
    env.cluster.wait_default_service_account(NS)
    op = OperatorProcess(env)
    if start_operator:
        op.start()
    return kubectl, op
