"""What the benchmarks share: figures, and a local cluster with the CRDs, a namespace and the operator."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the tests' helpers (kubectl, CRDs, stand-ins)

from compozy_operator.testenv import DevEnvironment  # noqa: E402
from compozy_operator.testenv.operator_process import OperatorProcess  # noqa: E402
from tests.helpers import Kubectl, apply_crds  # noqa: E402

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


def prepare(env: DevEnvironment, start_operator: bool = True) -> tuple[Kubectl, OperatorProcess]:
    """CRDs established, namespace ``bench`` ready, the operator started (a local process)."""
    kubectl = Kubectl(env.bindir, env.kubeconfig)
    apply_crds(kubectl)
    kubectl.ok("create", "namespace", NS)
    env.cluster.wait_default_service_account(NS)
    op = OperatorProcess(env)
    if start_operator:
        op.start()
    return kubectl, op


def apply(kubectl: Kubectl, doc: dict) -> None:
    proc = kubectl.apply(NS, doc)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl apply failed: {proc.stderr}")


TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def own_cpu(pid: int) -> float:
    """CPU seconds of ``pid`` alone (a process node's, without its containers')."""
    f = _stat(pid)
    return sum(int(x) for x in f[11:13]) / TICK if f else 0.0


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) of ``pid``, of its children it has waited for (the process node's
    containers) and of its live descendants (the operator's evaluation workers)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (f := _stat(int(entry.name))) is not None:
            parents.setdefault(int(f[1]), []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        if (f := _stat(p)) is not None:
            total += sum(int(x) for x in f[11:15]) / TICK  # utime, stime, cutime, cstime
        todo += parents.get(p, [])
    return total


def samples(text: str, name: str) -> dict[str, float]:
    """A Prometheus metric's samples in /metrics text, by label set (``write="create.pods"``)."""
    return {labels: float(v) for labels, v in re.findall(rf"^{name}{{([^}}]*)}} ([0-9.e+]+)$", text, re.M)}
