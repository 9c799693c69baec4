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

from . import admission
from .environment import DevEnvironment
from .pki import TlsFiles, write_loopback_tls
from .process import ManagedProcess
from .workdir import free_port


@dataclass
class OperatorProcess:
    devenv: DevEnvironment
    port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)  # api.Service (COMPOZY_API_PORT)
    log_path: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: ManagedProcess | None = None
    # serve the admission webhook on 127.0.0.1:webhook_port and register it with the cluster
    # (testenv/admission.py: by URL, failurePolicy Ignore, bypass label for tests)
    webhook: bool = False
    webhook_port: int = field(default_factory=free_port)
    webhook_tls: TlsFiles | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def webhook_name(self) -> str:
        return f"compozy-local-{self.webhook_port}"

    def env(self) -> dict[str, str]:
        env = {**os.environ, "KUBECONFIG": str(self.devenv.kubeconfig), "COMPOZY_NATS_URL": self.devenv.nats.url,
               "COMPOZY_NATS_TOKEN": self.devenv.nats.token,
               "COMPOZY_TASK_IMAGE": f"{self.devenv.images[0]}:dev", "COMPOZY_HTTP_PORT": str(self.port),
               "COMPOZY_API_HOST": "127.0.0.1", "COMPOZY_API_PORT": str(self.api_port)}
        if self.webhook:
            if self.webhook_tls is None:
                self.webhook_tls = write_loopback_tls(self.devenv.workdir / f"webhook-{self.webhook_port}",
                                                      "compozy-webhook")
            env |= {"COMPOZY_WEBHOOK_ENABLED": "true", "COMPOZY_WEBHOOK_HOST": "127.0.0.1",
                    "COMPOZY_WEBHOOK_PORT": str(self.webhook_port),
                    "COMPOZY_WEBHOOK_CERT_FILE": str(self.webhook_tls.cert),
                    "COMPOZY_WEBHOOK_KEY_FILE": str(self.webhook_tls.key)}
        return {**env, **self.extra_env}

    def start(self, wait_ready: bool = True, timeout: float = 60) -> ManagedProcess:
        log_path = self.log_path or self.devenv.workdir / "logs" / "operator.log"
        self.proc = ManagedProcess("operator", [sys.executable, "-m", "compozy_operator.cli", "operator"],
                                   log_path, env=self.env()).start()
        if wait_ready:
            self.proc.wait_until(lambda: self.readyz()[0] == 200, timeout, "ready")
            if self.webhook:
                self.register_webhook()
        return self.proc

    def register_webhook(self, timeout: float = 30) -> None:
        """Register this process's webhook (idempotent) and wait until the API server calls it."""
        assert self.webhook_tls is not None
        kube = self.devenv.kube()
        try:
            admission.register(kube, self.webhook_name, self.webhook_port, self.webhook_tls.ca_cert, timeout)
        finally:
            kube.close()

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
