"""What the workflow verbs print, and how they read their arguments: pure functions, no I/O.

``get`` draws a run as a tree (task, phase, attempt, duration, message) in the order of the
workflow's tasks, with a parallel task's children under it and a collection's children summarized
by phase (``--expand`` lists them). ``watch`` redraws that tree on a terminal; on a pipe it prints
one line per change (:func:`changes`), so a log file or CI output reads as a history.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import yaml

from ..reducer import TASK_TERMINAL, format_duration
from ..resources.models import TERMINAL_PHASES

JSON = dict[str, Any]
_CHILD = re.compile(r"^(?P<parent>.+)\[(?P<index>\d+)\]$")
MESSAGE_WIDTH = 100  # characters of a message in a table or tree row
_COLOURS = {"Succeeded": "32", "Failed": "31", "TimedOut": "31", "Cancelled": "33", "Running": "36",
            "Pending": "2", "Waiting": "33", "Skipped": "2"}


class UsageError(ValueError):
    """Bad command-line input (exit code 2); the message names the argument."""


def exit_code(phase: str | None) -> int:
    """``--wait`` and ``watch``: 0 for Succeeded, 1 for any other end (Failed, TimedOut, Cancelled)."""
    return 0 if phase == "Succeeded" else 1


def parse_params(pairs: list[str]) -> JSON:
    """``-p key=value`` pairs as an object: a value that parses as JSON is that JSON value
    (``n=3`` a number, ``ok=true`` a boolean, ``xs=[1,2]`` a list), anything else the string."""
    out: JSON = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"-p {pair!r}: expected key=value (e.g. -p text=hello, -p n=3)")
        try:
            value: Any = json.loads(text)
        except ValueError:
            value = text
        out[key.strip()] = value
    return out


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """``-l key=value`` pairs (labels of a new run)."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"-l {pair!r}: expected key=value")
        out[key] = value
    return out


def load_input(text: str, source: str) -> Any:
    """The content of ``--input-file`` (JSON or YAML)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise UsageError(f"--input-file {source}: neither JSON nor YAML: {e}") from None


def merge_input(base: Any, params: JSON) -> Any:
    """The run's input: the input file's object with ``-p`` values over it (None: no input given)."""
    if not params:
        return base
    if base is None:
        return params
    if not isinstance(base, dict):
        raise UsageError(f"--input-file holds a {type(base).__name__}, not an object, so -p cannot add keys to it")
    return {**base, **params}


def dump(obj: Any, fmt: str) -> str:
    """``-o json`` or ``-o yaml``."""
    if fmt == "json":
        return json.dumps(obj, indent=2)
    return yaml.safe_dump(obj, sort_keys=False).rstrip("\n")


@dataclass(frozen=True)
class Style:
    """Colour only on a terminal, and never with NO_COLOR set (https://no-color.org)."""

    colour: bool = False

    def phase(self, phase: str, width: int = 0) -> str:
        text = phase.ljust(width)
        code = _COLOURS.get(phase)
        return f"\x1b[{code}m{text}\x1b[0m" if self.colour and code else text

    def bold(self, text: str) -> str:
        return f"\x1b[1m{text}\x1b[0m" if self.colour else text


def _time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def elapsed(start: str | None, end: str | None, now: datetime) -> str:
    """Wall time between two status timestamps (to ``now`` while running): ``0.4s``, ``12s``, ``1m12s``."""
    begin = _time(start)
    if begin is None:
        return ""
    seconds = ((_time(end) or now) - begin).total_seconds()
    return f"{max(seconds, 0):.1f}s" if seconds < 10 else format_duration(seconds)


def one_line(text: str | None, width: int = MESSAGE_WIDTH) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[:width - 3] + "..."


def table(headers: list[str], rows: list[list[str]], style: Style = Style(), phase_column: int | None = None) -> str:
    """Columns padded as kubectl pads them (three spaces), a phase column coloured."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["   ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row in rows:
        cells = [style.phase(c, w) if i == phase_column else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("   ".join(cells).rstrip())
    return "\n".join(lines)


def list_table(items: list[JSON], now: datetime, all_namespaces: bool = False, style: Style = Style()) -> str:
    """``compozy list``: the columns of ``kubectl get wfx`` (and NAMESPACE with ``-A``)."""
    headers = ["NAME", "WORKFLOW", "PHASE", "PROGRESS", "AGE", "DURATION", "MESSAGE"]
    rows = []
    for obj in items:
        meta, status = obj.get("metadata") or {}, obj.get("status") or {}
        created = _time(meta.get("creationTimestamp"))
        age = format_duration((now - created).total_seconds()) if created else ""
        rows.append([meta.get("name", ""), workflow_of(obj), status.get("phase") or "Pending",
                     status.get("progress") or "", age, status.get("duration") or "", one_line(status.get("message"))])
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
        rows = [[(o.get("metadata") or {}).get("namespace", ""), *r] for o, r in zip(items, rows)]
    return table(headers, rows, style, headers.index("PHASE"))


def workflow_of(obj: JSON) -> str:
    status, spec = obj.get("status") or {}, obj.get("spec") or {}
    return status.get("workflow") or (spec.get("workflowRef") or {}).get("name") or ("<inline>" if spec.get("workflow")
                                                                                      else "")


@dataclass(frozen=True)
class Row:
    """One line of the tree: ``depth`` 0 for a top-level task."""

    depth: int
    task: str
    phase: str
    attempt: str = ""
    duration: str = ""
    message: str = ""


def _task_row(depth: int, key: str, t: JSON, now: datetime) -> Row:
    error = t.get("error") or {}
    message = error.get("message") or t.get("message") or ""
    if t.get("phase") == "Waiting" and t.get("notBefore"):
        message = message or f"retry at {t['notBefore']}"
    return Row(depth, key, t.get("phase") or "Pending", str(t.get("attempt") or ""),
               elapsed(t.get("startedAt") or t.get("dispatchedAt"), t.get("finishedAt"), now), one_line(message))


def _derived_phase(children: list[JSON]) -> str:
    """The phase of a composite task that has no status entry yet: its children's."""
    if any(c.get("phase") not in TASK_TERMINAL for c in children):
        return "Running"
    return "Running" if children else "Pending"


def _summary(children: list[JSON]) -> str:
    counts = Counter(c.get("phase") or "Pending" for c in children)
    order = ["Running", "Pending", "Waiting", "Succeeded", "Failed", "Cancelled", "Skipped"]
    parts = [f"{counts.pop(p)} {p}" for p in order if p in counts] + [f"{n} {p}" for p, n in sorted(counts.items())]
    return f"{len(children)} children: {', '.join(parts)}"


def _spec_tasks(status: JSON, spec: JSON) -> list[JSON]:
    """The workflow's tasks as the run knows them: its snapshot, else an inline spec, else none."""
    snapshot = (status.get("snapshot") or {}).get("spec") or spec.get("workflow") or {}
    tasks = snapshot.get("tasks")
    return [t for t in tasks if isinstance(t, dict) and isinstance(t.get("id"), str)] if isinstance(tasks, list) else []


def tree_rows(obj: JSON, now: datetime, expand: bool = False) -> list[Row]:
    """The rows of ``compozy get``: tasks that ran (or run), in workflow order; a parallel task's
    children under it; a collection's children summarized by phase, or listed with ``expand``."""
    status, spec = obj.get("status") or {}, obj.get("spec") or {}
    entries: dict[str, JSON] = {k: v for k, v in (status.get("tasks") or {}).items() if isinstance(v, dict)}
    collections: dict[str, list[str]] = {}
    for key in entries:
        if m := _CHILD.match(key):
            collections.setdefault(m["parent"], []).append(key)
    for keys in collections.values():
        keys.sort(key=lambda k: int(_CHILD.match(k)["index"]))  # type: ignore[index]
    rows: list[Row] = []
    shown: set[str] = set()

    def composite(key: str, children: list[str], summarize: bool) -> None:
        child_entries = [entries[c] for c in children]
        if key in entries:
            row = _task_row(0, key, entries[key], now)
        else:
            row = Row(0, key, _derived_phase(child_entries))
        if summarize and not expand:
            row = Row(0, row.task, row.phase, row.attempt, row.duration,
                      one_line(f"{_summary(child_entries)}" + (f"; {row.message}" if row.message else "")))
        rows.append(row)
        shown.add(key)
        if not summarize or expand:
            rows.extend(_task_row(1, c, entries[c], now) for c in children)
        shown.update(children)

    for task in _spec_tasks(status, spec):
        tid = task["id"]
        if task.get("type") == "parallel":
            kids = [c["id"] for c in task.get("tasks") or [] if isinstance(c, dict) and c.get("id") in entries]
            if kids or tid in entries:
                composite(tid, kids, summarize=False)
        elif tid in collections:
            composite(tid, collections[tid], summarize=True)
        elif tid in entries:
            rows.append(_task_row(0, tid, entries[tid], now))
            shown.add(tid)
    # what the spec did not place (no snapshot in the status): in status order
    for key in entries:
        if key in shown:
            continue
        parent = _CHILD.match(key)
        if parent and parent["parent"] not in shown:
            composite(parent["parent"], collections[parent["parent"]], summarize=True)
        elif not parent:
            rows.append(_task_row(0, key, entries[key], now))
            shown.add(key)
    return rows


def render_tree(rows: list[Row], style: Style = Style()) -> str:
    table_rows = [["  " * r.depth + ("└ " if r.depth else "") + r.task, r.phase, r.attempt, r.duration, r.message]
                  for r in rows]
    return table(["TASK", "PHASE", "ATTEMPT", "DURATION", "MESSAGE"], table_rows, style, 1)


def render_get(obj: JSON, now: datetime, expand: bool = False, style: Style = Style()) -> str:
    """``compozy get``: the run's facts, then its task tree."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    phase = status.get("phase") or "Pending"
    lines = [f"Name:        {style.bold(meta.get('name', ''))}",
             f"Namespace:   {meta.get('namespace', '')}",
             f"Workflow:    {workflow_of(obj)}",
             f"Phase:       {style.phase(phase)}" + (f" ({status['progress']})" if status.get("progress") else "")]
    if status.get("startedAt"):
        took = status.get("duration") or elapsed(status["startedAt"], status.get("finishedAt"), now)
        lines += [f"Started:     {status['startedAt']}", f"Duration:    {took}"]
    if status.get("message"):
        lines.append(f"Message:     {one_line(status['message'], 200)}")
    error = status.get("error") or {}
    if error.get("reason"):
        lines.append(f"Error:       {error.get('task') or '-'}: {error['reason']}")
    if "output" in status:
        lines.append(f"Output:      {one_line(json.dumps(status['output']), 200)}")
    elif status.get("outputRef"):
        ref = status["outputRef"]
        lines.append(f"Output:      {ref.get('size')} bytes in the NATS object store ({ref.get('key')})")
    rows = tree_rows(obj, now, expand)
    if rows:
        lines += ["", render_tree(rows, style)]
    return "\n".join(lines)


def changes(old: JSON | None, new: JSON, at: str) -> list[str]:
    """``watch`` on a pipe: one line per change between two versions of a run (its phase, its
    progress, each task's phase or attempt), prefixed with the time ``at``."""
    before, after = (old or {}).get("status") or {}, new.get("status") or {}
    name = (new.get("metadata") or {}).get("name", "")
    lines = []
    old_tasks = before.get("tasks") or {}
    for key, t in (after.get("tasks") or {}).items():
        prev = old_tasks.get(key) or {}
        if (prev.get("phase"), prev.get("attempt")) == (t.get("phase"), t.get("attempt")):
            continue
        error = t.get("error") or {}
        detail = one_line(error.get("message") or t.get("message") or "")
        lines.append(f"{at} task {key} {t.get('phase')} attempt {t.get('attempt', 1)}"
                     + (f": {detail}" if detail and t.get("phase") != "Succeeded" else ""))
    phase = after.get("phase") or "Pending"
    if old is None or (before.get("phase"), before.get("progress")) != (phase, after.get("progress")):
        why = after.get("message") if phase in TERMINAL_PHASES - {"Succeeded"} else None
        lines.append(f"{at} {name} {phase}" + (f" {after['progress']}" if after.get("progress") else "")
                     + (f": {one_line(why)}" if why else ""))
    return lines


def ended(obj: JSON) -> bool:
    return ((obj.get("status") or {}).get("phase")) in TERMINAL_PHASES


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
