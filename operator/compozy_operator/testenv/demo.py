"""``compozy dev demo`` (``make demo``): a workflow runs end to end on the local cluster.

Starts the control plane, a process node and NATS, installs the CRDs, starts the operator,
applies ``examples/hello-workflow.yaml``, waits for the end, and prints
``kubectl get workflowexecutions`` and the execution's output.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from ..api.crd import generate
from .environment import DevEnvironment
from .operator_process import OperatorProcess
from .workdir import repo_root

EXAMPLE = "examples/hello-workflow.yaml"
EXECUTION = "hello-1"


def _kubectl(env: DevEnvironment, *args: str, stdin: str | None = None, show: bool = True) -> str:
    if show:
        print(f"\n$ kubectl {' '.join(args)}", flush=True)
    out = subprocess.run([str(env.bindir / "kubectl"), "--kubeconfig", str(env.kubeconfig), *args], input=stdin,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
    if show:
        print(out.stdout, end="", flush=True)
    return out.stdout


def _wait_finished(env: DevEnvironment, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = json.loads(_kubectl(env, "get", "wfx", EXECUTION, "-o", "json", show=False)).get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed", "TimedOut", "Cancelled"):
            return status
        time.sleep(0.3)
    raise TimeoutError(f"{EXECUTION} did not finish in {timeout:.0f}s")


def run_demo(keep: bool = False) -> int:
    root = repo_root()
    example = (root or Path.cwd()) / EXAMPLE
    t0 = time.monotonic()
    with DevEnvironment.start() as env:
        print(f"local cluster up in {time.monotonic() - t0:.1f}s: kube-apiserver {env.cluster.server}, "
              f"NATS {env.nats.url} (token auth)", flush=True)
        _kubectl(env, "get", "nodes")
        crds = "---\n".join(generate().values())
        for _ in range(50):  # a just-started apiserver may still be initialising its storage
            try:
                _kubectl(env, "apply", "-f", "-", stdin=crds, show=False)
                break
            except RuntimeError:
                time.sleep(0.2)
        _kubectl(env, "wait", "--for=condition=Established", "crd/workflows.compozy.dev",
                 "crd/workflowexecutions.compozy.dev", show=False)
        operator = OperatorProcess(env)
        operator.start()
        print(f"\noperator running as a local process (pid {operator.proc.pid}), metrics on "
              f"http://127.0.0.1:{operator.port}/metrics", flush=True)
        try:
            t1 = time.monotonic()
            _kubectl(env, "apply", "-f", str(example))
            status = _wait_finished(env)
            print(f"\n{EXECUTION} finished in {time.monotonic() - t1:.1f}s")
            _kubectl(env, "get", "workflowexecutions")
            print(f"\noutput of {EXECUTION}:\n{json.dumps(status.get('output'), indent=2)}")
            if status["phase"] != "Succeeded":
                print(f"\n{EXECUTION} ended {status['phase']}: {status.get('message')}")
            if keep:
                print("\nThe cluster stays up; in another shell:")
                for k, v in env.exports().items():
                    print(f"export {k}={v}")
                print(f"export PATH={env.bindir}:$PATH\nCtrl-C stops it.", flush=True)
                try:
                    while True:
                        time.sleep(1)
                        env.check_alive()
                except KeyboardInterrupt:
                    pass
        finally:
            operator.stop()
    print(f"\ndemo done in {time.monotonic() - t0:.1f}s; everything stopped")
    return 0 if status["phase"] == "Succeeded" else 1
