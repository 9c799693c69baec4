"""The ``compozy`` command line."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path


def _print_exports(exports: dict[str, str]) -> None:
    for key, value in exports.items():
        print(f"export {key}={value}")


def _live_runs() -> list[Path]:
    from .testenv.workdir import prune_stale_runs, runs_root

    prune_stale_runs()
    return sorted(runs_root().glob("run-*/env.json"), key=lambda p: p.stat().st_mtime)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def dev_up(args: argparse.Namespace) -> int:
    from .testenv import ComponentError, DevEnvironment

    started = time.monotonic()
    env = DevEnvironment.start(nodes=args.nodes)
    try:
        print(f"# local cluster up in {time.monotonic() - started:.1f}s ({args.nodes} process node(s)); "
              f"Ctrl-C stops it. In another shell:", flush=True)
        _print_exports(env.exports())
        print(f"export PATH={env.bindir}:$PATH")
        print("kubectl get nodes", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)
        while True:
            time.sleep(1)
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


def dev_demo(args: argparse.Namespace) -> int:
    from .testenv.demo import run_demo

    return run_demo(args.keep)


def validate(args: argparse.Namespace) -> int:
    from .manifests import validate_files

    count, problems = validate_files(args.files)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {count} file(s)", file=sys.stderr)
        return 1
    print(f"{count} file(s) valid")
    return 0


def operator(_: argparse.Namespace) -> int:
    from .operator_main import run

    run()
    return 0


def task_run(_: argparse.Namespace) -> int:
    from .task_executor import main as run_task

    return run_task()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compozy", description="Compozy Operator command line")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("operator", help="run the operator (settings from COMPOZY_* environment variables)"
                   ).set_defaults(func=operator)
    check = sub.add_parser("validate", help="check Workflow and WorkflowExecution manifests offline")
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=validate)
    task = sub.add_parser("task", help="task pod entrypoints")
    task_sub = task.add_subparsers(dest="task_command", required=True)
    task_sub.add_parser("run", help="run the task attempt named by COMPOZY_* variables (in a task pod)"
                        ).set_defaults(func=task_run)
    dev = sub.add_parser("dev", help="the local cluster (kube-apiserver, etcd, process nodes, NATS)")
    dev_sub = dev.add_subparsers(dest="dev_command", required=True)
    up = dev_sub.add_parser("up", help="start the local cluster in the foreground")
    up.add_argument("--nodes", type=int, default=1, help="process nodes to start (default 1)")
    up.set_defaults(func=dev_up)
    dev_sub.add_parser("env", help="print the export lines of the running local cluster").set_defaults(func=dev_env)
    dev_sub.add_parser("down", help="stop the running local cluster").set_defaults(func=dev_down)
    demo = dev_sub.add_parser("demo", help="start the local cluster, run a pod on it, publish over NATS, stop")
    demo.add_argument("--keep", action="store_true", help="keep the cluster running until Ctrl-C")
    demo.set_defaults(func=dev_demo)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
