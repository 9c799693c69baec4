"""``compozy dev demo`` (``make demo``): a workflow runs end to end on the local cluster.

Starts the control plane, a process node and NATS, ``helm install``s the chart (CRDs, RBAC, the
operator Deployment; NATS external, pointing at the local nats-server), waits for the operator
pod to be Ready on the process node, applies ``examples/hello-workflow.yaml``, follows the run
as ``compozy watch`` does (one line per change), and prints ``compozy get`` (the task tree),
``kubectl get workflowexecutions`` and the execution's output.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from ..cli.connect import connect
from ..cli.render import render_get, utc_now
from ..cli.runs import Live, follow
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


def _watch(env: DevEnvironment) -> dict:
    """``compozy watch`` of the run, as on a pipe (a line per change: the demo's output is a log)."""
    print(f"\n$ compozy watch {EXECUTION}", flush=True)
    target = connect(argparse.Namespace(kubeconfig=str(env.kubeconfig), context=None, namespace="default"))
    try:
        return follow(target, EXECUTION, Live(redraw=False), within=120)
    finally:
        target.kube.close()


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
        run = _watch(env)
        status = run.get("status") or {}
        print(f"\n{EXECUTION} finished in {time.monotonic() - t1:.1f}s")
        print(f"\n$ compozy get {EXECUTION}\n{render_get(run, utc_now())}", flush=True)
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
