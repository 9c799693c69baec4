"""``compozy dev``: the local cluster (kube-apiserver, etcd, process nodes, NATS) for tests and the demo."""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..testenv import DevEnvironment


def _print_exports(exports: dict[str, str]) -> None:
    for key, value in exports.items():
        print(f"export {key}={value}")


def _live_runs() -> list[Path]:
    from ..testenv.workdir import prune_stale_runs, runs_root

    prune_stale_runs()
    return sorted(runs_root().glob("run-*/env.json"), key=lambda p: p.stat().st_mtime)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


# ``compozy dev nats stop|start`` asks the ``dev up`` process, which owns nats-server, by signal;
# it answers in env.json: ``nats`` (running|stopped), ``natsRequests`` (how many it handled),
# ``natsError`` (why the last one failed, or "").
NATS_SIGNALS = {"stop": signal.SIGUSR1, "start": signal.SIGUSR2}


def _handle_nats_request(env: DevEnvironment, action: str, handled: int) -> None:
    from ..testenv import ComponentError

    error = ""
    try:
        if action == "stop":
            env.stop_nats()
        elif not env.nats.running:
            env.resume_nats()
    except (ComponentError, OSError) as err:
        error = str(err)
        print(f"error: nats-server did not {action}: {err}", file=sys.stderr, flush=True)
    else:
        print(f"# nats-server {'stopped' if action == 'stop' else 'running'} ({env.nats.url})", flush=True)
    env.write_state(natsRequests=handled, natsError=error)


def dev_up(args: argparse.Namespace) -> int:
    from ..testenv import ComponentError, DevEnvironment

    from ..kube import set_context_extension
    from ..testenv.pki import ADMIN_GROUP, ADMIN_USER, write_loopback_tls
    from .logs import API_EXTENSION, API_PORT

    started = time.monotonic()
    env = DevEnvironment.start(nodes=args.nodes)
    try:
        # an operator run here by hand (`compozy operator` with these exports) serves api.Service over
        # HTTPS, trusting the cluster's client CA: `compozy logs` signs in with the kubeconfig's certificate
        tls = write_loopback_tls(env.workdir / "api-tls", "compozy-api")
        port = os.environ.get("COMPOZY_API_PORT") or str(API_PORT)
        set_context_extension(env.kubeconfig, API_EXTENSION, {
            "url": f"https://127.0.0.1:{port}",
            "certificate-authority-data": base64.b64encode(tls.ca_cert.read_bytes()).decode()})
        api = {"COMPOZY_API_CERT_FILE": str(tls.cert), "COMPOZY_API_KEY_FILE": str(tls.key),
               "COMPOZY_API_CLIENT_CA": "cluster",
               # the web UI without sign-in: a request with neither a token nor a certificate is the
               # kubeconfig's own identity, on loopback only (docs/ui.md)
               "COMPOZY_API_HOST": "127.0.0.1", "COMPOZY_API_LOCAL_USER": ADMIN_USER,
               "COMPOZY_API_LOCAL_GROUPS": ADMIN_GROUP}
        requests: list[str] = []
        for action, sig in NATS_SIGNALS.items():
            signal.signal(sig, lambda *_, action=action: requests.append(action))
        env.write_state(natsRequests=0, natsError="", **api)  # from now on `compozy dev nats` may signal us
        print(f"# local cluster up in {time.monotonic() - started:.1f}s ({args.nodes} process node(s)); "
              f"Ctrl-C stops it. In another shell:", flush=True)
        _print_exports(env.exports() | api)
        print(f"export PATH={env.bindir}:$PATH")
        print("kubectl get nodes", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)
        handled = 0
        while True:
            time.sleep(0.2)
            while requests:
                handled += 1
                _handle_nats_request(env, requests.pop(0), handled)
            env.check_alive()
    except KeyboardInterrupt:
        print("# stopping", flush=True)
    except ComponentError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        env.stop()
    return 0


def dev_env(_: argparse.Namespace) -> int:
    runs = _live_runs()
    if not runs:
        print("no local cluster is running (start one with: compozy dev up)", file=sys.stderr)
        return 1
    state = json.loads(runs[-1].read_text())
    _print_exports({k: v for k, v in state.items() if k.isupper()})
    return 0


def dev_down(_: argparse.Namespace) -> int:
    runs = _live_runs()
    if not runs:
        print("no local cluster is running", file=sys.stderr)
        return 0
    for env_file in runs:
        pid = int(env_file.parent.name.split("-")[1])
        os.kill(pid, signal.SIGTERM)
        print(f"stopped the local cluster of process {pid}")
    return 0


def dev_nats(args: argparse.Namespace) -> int:
    """Stop or start the nats-server of the running ``compozy dev up`` (the rest keeps running)."""
    runs = [(p, json.loads(p.read_text())) for p in _live_runs()]
    runs = [(p, state) for p, state in runs if "natsRequests" in state]  # only `dev up` answers the signals
    if not runs:
        print("no local cluster started with `compozy dev up` is running", file=sys.stderr)
        return 1
    env_file, state = runs[-1]
    pid = int(env_file.parent.name.split("-")[1])
    os.kill(pid, NATS_SIGNALS[args.action])
    deadline = time.monotonic() + args.timeout
    while (after := json.loads(env_file.read_text()))["natsRequests"] <= state["natsRequests"]:
        if time.monotonic() > deadline:
            print(f"error: the local cluster of process {pid} did not answer within {args.timeout:.0f}s",
                  file=sys.stderr)
            return 1
        time.sleep(0.1)
    if after["natsError"]:
        print(f"error: nats-server did not {args.action}: {after['natsError']}", file=sys.stderr)
        return 1
    print(f"nats-server {after['nats']} ({after['NATS_URL']})")
    return 0


def dev_demo(args: argparse.Namespace) -> int:
    from ..testenv.demo import run_demo

    return run_demo(args.keep)


def add_parser(sub: argparse._SubParsersAction) -> None:
    dev = sub.add_parser("dev", help="the local cluster (kube-apiserver, etcd, process nodes, NATS)")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    up = dev_sub.add_parser("up", help="start the local cluster in the foreground")
    up.add_argument("--nodes", type=int, default=1, help="process nodes to start (default 1)")
    up.set_defaults(func=dev_up)
    dev_sub.add_parser("env", help="print the export lines of the running local cluster").set_defaults(func=dev_env)
    dev_sub.add_parser("down", help="stop the running local cluster").set_defaults(func=dev_down)
    nats = dev_sub.add_parser("nats", help="stop or start the nats-server of the running `compozy dev up` "
                              "(an outage: the cluster keeps running, clients reconnect on start)")
    nats.add_argument("action", choices=sorted(NATS_SIGNALS))
    nats.add_argument("--timeout", type=float, default=60, help="seconds to wait for it (default 60)")
    nats.set_defaults(func=dev_nats)
    demo = dev_sub.add_parser("demo", help="start the local cluster, run a pod on it, publish over NATS, stop")
    demo.add_argument("--keep", action="store_true", help="keep the cluster running until Ctrl-C")
    demo.set_defaults(func=dev_demo)
