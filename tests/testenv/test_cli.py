"""``compozy dev up`` / ``env`` / ``down`` as a person would use them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.workdir import free_port


def test_dev_up_env_down(devenv: DevEnvironment, tmp_path: Path) -> None:
    api_port = str(free_port())
    env = {**os.environ, "COMPOZY_TESTENV_BIN": str(devenv.bindir), "COMPOZY_TESTENV_RUNS": str(tmp_path),
           "COMPOZY_API_PORT": api_port}
    compozy = [sys.executable, "-m", "compozy_operator.cli"]
    up = subprocess.Popen([*compozy, "dev", "up"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        while not any(line.startswith("kubectl get nodes") for line in lines):
            line = up.stdout.readline()
            assert line, f"compozy dev up ended early: {''.join(lines)}"
            lines.append(line)
        exports = dict(line[len("export "):].strip().split("=", 1) for line in lines if line.startswith("export "))
        assert exports["NATS_URL"].startswith("nats://127.0.0.1:") and exports["NATS_TOKEN"]
        nodes = subprocess.run([str(devenv.bindir / "kubectl"), "get", "nodes"], capture_output=True, text=True,
                               env={**env, "KUBECONFIG": exports["KUBECONFIG"]})
        assert "process-node-1   Ready" in nodes.stdout, nodes.stderr

        # the kubeconfig says where api.Service of an operator run by hand with these exports would be
        # (`compozy logs` goes there, over HTTPS, with the kubeconfig's client certificate)
        assert exports["COMPOZY_API_CLIENT_CA"] == "cluster"
        assert Path(exports["COMPOZY_API_CERT_FILE"]).is_file() and Path(exports["COMPOZY_API_KEY_FILE"]).is_file()
        logs = subprocess.run([*compozy, "logs", "r"], capture_output=True, text=True,
                              env={**env, "KUBECONFIG": exports["KUBECONFIG"]})
        assert logs.returncode == 1 and f"cannot reach api.Service at https://127.0.0.1:{api_port}" in logs.stderr

        printed = subprocess.run([*compozy, "dev", "env"], capture_output=True, text=True, env=env)
        assert f"export KUBECONFIG={exports['KUBECONFIG']}" in printed.stdout

        down = subprocess.run([*compozy, "dev", "down"], capture_output=True, text=True, env=env)
        assert down.returncode == 0 and "stopped the local cluster" in down.stdout
        assert up.wait(30) == 0
        assert not Path(exports["KUBECONFIG"]).exists(), "the run directory is removed on stop"
    finally:
        if up.poll() is None:
            up.kill()
