"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager
and kube-scheduler, each a child process with its log in the run directory."""

from __future__ import annotations

import ssl
import time
import urllib.request
from pathlib import Path

from ..kube import Kube, write_kubeconfig
from .pki import Pki, write_pki
from .process import ComponentError, ManagedProcess
from .workdir import free_port, which

SERVICE_CIDR = "10.0.0.0/24"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
_PORT_TAKEN = ("address already in use", "bind: address already in use")
_START_ATTEMPTS = 3


def _https_ok(url: str, context: ssl.SSLContext, timeout: float = 2.0) -> bool:
    with urllib.request.urlopen(url, context=context, timeout=timeout) as resp:  # noqa: S310 - loopback
        return resp.status == 200


def _port_conflict(err: ComponentError) -> bool:
    return any(s in err.log_tail for s in _PORT_TAKEN)


class LocalCluster:
    """Start with :meth:`start`, stop with :meth:`stop` (or use it as a context manager)."""

    def __init__(self, bindir: Path, workdir: Path, node_monitor_grace_period: str = "20s",
                 apiserver_flags: tuple[str, ...] = ()) -> None:
        """``apiserver_flags``: more kube-apiserver flags (e.g. an OIDC issuer's, testenv/oidc.py)."""
        self.bindir = bindir
        self.apiserver_flags = apiserver_flags
        self.workdir = workdir
        self.node_monitor_grace_period = node_monitor_grace_period
        self.pki: Pki = write_pki(workdir / "pki")
        self.kubeconfig = workdir / "kubeconfig"
        self.apiserver_port = 0
        self.procs: dict[str, ManagedProcess] = {}

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def kube(self) -> Kube:
        return Kube.from_kubeconfig(self.kubeconfig)

    def _admin_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        ctx.load_cert_chain(str(self.pki.admin_cert), str(self.pki.admin_key))
        return ctx

    def _start(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.workdir / "logs" / f"{name}.log").start()
        self.procs[name] = proc
        return proc

    def _with_port_retry(self, name: str, launch) -> None:  # type: ignore[no-untyped-def]
        """Run ``launch`` (start + wait); a port taken between picking and binding picks another."""
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                launch()
                return
            except ComponentError as err:
                self.procs.pop(name).stop(1)
                if attempt == _START_ATTEMPTS or not _port_conflict(err):
                    raise

    def start(self, timeout: float = 60) -> LocalCluster:
        try:
            self._with_port_retry("etcd", lambda: self._start_etcd(timeout))
            self._with_port_retry("kube-apiserver", lambda: self._start_apiserver(timeout))
            write_kubeconfig(
                self.kubeconfig, self.server, self.pki.ca_cert,
                user={"client-certificate": str(self.pki.admin_cert), "client-key": str(self.pki.admin_key)},
            )
            # The controller manager and the scheduler start together; both only need the apiserver.
            cm, sched = self._launch_controller_manager(), self._launch_scheduler()
            self._wait_healthz(cm, timeout)
            self._wait_healthz(sched, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_etcd(self, timeout: float) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        peer_url = f"http://127.0.0.1:{peer}"
        proc = self._start("etcd", [
            which(self.bindir, "etcd"),
            "--name=default",
            f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            "--unsafe-no-fsync=true",  # a throwaway test cluster: speed over durability
            "--log-level=warn",
        ])

        def healthy() -> bool:
            with urllib.request.urlopen(f"{self.etcd_url}/health", timeout=2) as resp:  # noqa: S310
                return b'"true"' in resp.read()

        proc.wait_until(healthy, timeout, "healthy")

    def _start_apiserver(self, timeout: float) -> None:
        self.apiserver_port = free_port()
        p = self.pki
        proc = self._start("kube-apiserver", [
            which(self.bindir, "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={self.workdir / 'apiserver'}",
            f"--tls-cert-file={p.serving_cert}",
            f"--tls-private-key-file={p.serving_key}",
            f"--client-ca-file={p.ca_cert}",
            "--authorization-mode=RBAC",
            f"--service-account-issuer={SA_ISSUER}",
            f"--api-audiences={SA_ISSUER}",
            f"--service-account-key-file={p.sa_pub}",
            f"--service-account-signing-key-file={p.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # No Endpoints for the `kubernetes` Service: its address would be loopback, which
            # the API refuses; in-cluster clients get the apiserver address directly instead.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
            "--v=1",
            *self.apiserver_flags,
        ])
        ctx = self._admin_context()
        proc.wait_until(lambda: _https_ok(f"{self.server}/readyz", ctx), timeout, "ready")

    def _launch_client_component(self, name: str, flags: list[str]) -> tuple[ManagedProcess, str]:
        """Start a component that talks to the apiserver as admin and serves /healthz on loopback."""
        port = free_port()
        proc = self._start(name, [
            which(self.bindir, name),
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--bind-address=127.0.0.1",
            f"--secure-port={port}",
            f"--cert-dir={self.workdir / name}",
            "--leader-elect=false",
            "--profiling=false",
            *flags,
        ])
        return proc, f"https://127.0.0.1:{port}/healthz"

    def _launch_controller_manager(self) -> tuple[ManagedProcess, str]:
        p = self.pki
        return self._launch_client_component("kube-controller-manager", [
            "--controllers=*",
            f"--service-account-private-key-file={p.sa_key}",
            f"--root-ca-file={p.ca_cert}",
            f"--cluster-signing-cert-file={p.ca_cert}",
            f"--cluster-signing-key-file={p.ca_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--node-monitor-grace-period={self.node_monitor_grace_period}",
            "--use-service-account-credentials=false",
        ])

    def _launch_scheduler(self) -> tuple[ManagedProcess, str]:
        return self._launch_client_component("kube-scheduler", [])

    def _wait_healthz(self, launched: tuple[ManagedProcess, str], timeout: float) -> None:
        proc, url = launched
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE  # self-signed serving certs of loopback components
        proc.wait_until(lambda: _https_ok(url, ctx), timeout, "healthy")

    def check_alive(self) -> None:
        """Raise :class:`ComponentError` (with its log tail) for the first dead component."""
        for name, proc in self.procs.items():
            if not proc.alive():
                raise ComponentError(name, f"died with exit code {proc.popen.returncode}", proc.log_path)

    def wait_default_service_account(self, namespace: str, timeout: float = 30) -> None:
        """Pods can only be created once the namespace's ``default`` ServiceAccount exists."""
        kube = self.kube()
        deadline = time.monotonic() + timeout
        try:
            while True:
                items = kube.get(f"/api/v1/namespaces/{namespace}/serviceaccounts")["items"]
                if any(sa["metadata"]["name"] == "default" for sa in items):
                    return
                if time.monotonic() > deadline:
                    self.check_alive()
                    raise TimeoutError(f"no default ServiceAccount in namespace {namespace} after {timeout}s")
                time.sleep(0.1)
        finally:
            kube.close()

    def stop(self) -> None:
        # Reverse start order: clients before the apiserver, the apiserver before etcd.
        for name in reversed(list(self.procs)):
            self.procs.pop(name).stop(10)
