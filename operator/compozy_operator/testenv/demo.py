"""``compozy dev demo`` (``make demo``): a workflow runs end to end on the local cluster.

Starts the control plane, a process node and NATS, ``helm install``s the chart (CRDs, RBAC, the
operator Deployment; NATS external, pointing at the local nats-server), waits for the operator
pod to be Ready on the process node, applies ``examples/hello-workflow.yaml``, waits for the
end, and prints ``kubectl get workflowexecutions`` and the execution's output.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from .environment import DevEnvironment
from .helm import CHART, Helm, install, local_values
from .workdir import repo_root

EXAMPLE = "examples/hello-workflow.yaml"
EXECUTION = "hello-1"
RELEASE = "compozy-operator"
NAMESPACE = "compozy-system"


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
        values = local_values(env)
        print(f"\n$ helm install {RELEASE} {CHART} -n {NAMESPACE} --set {' --set '.join(values[1::2])} --wait",
              flush=True)
        t1 = time.monotonic()
        notes = install(env, Helm(env), RELEASE, NAMESPACE, values=values)
        print(notes.split("\n1. ", 1)[0].rstrip(), flush=True)
        print(f"\noperator Ready {time.monotonic() - t1:.1f}s after helm install", flush=True)
        _kubectl(env, "get", "pods", "-n", NAMESPACE, "-o", "wide")
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
    print(f"\ndemo done in {time.monotonic() - t0:.1f}s; everything stopped")
    return 0 if status["phase"] == "Succeeded" else 1
