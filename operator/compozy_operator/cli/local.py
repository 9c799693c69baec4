"""Commands that need no cluster credentials: ``validate`` (offline checks), ``version``, and the
entrypoints of the operator's own processes (``operator``, ``task run``, ``runner``)."""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import TYPE_CHECKING

from .. import __version__

if TYPE_CHECKING:
    import argparse


VALIDATE_SECONDS = 2.0  # CPU seconds one input check of `compozy validate` may take


def validate(args: argparse.Namespace) -> int:
    """Exit 0: valid (warnings allowed); 1: errors; 2: usage (argparse)."""
    from ..manifests import validate as check
    from ..sandbox_worker import install_guard

    install_guard(VALIDATE_SECONDS)  # an input schema's regex may backtrack for hours on a bad input
    report = check(args.targets, strict=args.strict)
    for finding in report.findings:
        print(finding, file=sys.stderr)
    if report.unchecked:
        print(f"note: not checked offline: {'; '.join(report.unchecked)}", file=sys.stderr)
    errors, warnings = len(report.errors), len(report.warnings)
    if errors:
        print(f"{errors} error(s), {warnings} warning(s) in {report.files} file(s)", file=sys.stderr)
        return 1
    print(f"{report.files} file(s) valid" + (f", {warnings} warning(s)" if warnings else ""))
    return 0


def operator(_: argparse.Namespace) -> int:
    from ..operator_main import run

    run()
    return 0


def task_run(_: argparse.Namespace | None = None) -> int:
    load_nats_without_aiohttp(os.environ.get("COMPOZY_NATS_URL", ""))
    from ..task_executor import main as run_task

    return run_task()


def runner(args: argparse.Namespace) -> int:
    from ..pool_runner import main as run_pool

    return run_pool(args.pool)


def load_nats_without_aiohttp(url: str) -> None:
    """Load nats-py as it loads where aiohttp is not installed (aiohttp is its optional extra, for
    the websocket transport only; it is in the image for kopf): its client imports aiohttp eagerly,
    ~90 ms of CPU that every task attempt would pay for nothing. aiohttp is hidden only while
    nats-py loads, so anything imported later (a tool's own ``import aiohttp``) gets it as usual.
    A ``ws://`` or ``wss://`` NATS URL needs that transport: nats-py then loads as it is."""
    if url.split("://", 1)[0].lower() in ("ws", "wss") or "aiohttp" in sys.modules \
            or "nats.aio.transport" in sys.modules:
        return
    sys.modules["aiohttp"] = None  # type: ignore[assignment]  # `import aiohttp` raises ImportError
    try:
        importlib.import_module("nats.aio.client")
    finally:
        del sys.modules["aiohttp"]




def version(args: argparse.Namespace) -> int:
    """The client's version (no cluster needed)."""
    if args.output == "json":
        print(json.dumps({"clientVersion": __version__}))
    elif args.output == "yaml":
        print(f"clientVersion: {__version__}")
    else:
        print(f"compozy {__version__}")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("operator", help="run the operator (settings from COMPOZY_* environment variables)"
                   ).set_defaults(func=operator)
    check = sub.add_parser(
        "validate", help="check Workflow and WorkflowExecution manifests offline, read as kubectl reads them",
        description="Check manifests as the cluster will see them: YAML read as kubectl reads it (YAML 1.1 "
        "booleans warned about), the models, references, graph and templates, and each execution's input "
        "against its Workflow's schema (defaults applied). Prints one line per finding, "
        "file:line: error|warning|note: path: message. Exit 0: valid (warnings allowed), 1: errors, 2: usage.")
    check.add_argument("targets", nargs="+", metavar="FILE|DIR|-",
                       help="a file, a directory (every *.yaml, *.yml, *.json in it, recursively) or - (stdin); "
                       "multi-document files and kind: List are read whole")
    check.add_argument("--strict", action="store_true",
                       help="an execution whose Workflow is not among the files is an error (default: a note)")
    check.set_defaults(func=validate)
    task = sub.add_parser("task", help="task pod entrypoints")
    task_sub = task.add_subparsers(dest="task_command", required=True)
    task_sub.add_parser("run", help="run the task attempt named by COMPOZY_* variables (in a task pod)"
                        ).set_defaults(func=task_run)
    pool = sub.add_parser("runner", help="a RunnerPool's warm runner (in a runner pod; docs/pools.md)")
    pool.add_argument("--pool", required=True, help="the RunnerPool's name (its namespace: COMPOZY_NAMESPACE)")
    pool.set_defaults(func=runner)
    ver = sub.add_parser("version", help="print the client's version")
    ver.add_argument("-o", "--output", choices=["json", "yaml"], help="print it as JSON or YAML")
    ver.set_defaults(func=version)
