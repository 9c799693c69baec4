"""Faults of the environment itself: crashed components, taken ports, killed runs, no Go."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from compozy_operator.testenv import ComponentError, DevEnvironment, LocalCluster, NatsServer
from compozy_operator.testenv import natsserver
from compozy_operator.testenv.workdir import free_port, repo_root

from tests.helpers import pid_alive, wait_for

REPO = repo_root()


def test_a_crashing_component_is_named_with_its_log_tail(devenv: DevEnvironment, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for binary in devenv.bindir.iterdir():
        (bindir / binary.name).symlink_to(binary.resolve())
    (bindir / "kube-scheduler").unlink()
    (bindir / "kube-scheduler").write_text("#!/bin/sh\necho 'scheduler exploded: bad flag' >&2\nexit 1\n")
    (bindir / "kube-scheduler").chmod(0o755)
    cluster = LocalCluster(bindir, tmp_path / "cluster")
    with pytest.raises(ComponentError) as err:
        cluster.start(timeout=30)
    assert err.value.name == "kube-scheduler"
    assert "kube-scheduler: exited with code 1" in str(err.value)
    assert "scheduler exploded: bad flag" in str(err.value)
    assert not cluster.procs, "the components that did start must be stopped again"


def test_a_taken_port_is_replaced_by_a_free_one(devenv: DevEnvironment, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        ports = iter([taken, free_port()])
        monkeypatch.setattr(natsserver, "free_port", lambda: next(ports, None) or free_port())
        with NatsServer(devenv.bindir, tmp_path / "nats") as server:
            assert server.port != taken
            assert "address already in use" in (tmp_path / "nats" / "nats-server.log").read_text()


KILLED_RUN = """
import json, subprocess, sys, time
from compozy_operator.testenv import DevEnvironment
env = DevEnvironment.start()
kube = env.kube()
kube.create("/api/v1/namespaces/default/pods", {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "orphan"},
    "spec": {"containers": [{"name": "m", "image": env.images[0], "command": ["sleep", "600"]}]}})
while True:
    pod = kube.get("/api/v1/namespaces/default/pods/orphan")
    cs = pod.get("status", {}).get("containerStatuses") or [{}]
    if cs[0].get("containerID"):
        break
    time.sleep(0.1)
procs = {**env.cluster.procs, **env.nodes, "nats-server": env.nats.proc}
print(json.dumps({"pids": {n: p.pid for n, p in procs.items()}, "pod": int(cs[0]["containerID"].rsplit("/", 1)[1]),
                  "workdir": str(env.workdir)}), flush=True)
time.sleep(600)
"""


def test_a_killed_run_leaves_no_process_behind(devenv: DevEnvironment, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    env = {**os.environ, "COMPOZY_TESTENV_BIN": str(devenv.bindir), "COMPOZY_TESTENV_RUNS": str(runs)}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN], stdout=subprocess.PIPE, text=True, env=env)
    try:
        facts = json.loads(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    pids = {**facts["pids"], "pod": facts["pod"]}
    assert set(pids) >= {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler",
                         "process-node-1", "nats-server", "pod"}
    wait_for(lambda: not [n for n, p in pids.items() if pid_alive(p)], 10, "every process of the killed run to end")
    # The next run prunes the dead run's directory.
    subprocess.run([sys.executable, "-c", "from compozy_operator.testenv.workdir import new_run_dir; new_run_dir()"],
                   env=env, check=True)
    assert not Path(facts["workdir"]).exists()


def test_build_script_without_go_says_what_to_install(tmp_path: Path) -> None:
    assert REPO is not None
    bash = shutil.which("bash")
    path = ":".join(d for d in os.environ["PATH"].split(":") if not (Path(d) / "go").exists())
    out = subprocess.run([bash, str(REPO / "hack" / "testenv" / "build.sh")], capture_output=True, text=True,
                         env={"PATH": path, "HOME": str(tmp_path), "COMPOZY_TESTENV_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 3
    assert "Go 1." in out.stderr and "is needed to build the local cluster" in out.stderr
    assert out.stdout == ""


def test_build_script_prints_the_cached_bin_dir_without_building(devenv: DevEnvironment) -> None:
    assert REPO is not None
    out = subprocess.run([str(REPO / "hack" / "testenv" / "build.sh"), "--print"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    bindir = Path(out.stdout.strip())
    assert bindir == devenv.bindir
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "etcd", "helm",
                 "nats-server"):
        assert os.access(bindir / name, os.X_OK), name
    helm = subprocess.run([str(bindir / "helm"), "version", "--short"], capture_output=True, text=True)
    assert helm.stdout.startswith("v3.19.5"), helm.stdout
    kubectl = subprocess.run([str(bindir / "kubectl"), "version", "--client", "-o", "json"], capture_output=True, text=True)
    assert json.loads(kubectl.stdout)["clientVersion"]["gitVersion"] == "v1.34.4"
