"""nats-server with JetStream on loopback, token auth on (TLS optional), data in the run directory.

A test can stop it and :meth:`NatsServer.resume` it later on the same ports with the same data,
as an outage of the server would look to its clients.

Callout mode (``NatsServer(..., callout=True)``, opt-in; token mode stays the default): accounts
``SYS`` (system), ``COMPOZY`` (the application, JetStream on) and ``AUTH`` (the callout service's),
two configured users that skip the callout (``auth_users``): the operator (``COMPOZY``, full
rights) and the callout service (``AUTH``: may only receive ``$SYS.REQ.USER.AUTH`` and answer it),
and ``authorization.auth_callout`` whose issuer is a fresh account nkey, its seed in
:attr:`CalloutAuth.issuer_seed` for the callout service to sign with. Every other client is put to
the callout (see nats_auth.callout)."""

from __future__ import annotations

import json
import os
import re
import secrets
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..nats_auth.keys import API_USER, CALLOUT_USER, OPERATOR_USER, STATE_USER, CalloutKeys, server_conf
from .pki import TlsFiles, write_loopback_tls
from .process import ComponentError, ManagedProcess
from .workdir import free_port, which



@dataclass
class CalloutAuth:
    """The identities of a callout-mode server (fresh secrets for each server)."""

    account: str = "COMPOZY"  # where the operator lives and the callout places task attempts
    callout_account: str = "AUTH"  # the callout service's own (no data, no JetStream)
    operator_user: str = OPERATOR_USER
    state_user: str = STATE_USER
    api_user: str = API_USER
    callout_user: str = CALLOUT_USER
    keys: CalloutKeys = field(default_factory=CalloutKeys)

    @property
    def operator_password(self) -> str:
        return self.keys.operator_password

    @property
    def callout_password(self) -> str:
        return self.keys.callout_password

    @property
    def issuer_seed(self) -> str:
        """Signs the callout's answers."""
        return self.keys.issuer_seed

    @property
    def issuer(self) -> str:
        return self.keys.issuer

    @property
    def state_password(self) -> str:
        return self.keys.state_password


class NatsServer:
    def __init__(self, bindir: Path, workdir: Path, token: str | None = None, tls: bool = False,
                 callout: bool = False, chart_conf: str | None = None) -> None:
        """``callout``: callout mode (see the module); ``token`` then has no use. ``chart_conf``: run
        the nats.conf the Helm chart renders instead of this module's (its ports and store directory
        moved here; the token or the callout secrets given through the environment, as the chart's
        StatefulSet does), to prove the chart's configuration with the real server."""
        self.bindir = bindir
        self.workdir = workdir
        self.token = token or secrets.token_urlsafe(24)
        self.callout: CalloutAuth | None = CalloutAuth() if callout else None
        self.port = 0
        self.monitor_port = 0
        self.proc: ManagedProcess | None = None
        self.chart_conf = chart_conf
        # with TLS, clients must verify the server against tls.ca_cert (a CA of its own)
        self.tls: TlsFiles | None = write_loopback_tls(workdir / "tls", "nats-server") if tls else None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    def url_for(self, user: str, password: str) -> str:
        """The URL with a user's credentials in it (how a Bus, which sends only a token, logs in as a user)."""
        return f"{'tls' if self.tls else 'nats'}://{user}:{password}@127.0.0.1:{self.port}"

    @property
    def operator_url(self) -> str:
        """Callout mode: the operator's URL (credentials included)."""
        assert self.callout is not None, "not in callout mode"
        return self.url_for(self.callout.operator_user, self.callout.operator_password)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _write_config(self) -> Path:
        conf = self.workdir / "nats.conf"
        if self.chart_conf is not None:
            text = re.sub(r"^port: 4222$", f"host: 127.0.0.1\nport: {self.port}", self.chart_conf, flags=re.M)
            text = re.sub(r"^http_port: 8222$", f"http: 127.0.0.1:{self.monitor_port}", text, flags=re.M)
            text = text.replace("store_dir: /data", f"store_dir: {json.dumps(str(self.workdir / 'jetstream'))}")
            conf.write_text(text)
            conf.chmod(0o600)
            return conf
        # JSON values are valid NATS config syntax (json.dumps quotes the token safely); the callout
        # blocks are the ones the chart ships (nats_auth.keys.server_conf), secrets from the environment
        text = "".join(f"{key}: {json.dumps(value, indent=2)}\n" for key, value in self._config().items())
        conf.write_text(text + (server_conf() if self.callout else ""))
        conf.chmod(0o600)
        return conf

    def _config(self) -> dict[str, Any]:
        """The server's configuration but the callout blocks, as a dict (subclasses change it)."""
        config: dict[str, Any] = {
            "listen": f"127.0.0.1:{self.port}",
            "http": f"127.0.0.1:{self.monitor_port}",
            "jetstream": {
                "store_dir": str(self.workdir / "jetstream"),
                "max_memory_store": 256 * 1024 * 1024,
                "max_file_store": 2 * 1024 * 1024 * 1024,
            },
        }
        if self.tls:
            config["tls"] = {"cert_file": str(self.tls.cert), "key_file": str(self.tls.key)}
        if not self.callout:
            config["authorization"] = {"token": self.token}
        return config

    def start(self, timeout: float = 30, attempts: int = 3) -> NatsServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, attempts + 1):
            self.port, self.monitor_port = free_port(), free_port()
            try:
                return self._launch(timeout)
            except ComponentError as err:
                if attempt == attempts or "address already in use" not in err.log_tail:
                    raise
        return self

    @property
    def running(self) -> bool:
        """Started and not stopped since (it may still have died on its own: see ``proc.alive()``)."""
        return self.proc is not None

    def resume(self, timeout: float = 30) -> NatsServer:
        """Start again after :meth:`stop`, on the same ports with the same data (JetStream streams,
        consumers and messages), so clients reconnect to the URL they know."""
        if self.running:
            raise RuntimeError("nats-server is running: stop it before resuming it")
        return self._launch(timeout)

    def restart(self, timeout: float = 30) -> NatsServer:
        """Stop, then resume: a restarted server (connected clients reconnect)."""
        self.stop()
        return self.resume(timeout)

    def _launch(self, timeout: float) -> NatsServer:
        self._spawn()
        return self._wait_ready(timeout)

    def _spawn(self) -> None:
        conf = self._write_config()
        self.proc = ManagedProcess(
            "nats-server", [which(self.bindir, "nats-server"), "-c", str(conf)], self.workdir / "nats-server.log",
            env=self._server_env(),
        ).start()

    def _wait_ready(self, timeout: float) -> NatsServer:
        assert self.proc is not None
        try:
            self.proc.wait_until(self._jetstream_ready, timeout, "ready with JetStream")
        except ComponentError:
            self.proc.stop(1)
            raise
        return self

    def _server_env(self) -> dict[str, str] | None:
        """The secrets the configuration refers to, through the environment (as the chart's
        StatefulSet gives them: templates/nats.yaml); None: the test's own token config needs none."""
        if self.callout is None and self.chart_conf is None:
            return None
        env = {"PATH": os.environ.get("PATH", ""), "POD_NAME": "compozy-nats-0"}
        return {**env, **(self.callout.keys.server_env() if self.callout else {"NATS_TOKEN": self.token})}

    def _jetstream_ready(self) -> bool:
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
            return resp.status == 200

    def stop(self) -> None:
        if self.proc:
            self.proc.stop(10)
            self.proc = None


class NatsClusterNode(NatsServer):
    """One server of a :class:`NatsCluster` (routes to the others, JetStream clustered)."""

    def __init__(self, bindir: Path, workdir: Path, token: str, name: str, cluster_port: int,
                 routes: list[str]) -> None:
        super().__init__(bindir, workdir, token=token)
        self.name, self.cluster_port, self.routes = name, cluster_port, routes
        self.port, self.monitor_port = free_port(), free_port()

    def _jetstream_ready(self) -> bool:
        """Healthy as a cluster member: JetStream has a meta leader (a quorum of nodes is up)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/healthz", timeout=2) as resp:  # noqa: S310
            return resp.status == 200

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        config["server_name"] = self.name
        config["cluster"] = {"name": "compozy-test", "listen": f"127.0.0.1:{self.cluster_port}", "routes": self.routes}
        return config


class NatsCluster:
    """A JetStream cluster of ``size`` nats-servers on loopback (one token), for tests of streams
    with replicas and of a lost NATS node. ``url`` is the first node's; clients learn the others."""

    def __init__(self, bindir: Path, workdir: Path, size: int = 3) -> None:
        token = secrets.token_urlsafe(24)
        cluster_ports = [free_port() for _ in range(size)]
        routes = [f"nats-route://127.0.0.1:{p}" for p in cluster_ports]
        self.nodes = [NatsClusterNode(bindir, workdir / f"n{i}", token, f"n{i}", port,
                                      [r for r in routes if not r.endswith(f":{port}")])
                      for i, port in enumerate(cluster_ports)]
        self.token = token

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 60) -> NatsCluster:
        """All nodes at once: JetStream is ready only once a quorum of them has formed."""
        for node in self.nodes:
            node.workdir.mkdir(parents=True, exist_ok=True)
            node._spawn()
        for node in self.nodes:
            node._wait_ready(timeout)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
