"""Helm chart tests: the real helm and kubectl against the local cluster."""

from __future__ import annotations

import subprocess

import pytest

from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.helm import Helm, chart_dir
from tests.helpers import Kubectl, apply_crds

CHART = str(chart_dir())


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
