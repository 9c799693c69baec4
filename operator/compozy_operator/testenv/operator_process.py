"""The operator as a local process against a DevEnvironment (tests, demo, benchmark).

Until the Helm chart runs it as a pod, this is how the local cluster runs the operator: the same
``compozy operator`` command, with the environment the chart would give it.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .environment import DevEnvironment
from .process import ManagedProcess
from .workdir import free_port


@dataclass
class OperatorProcess:
    devenv: DevEnvironment
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: ManagedProcess | None = None

    def env(self) -> dict[str, str]:
        return {**os.environ, "KUBECONFIG": str(self.devenv.kubeconfig), "COMPOZY_NATS_URL": self.devenv.nats.url,
                "COMPOZY_NATS_TOKEN": self.devenv.nats.token,
                "COMPOZY_TASK_IMAGE": f"{self.devenv.images[0]}:dev", "COMPOZY_HTTP_PORT": str(self.port),
                **self.extra_env}

    def start(self, wait_ready: bool = True, timeout: float = 60) -> ManagedProcess:
        log_path = self.log_path or self.devenv.workdir / "logs" / "operator.log"
        self.proc = ManagedProcess("operator", [sys.executable, "-m", "compozy_operator.cli", "operator"],
                                   log_path, env=self.env()).start()
        if wait_ready:
            self.proc.wait_until(lambda: self.readyz()[0] == 200, timeout, "ready")
        return self.proc

    def kill(self) -> None:
        """SIGKILL: no cleanup, all in-memory state lost."""
        assert self.proc is not None
        self.proc.signal_group(9)
        self.proc.stop(1)

    def stop(self) -> None:
        if self.proc:
            self.proc.stop(10)

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
