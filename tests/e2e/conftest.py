"""The operator as a real process against the local cluster and NATS."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.process import ManagedProcess
from compozy_operator.testenv.workdir import free_port
from tests.helpers import Kubectl, apply_crds, wait_for

TASK_IMAGE = "compozy/compozy-operator:test"


@dataclass
class OperatorProcess:
    devenv: DevEnvironment
    port: int
    log_path: Path
    proc: ManagedProcess | None = None

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.devenv.kubeconfig), "COMPOZY_NATS_URL": self.devenv.nats.url,
                "COMPOZY_NATS_TOKEN": self.devenv.nats.token, "COMPOZY_TASK_IMAGE": TASK_IMAGE,
                "COMPOZY_HTTP_PORT": str(self.port)}

    def start(self, env: dict[str, str] | None = None, wait_ready: bool = True) -> ManagedProcess:
        self.proc = ManagedProcess("operator", [sys.executable, "-m", "compozy_operator.cli", "operator"],
                                   self.log_path, env=env or self.env()).start()
        if wait_ready:
            self.proc.wait_until(lambda: self.readyz()[0] == 200, 60, "ready")
        return self.proc

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.signal_group(9)
        self.proc.stop(1)

    def readyz(self) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2) as r:  # noqa: S310
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:  # not listening yet
            return 0, str(e)

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:  # noqa: S310
            return r.read().decode()


@pytest.fixture(scope="session")
def kubectl(devenv: DevEnvironment) -> Kubectl:
    k = Kubectl(devenv.bindir, devenv.kubeconfig)
    apply_crds(k)
    return k


@pytest.fixture(scope="session")
def operator(devenv: DevEnvironment, kubectl: Kubectl) -> Iterator[OperatorProcess]:
    op = OperatorProcess(devenv, free_port(), devenv.workdir / "logs" / "operator.log")
    op.start()
    yield op
    if op.proc:
        op.proc.stop(10)


def execution_status(kubectl: Kubectl, namespace: str, name: str) -> dict:
    import json

    out = kubectl("get", "wfx", name, "-n", namespace, "-o", "json")
    return json.loads(out.stdout).get("status") or {} if out.returncode == 0 else {}


def wait_finished(kubectl: Kubectl, namespace: str, name: str, timeout: float = 60) -> dict:
    def done() -> dict | None:
        st = execution_status(kubectl, namespace, name)
        return st if st.get("phase") in ("Succeeded", "Failed", "TimedOut", "Cancelled") else None

    return wait_for(done, timeout, f"execution {namespace}/{name} to finish", interval=0.2)
