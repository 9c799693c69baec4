"""The ``compozy`` command line (also ``kubectl compozy``: the ``kubectl-compozy`` entry point).

Verbs by seam: :mod:`.runs` (the workflow verbs, over the Kubernetes API), :mod:`.logs` (log
lines, over api.Service), :mod:`.local` (validate, version, and the operator's and task pods'
entrypoints), :mod:`.dev` (the local cluster). Pure parsing and rendering live in :mod:`.render`.

Exit codes: 0 done; 1 an error, or with ``--wait``/``watch`` a run that did not succeed; 2 usage
(argparse's errors included).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse

TASK_RUN = ["task", "run"]  # a task pod's command (pods.task_pod)


def parser(prog: str = "compozy") -> argparse.ArgumentParser:
    import argparse  # noqa: PLC0415 - none of this on a task pod's start: see main

    from . import dev, local, logs, runs  # noqa: PLC0415

    p = argparse.ArgumentParser(prog=prog, description="Compozy: run and follow AI workflows on Kubernetes")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    runs.add_parsers(sub)
    logs.add_parser(sub)
    local.add_parsers(sub)
    dev.add_parser(sub)
    return p


def main(argv: list[str] | None = None, prog: str = "compozy") -> int:
    if (sys.argv[1:] if argv is None else argv) == TASK_RUN:
        # Every task attempt starts a process with this: it loads none of the client's modules
        # (the kubernetes client, yaml, pydantic), only the runner's (docs/performance.md).
        from .local import task_run  # noqa: PLC0415

        return task_run()
    from .connect import CliError  # noqa: PLC0415
    from .render import UsageError  # noqa: PLC0415

    p = parser(prog)
    args = p.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def kubectl_main() -> int:
    """``kubectl compozy ...``: kubectl finds ``kubectl-compozy`` on the PATH."""
    return main(prog="kubectl compozy")
