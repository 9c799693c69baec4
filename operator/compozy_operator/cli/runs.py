"""The workflow verbs: submit, list, get, watch, cancel, retry, resubmit, signal.

They talk to the Kubernetes API with the kubeconfig (:mod:`.connect`) and build every object and
patch with :mod:`..execution_requests`, so a run started here is the run api.Service or kubectl
would start. Exit codes: 0 done, 1 an error (or with ``--wait``/``watch`` a run that did not
succeed), 2 bad usage.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from urllib3.exceptions import HTTPError as Urllib3Error

from ..execution_requests import (LABEL_WORKFLOW, PHASES, cancel_patch, new_execution, phase_selector, resubmission,
                                  retry_patch, stamp_created)
from ..kube import ApiException
from ..resources.models import TERMINAL_PHASES, check_duration
from . import render
from .connect import CliError, Target, add_flags, api_message, call, connect
from .render import JSON, Style, UsageError

WATCH_SECONDS = 60  # one watch request; then it is renewed from the last resourceVersion


def terminal(stream: TextIO) -> bool:
    return stream.isatty()


def style_for(stream: TextIO) -> Style:
    return Style(colour=terminal(stream) and not os.environ.get("NO_COLOR"))


def _print(obj: Any, fmt: str | None) -> bool:
    """Print ``obj`` as ``-o`` asks; False when no ``-o`` was given."""
    if not fmt:
        return False
    print(render.dump(obj, fmt))
    return True


def _read_input(args: argparse.Namespace) -> Any:
    if not getattr(args, "input_file", None):
        return None
    source = args.input_file
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
    except OSError as e:
        raise UsageError(f"--input-file {source}: {e.strerror or e}") from None
    return render.load_input(text, source)


def _get(t: Target, name: str) -> JSON:
    try:
        return t.kube.get(t.execution(name))
    except ApiException as e:
        if e.status == 404:
            raise CliError(f"WorkflowExecution {name!r} not found in namespace {t.namespace}") from None
        raise CliError(f"reading {name}: {api_message(e)}") from None
    except (OSError, Urllib3Error) as e:
        raise CliError(f"reading {name}: cannot reach the Kubernetes API: {e}") from None


def check_workflow(t: Target, workflow: str) -> None:
    """A Workflow of that name exists, or an error naming the close ones (a typo, another namespace)."""
    try:
        t.kube.get(f"{t.workflows()}/{workflow}")
        return
    except ApiException as e:
        if e.status != 404:
            return  # e.g. no `get workflows` right: creating the run tells the truth
    except (OSError, Urllib3Error) as e:
        raise CliError(f"cannot reach the Kubernetes API: {e}") from None
    names = [w["metadata"]["name"] for w in call("listing workflows", t.kube.get, t.workflows()).get("items", [])]
    close = difflib.get_close_matches(workflow, names, n=3, cutoff=0.5)
    hint = (f"; did you mean {' or '.join(close)}?" if close else
            f"; workflows there: {', '.join(sorted(names)[:10])}" if names else "; there are no workflows there")
    raise CliError(f"workflow {workflow!r} not found in namespace {t.namespace}{hint}")


def follow(t: Target, name: str, show: Any, obj: JSON | None = None, restarted: bool = True,
           within: float | None = None) -> JSON:
    """Call ``show(obj)`` with every new version of the run until it ends; return the last one.

    A watch on the one object, renewed from its last resourceVersion (a get when the server says
    that version is too old); a deleted run is an error. ``restarted=False`` (just retried): the
    run's old end does not count until the operator has taken the retry up (a phase that is not
    an end seen, ``status.retries`` reaching ``spec.retry``, or ``observedGeneration`` the retried
    generation). ``within``: seconds
    after which a run that has not ended is an error (default: wait as long as it runs)."""
    deadline = None if within is None else time.monotonic() + within
    obj = obj or _get(t, name)
    generation = obj["metadata"].get("generation") or 0
    rounds = (obj.get("spec") or {}).get("retry") or 0

    def ended(o: JSON) -> bool:
        nonlocal restarted
        status = o.get("status") or {}
        restarted = (restarted or not render.ended(o) or (status.get("retries") or 0) >= rounds > 0
                     or (status.get("observedGeneration") or 0) >= generation)
        return restarted and render.ended(o)

    show(obj)
    while not ended(obj):
        if deadline is not None and time.monotonic() > deadline:
            raise CliError(f"{name} did not end within {within:.0f}s")
        version = obj["metadata"]["resourceVersion"]
        left = WATCH_SECONDS if deadline is None else int(deadline - time.monotonic()) + 1
        seconds = max(1, min(WATCH_SECONDS, left))
        try:
            for event in t.kube.watch(t.executions(), version, seconds, fieldSelector=f"metadata.name={name}"):
                kind = event.get("type")
                if kind == "DELETED":
                    raise CliError(f"{name} was deleted before it ended")
                if kind == "ERROR":  # 410 Gone: the version is too old; start again from a get
                    break
                if kind in ("ADDED", "MODIFIED"):
                    obj = event["object"]
                    show(obj)
                    if ended(obj):
                        return obj
        except (ApiException, OSError, Urllib3Error, ValueError):
            time.sleep(1)  # a dropped connection (an API server restart): read again, watch again
        obj = _get(t, name)
        show(obj)
    return obj


class Live:
    """``watch`` and ``--watch``: on a terminal the tree is redrawn in place; on a pipe one line
    per change is printed (:func:`.render.changes`)."""

    def __init__(self, expand: bool = False, stream: TextIO | None = None, redraw: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = terminal(self.stream) if redraw is None else redraw
        self.style = style_for(self.stream)
        self.expand = expand
        self.last: JSON | None = None

    def __call__(self, obj: JSON) -> None:
        if self.tty:
            text = render.render_get(obj, render.utc_now(), self.expand, self.style)
            self.stream.write("\x1b[H\x1b[2J" + text + "\n")
        else:
            at = render.utc_now().strftime("%H:%M:%S")
            for line in render.changes(self.last, obj, at):
                self.stream.write(line + "\n")
        self.stream.flush()
        self.last = obj


class Progress:
    """``--wait``: a one-line progress on stderr when it is a terminal, nothing otherwise."""

    def __init__(self) -> None:
        self.tty = terminal(sys.stderr)

    def __call__(self, obj: JSON) -> None:
        if self.tty:
            status = obj.get("status") or {}
            sys.stderr.write(f"\r\x1b[K{obj['metadata']['name']} {status.get('phase') or 'Pending'} "
                             f"{status.get('progress') or ''}")
            sys.stderr.flush()

    def done(self) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def summary(obj: JSON) -> str:
    status = obj.get("status") or {}
    phase = status.get("phase")
    lines = [f"{obj['metadata']['name']} {phase}" + (f" in {status['duration']}" if status.get("duration") else "")]
    if phase == "Succeeded" and "output" in status:
        lines.append(f"output: {json.dumps(status['output'])}")
    elif phase != "Succeeded":
        error = status.get("error") or {}
        what = error.get("message") or status.get("message") or ""
        lines.append(f"error: {what}")
    return "\n".join(lines)


def after_start(t: Target, args: argparse.Namespace, obj: JSON, verb: str) -> int:
    """What submit, resubmit and retry do once the request is made: print it, or follow the run
    (``--watch``: live; ``--wait``: quietly) and exit 0 if it succeeded, 1 otherwise."""
    name = obj["metadata"]["name"]
    if getattr(args, "watch", False):
        live = Live(args.expand, sys.stderr if args.output else None)  # stdout: the -o object alone
        last = follow(t, name, live, obj, restarted=verb != "retried")
        if args.output:
            _print(last, args.output)
        return render.exit_code((last.get("status") or {}).get("phase"))
    if getattr(args, "wait", False):
        progress = Progress()
        last = follow(t, name, progress, obj, restarted=verb != "retried")
        progress.done()
        if not _print(last, args.output):
            print(summary(last))
        return render.exit_code((last.get("status") or {}).get("phase"))
    if not _print(obj, args.output):
        print(f"workflowexecution.compozy.dev/{name} {verb}")
    return 0


def submit(args: argparse.Namespace) -> int:
    params = render.parse_params(args.param)
    labels = render.parse_labels(args.label)
    if args.timeout:
        try:
            check_duration(args.timeout, positive=True)
        except ValueError as e:
            raise UsageError(f"--timeout: {e}") from None
    value = render.merge_input(_read_input(args), params)
    t = connect(args)
    check_workflow(t, args.workflow)
    body = new_execution(args.workflow, value, name=args.name, labels=labels, timeout=args.timeout)
    if args.generate_name:
        body["metadata"]["generateName"] = args.generate_name
    created = call(f"starting a run of {args.workflow}", t.kube.create, t.executions(),
                   stamp_created(body, time.time()))
    return after_start(t, args, created, "created")


def list_runs(args: argparse.Namespace) -> int:
    phases = {p.strip() for p in (args.phase or "").split(",") if p.strip()}
    if unknown := phases - set(PHASES):
        raise UsageError(f"--phase {','.join(sorted(unknown))}: not a phase (phases: {', '.join(PHASES)})")
    selectors = [s for s in (args.selector, f"{LABEL_WORKFLOW}={args.workflow}" if args.workflow else None) if s]
    # one phase: selected by the API server; several: filtered here (field selectors have no "or")
    fields = phase_selector(next(iter(phases))) if len(phases) == 1 else None
    t = connect(args)
    items: list[JSON] = []
    token = None
    while True:
        page = call("listing executions", t.kube.get, t.executions("" if args.all_namespaces else None),
                    labelSelector=",".join(selectors) or None, fieldSelector=fields, limit=500,
                    **({"continue": token} if token else {}))
        items += page.get("items") or []
        token = (page.get("metadata") or {}).get("continue")
        if not token:
            break
    if phases:
        items = [o for o in items if ((o.get("status") or {}).get("phase") or "Pending") in phases]
    items.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"].get("creationTimestamp", ""),
                              o["metadata"]["name"]))
    if _print({"apiVersion": "v1", "kind": "List", "items": items}, args.output):
        return 0
    if not items:
        where = "any namespace" if args.all_namespaces else f"namespace {t.namespace}"
        print(f"No executions found in {where}.", file=sys.stderr)
        return 0
    print(render.list_table(items, render.utc_now(), args.all_namespaces, style_for(sys.stdout)))
    return 0


def get(args: argparse.Namespace) -> int:
    t = connect(args)
    obj = _get(t, args.execution)
    if not _print(obj, args.output):
        print(render.render_get(obj, render.utc_now(), args.expand, style_for(sys.stdout)))
    return 0


def watch(args: argparse.Namespace) -> int:
    t = connect(args)
    last = follow(t, args.execution, Live(args.expand))
    return render.exit_code((last.get("status") or {}).get("phase"))


def cancel(args: argparse.Namespace) -> int:
    t = connect(args)
    obj = _get(t, args.execution)
    phase = (obj.get("status") or {}).get("phase")
    if phase in TERMINAL_PHASES:
        raise CliError(f"{args.execution} has already ended ({phase}); nothing to cancel")
    patched = call(f"cancelling {args.execution}", t.kube.merge_patch, t.execution(args.execution), cancel_patch())
    if not _print(patched, args.output):
        print(f"workflowexecution.compozy.dev/{args.execution} cancel requested (it ends Cancelled)")
    return 0


def retry(args: argparse.Namespace) -> int:
    t = connect(args)
    obj = _get(t, args.execution)
    phase = (obj.get("status") or {}).get("phase")
    if phase not in TERMINAL_PHASES or phase == "Succeeded":
        raise CliError(f"{args.execution} is {phase or 'Pending'}: only a run that ended Failed, TimedOut or "
                       "Cancelled can be retried")
    patch = retry_patch(obj)
    try:
        patched = t.kube.merge_patch(t.execution(args.execution), patch)
    except ApiException as e:
        if e.status == 409:
            raise CliError(f"{args.execution} changed while retrying it (another retry?); look with "
                           f"`compozy get {args.execution}` and try again") from None
        raise CliError(f"retrying {args.execution}: {api_message(e)}") from None
    if (patched.get("spec") or {}).get("retry") != patch["spec"]["retry"]:
        raise CliError("this cluster's WorkflowExecution resource has no spec.retry (its CRD is older than "
                       "retry support): nothing was retried; upgrade the chart's CRDs")
    return after_start(t, args, patched, "retried")


def resubmit(args: argparse.Namespace) -> int:
    params = render.parse_params(args.param)
    t = connect(args)
    old = _get(t, args.execution)
    base = _read_input(args)
    value = render.merge_input(base if base is not None else (old.get("spec") or {}).get("input"), params)
    body = resubmission(old, value, name=args.name)
    created = call(f"resubmitting {args.execution}", t.kube.create, t.executions(), stamp_created(body, time.time()))
    return after_start(t, args, created, "created")


def signal(args: argparse.Namespace) -> int:
    """No task type waits for a signal yet: the verb is reserved (ARCHITECTURE.md §9) and refuses,
    as a usage error, without touching the run."""
    raise UsageError(f"signal {args.name!r} not sent: no task type waits for signals yet (wait tasks are not "
                     "implemented), so no run can receive one")


def _output_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=["json", "yaml"], help="print the object as JSON or YAML (for scripts)")


def _follow_flags(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("-w", "--watch", action="store_true", help="follow the run live until it ends "
                      "(exit 0 if it succeeded, 1 otherwise)")
    mode.add_argument("--wait", action="store_true", help="wait for the end quietly, print the result "
                      "(exit 0 if it succeeded, 1 otherwise)")
    p.add_argument("--expand", action="store_true", help="with --watch: list collection children one by one")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    kube_flags = argparse.ArgumentParser(add_help=False)
    add_flags(kube_flags)

    def verb(name: str, help: str, func: Any, description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help, parents=[kube_flags])
        p.set_defaults(func=func)
        return p

    p = verb("submit", "start a run of a Workflow", submit,
             "Start a run of WORKFLOW (a WorkflowExecution labelled compozy.dev/workflow=WORKFLOW). "
             "Input: --input-file (JSON or YAML), then -p key=value pairs over it (values parsed as JSON "
             "where they parse: -p n=3 is a number, else strings).")
    p.add_argument("workflow", metavar="WORKFLOW")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="an input value (JSON where it parses, else a string); repeatable")
    p.add_argument("-f", "--input-file", metavar="FILE|-", help="the input, a JSON or YAML object (- for stdin)")
    names = p.add_mutually_exclusive_group()
    names.add_argument("--name", help="the run's name (default: generated, <workflow>-xxxxx)")
    names.add_argument("--generate-name", metavar="PREFIX", help="prefix of a generated name")
    p.add_argument("-l", "--label", action="append", default=[], metavar="KEY=VALUE", help="a label of the run")
    p.add_argument("--timeout", metavar="DURATION", help="the run's timeout (e.g. 10m), overriding the Workflow's")
    _follow_flags(p)
    _output_flag(p)

    p = verb("list", "list runs (executions)", list_runs)
    p.add_argument("-l", "--selector", help="label selector, e.g. team=ml")
    p.add_argument("--phase", help=f"only runs in these phases (comma-separated: {', '.join(PHASES)})")
    p.add_argument("--workflow", help="only runs of this Workflow")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="runs of every namespace")
    _output_flag(p)

    p = verb("get", "show a run: its facts and its task tree", get)
    p.add_argument("execution", metavar="EXEC")
    p.add_argument("--expand", action="store_true", help="list collection children one by one")
    _output_flag(p)

    p = verb("watch", "follow a run live until it ends (exit 0 if it succeeded, 1 otherwise)", watch,
             "Follow a run until it ends: on a terminal its tree is redrawn; on a pipe one line per change "
             "is printed. Exit 0 if it succeeded, 1 otherwise.")
    p.add_argument("execution", metavar="EXEC")
    p.add_argument("--expand", action="store_true", help="list collection children one by one")

    p = verb("cancel", "cancel a run (asynchronous: it ends Cancelled)", cancel)
    p.add_argument("execution", metavar="EXEC")
    _output_flag(p)

    p = verb("retry", "continue an ended run from its failed tasks (succeeded tasks are not run again)", retry)
    p.add_argument("execution", metavar="EXEC")
    _follow_flags(p)
    _output_flag(p)

    p = verb("resubmit", "start a new run with the same workflow and input (-p overrides input keys)", resubmit)
    p.add_argument("execution", metavar="EXEC")
    p.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                   help="an input value over the old run's (JSON where it parses, else a string); repeatable")
    p.add_argument("-f", "--input-file", metavar="FILE|-", help="a new input instead of the old run's (JSON or YAML)")
    p.add_argument("--name", help="the new run's name (default: generated)")
    _follow_flags(p)
    _output_flag(p)

    p = verb("signal", "send a signal to a run's wait tasks (not available yet: exit 2)", signal)
    p.add_argument("execution", metavar="EXEC")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--data", help="the signal's JSON payload")
