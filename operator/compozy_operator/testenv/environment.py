"""The whole local environment: control plane, process nodes and NATS, started and stopped as one.

Used by the pytest fixtures, ``compozy dev up`` and the demo::

    with DevEnvironment.start() as env:
        print(env.exports())
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .cluster import LocalCluster
from ..kube import ApiException, Kube
from .natsserver import NatsServer
from .node import DEFAULT_ENTRYPOINT, DEFAULT_IMAGES
from .process import ComponentError, ManagedProcess, install_cleanup_handlers
from .workdir import find_binaries, new_run_dir


def node_ready(kube: Kube, name: str) -> bool:
    try:
        node = kube.get(f"/api/v1/nodes/{name}")
    except ApiException:
        return False
    conds = {c["type"]: c["status"] for c in (node.get("status") or {}).get("conditions") or []}
    return conds.get("Ready") == "True"


@dataclass
class DevEnvironment:
    workdir: Path
    bindir: Path
    cluster: LocalCluster
    nats: NatsServer
    images: tuple[str, ...] = DEFAULT_IMAGES
    entrypoint: tuple[str, ...] = DEFAULT_ENTRYPOINT
    nodes: dict[str, ManagedProcess] = field(default_factory=dict)
    keep_workdir: bool = False

    @classmethod
    def start(
        cls,
        nodes: int = 1,
        images: tuple[str, ...] = DEFAULT_IMAGES,
        entrypoint: tuple[str, ...] = DEFAULT_ENTRYPOINT,
        bindir: Path | None = None,
        workdir: Path | None = None,
        nats_tls: bool = False,
        apiserver_flags: tuple[str, ...] = (),
    ) -> DevEnvironment:
        install_cleanup_handlers()
        bindir = bindir or find_binaries()
        workdir = workdir or new_run_dir()
        env = cls(workdir, bindir, LocalCluster(bindir, workdir / "cluster", apiserver_flags=apiserver_flags),
                  NatsServer(bindir, workdir / "nats", tls=nats_tls), images, entrypoint)
        try:
            env.nats.start()  # no dependency on the cluster: start it first, it is quick
            env.cluster.start()
            for i in range(1, nodes + 1):
                env.start_node(f"process-node-{i}")
            env.write_state()
        except BaseException:
            env.stop()
            raise
        return env

    def __enter__(self) -> DevEnvironment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def kubeconfig(self) -> Path:
        return self.cluster.kubeconfig

    def kube(self) -> Kube:
        return self.cluster.kube()

    def start_node(self, name: str, timeout: float = 30) -> ManagedProcess:
        argv = [sys.executable, "-m", "compozy_operator.testenv.node", "--kubeconfig", str(self.kubeconfig),
                "--name", name, "--workdir", str(self.workdir / "nodes" / name),
                "--entrypoint", json.dumps(list(self.entrypoint))]
        for image in self.images:
            argv += ["--image", image]
        proc = ManagedProcess(name, argv, self.workdir / "logs" / f"{name}.log").start()
        self.nodes[name] = proc
        kube = self.kube()
        try:
            proc.wait_until(lambda: node_ready(kube, name), timeout, "a Ready node", interval=0.1)
        finally:
            kube.close()
        return proc

    def stop_node(self, name: str) -> None:
        """Stop a process node: its processes end and its Node goes NotReady, as a lost node's would."""
        self.nodes.pop(name).stop(15)

    def check_alive(self) -> None:
        """Raise :class:`ComponentError` for a component that died; a NATS stopped on purpose
        (:meth:`stop_nats`, or ``nats.stop()`` in a test) is no failure."""
        self.cluster.check_alive()
        procs = [*self.nodes.items(), *([("nats-server", self.nats.proc)] if self.nats.running else [])]
        for name, proc in procs:
            if proc is not None and not proc.alive():
                raise ComponentError(name, f"died with exit code {proc.popen.returncode}", proc.log_path)

    def stop_nats(self) -> None:
        """Stop nats-server alone (an outage); the cluster and the nodes keep running."""
        self.nats.stop()
        self.write_state()

    def resume_nats(self, timeout: float = 30) -> None:
        """Start nats-server again on its URL, with its data."""
        self.nats.resume(timeout)
        self.write_state()

    def exports(self) -> dict[str, str]:
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "NATS_URL": self.nats.url,
            "NATS_TOKEN": self.nats.token,
            "COMPOZY_TESTENV_BIN": str(self.bindir),
        }

    def write_state(self, **extra: object) -> Path:
        """``env.json`` in the run directory, read by ``compozy dev env`` and ``dev nats``; replaced
        atomically, since a ``compozy dev`` in another shell may read it at any moment."""
        path = self.workdir / "env.json"
        previous = json.loads(path.read_text()) if path.exists() else {}
        state = {**previous, **self.exports(), "workdir": str(self.workdir),
                 "started": previous.get("started", time.time()), "nats": "running" if self.nats.running else "stopped",
                 **extra}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        tmp.chmod(0o600)
        os.replace(tmp, path)
        return path

    def stop(self) -> None:
        for name in list(self.nodes):
            self.stop_node(name)
        self.cluster.stop()
        self.nats.stop()
        if not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
