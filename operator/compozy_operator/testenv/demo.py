"""``compozy dev demo`` (``make demo``): a workflow runs end to end on the local cluster.

Starts the control plane, a process node and NATS, ``helm install``s the chart (CRDs, RBAC, the
operator Deployment with api.Service over HTTPS; NATS external, pointing at the local nats-server),
waits for the operator pod to be Ready on the process node, applies the Workflow of
``examples/hello-workflow.yaml``, and then runs the ``compozy`` program as a user would, with the
local cluster's client-certificate kubeconfig and nothing else: ``submit --watch`` (one line per
change), ``get`` (the task tree) and ``logs`` (the run's lines, from api.Service); then
``kubectl get workflowexecutions`` and the run's output.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from .environment import DevEnvironment
from .helm import CHART, Helm, install, local_values, serve_api_over_https
from .workdir import repo_root

EXAMPLE = "examples/hello-workflow.yaml"
EXECUTION = "hello-1"
INPUT = ("name=world", "text=the quick brown fox jumps over the lazy dog")
RELEASE = "compozy-operator"
NAMESPACE = "compozy-system"


def _run(env: DevEnvironment, argv: list[str], shown: str) -> subprocess.CompletedProcess[str]:
    print(f"\n$ {shown}", flush=True)
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300,
                         env={**os.environ, "KUBECONFIG": str(env.kubeconfig)})
    print(out.stdout, end="", flush=True)
    return out


def _kubectl(env: DevEnvironment, *args: str) -> str:
    out = _run(env, [str(env.bindir / "kubectl"), *args], f"kubectl {' '.join(args)}")
    if out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
    return out.stdout


def _compozy(env: DevEnvironment, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``compozy`` program (this interpreter's), as a user runs it."""
    shown = " ".join(f"'{a}'" if " " in a else a for a in args)
    out = _run(env, [sys.executable, "-m", "compozy_operator.cli", *args], f"compozy {shown}")
    if out.stderr.strip():
        print(out.stderr, end="", file=sys.stderr, flush=True)
    return out


def _status(env: DevEnvironment) -> dict:
    kube = env.kube()
    try:
        run = kube.get(f"/apis/compozy.dev/v1alpha1/namespaces/default/workflowexecutions/{EXECUTION}")
    finally:
        kube.close()
    return (run or {}).get("status") or {}


def run_demo(keep: bool = False) -> int:
    root = repo_root()
    example = (root or Path.cwd()) / EXAMPLE
    t0 = time.monotonic()
    with DevEnvironment.start() as env:
        print(f"local cluster up in {time.monotonic() - t0:.1f}s: kube-apiserver {env.cluster.server}, "
              f"NATS {env.nats.url} (token auth)", flush=True)
        _kubectl(env, "get", "nodes")
        values = serve_api_over_https(env, NAMESPACE, local_values(env))
        print(f"\n$ helm install {RELEASE} {CHART} -n {NAMESPACE} --set {' --set '.join(values[1::2])} --wait",
              flush=True)
        t1 = time.monotonic()
        notes = install(env, Helm(env), RELEASE, NAMESPACE, values=values)
        print(notes.split("\n1. ", 1)[0].rstrip(), flush=True)
        print(f"\noperator Ready {time.monotonic() - t1:.1f}s after helm install", flush=True)
        _kubectl(env, "get", "pods", "-n", NAMESPACE, "-o", "wide")
        _kubectl(env, "apply", "-f", os.path.relpath(example))
        t1 = time.monotonic()
        submitted = _compozy(env, "submit", "hello", "--name", EXECUTION, *(a for p in INPUT for a in ("-p", p)),
                             "--watch")
        print(f"\n{EXECUTION} finished in {time.monotonic() - t1:.1f}s", flush=True)
        _compozy(env, "get", EXECUTION)
        logs = _compozy(env, "logs", EXECUTION)
        _kubectl(env, "get", "workflowexecutions")
        status = _status(env)
        print(f"\noutput of {EXECUTION}:\n{json.dumps(status.get('output'), indent=2)}")
        if status.get("phase") != "Succeeded":
            print(f"\n{EXECUTION} ended {status.get('phase')}: {status.get('message')}")
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
    ok = status.get("phase") == "Succeeded" and submitted.returncode == 0 and logs.returncode == 0
    return 0 if ok else 1
