"""``make demo`` (``compozy dev demo``): the chart installed by Helm runs the example on a fresh cluster."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from compozy_operator.testenv import DevEnvironment


def test_demo_installs_with_helm_and_prints_the_result(devenv: DevEnvironment, tmp_path: Path) -> None:
    env = {**os.environ, "COMPOZY_TESTENV_BIN": str(devenv.bindir), "COMPOZY_TESTENV_RUNS": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "compozy_operator.cli", "dev", "demo"], capture_output=True, text=True,
                         env=env, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "$ helm install compozy-operator charts/compozy-operator -n compozy-system" in out.stdout
    assert re.search(r"operator Ready [\d.]+s after helm install", out.stdout)
    assert re.search(r"compozy-operator-\S+\s+1/1\s+Running\s+0\s+\S+\s+127\.0\.0\.1\s+process-node-1", out.stdout)
    assert re.search(r"hello-1\s+hello\s+Succeeded\s+2/2", out.stdout)
    # the compozy program with the kubeconfig alone: submit --watch, then logs (client certificate -> api.Service)
    assert "$ compozy submit hello --name hello-1 -p name=world" in out.stdout
    assert re.search(r"\d\d:\d\d:\d\d hello-1 Succeeded 2/2", out.stdout)
    assert re.search(r"\$ compozy logs hello-1\n(.+\n)*\S+ runtime count\[1\] info counted 9 words \(attempt 1\)", out.stdout)
    assert '"greeting": "HELLO, WORLD: YOUR TEXT HAS 9 WORDS"' in out.stdout
    assert not list(tmp_path.glob("run-*")), "the demo stops everything and removes its run directory"
