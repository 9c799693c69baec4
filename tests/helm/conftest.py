"""Helm chart tests: the real helm and kubectl against the local cluster."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.helm import Helm, chart_dir
from compozy_operator.testenv import Kube
from tests.helpers import Kubectl, apply_crds, wait_for

CHART = str(chart_dir())
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture(scope="session")
def helm(devenv: DevEnvironment) -> Helm:
    return Helm(devenv)


@pytest.fixture(scope="session")
def kubectl(devenv: DevEnvironment) -> Kubectl:
    k = Kubectl(devenv.bindir, devenv.kubeconfig)
    apply_crds(k)
    return k


def sets(*pairs: str) -> list[str]:
    """``sets("a=1", "b=2")`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    return [arg for pair in pairs for arg in ("--set", pair)]


def template(helm: Helm, release: str, namespace: str, *args: str) -> str:
    return helm.ok("template", release, CHART, "-n", namespace, *args)


def server_dry_run(kubectl: Kubectl, manifests: str) -> subprocess.CompletedProcess[str]:
    return kubectl("apply", "--dry-run=server", "-f", "-", stdin=manifests)


def run_example(kubectl: Kubectl, kube: Kube, namespace: str, name: str, timeout: float = 60) -> dict:
    """examples/hello-workflow.yaml and hello-run.yaml applied, the run named ``name``; the run's status once
    ended."""
    docs = [d for f in ("hello-workflow.yaml", "hello-run.yaml") for d in yaml.safe_load_all((EXAMPLES / f).read_text())
            if d]
    docs[1]["metadata"]["name"] = name
    kubectl.ok("apply", "-n", namespace, "-f", "-", stdin="\n---\n".join(json.dumps(d) for d in docs))

    def finished() -> dict | None:
        status = kube.get(f"/apis/compozy.dev/v1alpha1/namespaces/{namespace}/workflowexecutions/{name}").get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed", "TimedOut", "Cancelled") else None

    return wait_for(finished, timeout, f"execution {name} to finish", interval=0.2)


def operator_log(env: DevEnvironment) -> str:
    """The log of every operator pod the process node ran in ``env``."""
    logs = env.workdir / "nodes"
    return "\n".join(p.read_text(errors="replace") for p in logs.glob("*/pods/*/logs/operator.log"))
