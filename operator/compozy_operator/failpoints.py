"""Failpoints: named crash points at every write the operator makes, inert unless armed.

A test arms points through the environment of the operator process it starts::

    COMPOZY_FAILPOINTS="publish.TaskDispatched:after,kube.create.pods:before@2"

Each entry is ``<point>[@N]``: the process kills itself with SIGKILL the N-th time (default: the
first) execution passes that point, exactly as ``kill -9`` at that instruction would, after one
line on stderr (``failpoint <point> fired``) so the test can tell the crash came from there.

Point names are ``<write>:<before|after>``:

* ``publish.<EventType>`` (and ``publish.TaskExecute`` for the command): a JetStream publish;
* ``kube.<create|patch|delete>.<resource>[.<subresource>]``: a Kubernetes write, e.g.
  ``kube.create.pods``, ``kube.patch.workflowexecutions.status``;
* ``purge.<outputs|logs|state>``: removing a deleted run's stored outputs, log lines, state events;
* ``sweep.outputs``: the orphan sweep's removal of outputs whose run is gone;
* ``ack.state``: acknowledging state events after their status PATCH.

Unarmed (the normal case) a point costs one set lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

ENV = "COMPOZY_FAILPOINTS"


def _parse(spec: str) -> dict[str, int]:
    armed: dict[str, int] = {}
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        name, _, nth = entry.partition("@")
        armed[name] = int(nth) if nth else 1
    return armed


_ARMED: dict[str, int] = _parse(os.environ.get(ENV, ""))
_HITS: Counter[str] = Counter()


def arm(spec: str) -> None:
    """Replace the armed points (for unit tests of this module; processes use the environment)."""
    _ARMED.clear()
    _ARMED.update(_parse(spec))
    _HITS.clear()


def point(name: str) -> None:
    """Crash here if ``name`` is armed and this is its N-th pass."""
    if not _ARMED or name not in _ARMED:
        return
    _HITS[name] += 1
    if _HITS[name] == _ARMED[name]:
        os.write(2, f"failpoint {name} fired\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)


def kube_write(verb: str, path: str) -> str:
    """The failpoint name of a Kubernetes write: ``kube.<verb>.<resource>[.<subresource>]``."""
    parts = [p for p in path.split("?", 1)[0].split("/") if p]
    if "namespaces" in parts and len(parts) > parts.index("namespaces") + 2:
        parts = parts[parts.index("namespaces") + 2:]
    elif parts[:1] == ["api"]:
        parts = parts[2:]
    elif parts[:1] == ["apis"]:
        parts = parts[3:]
    resource = parts[0] if parts else "unknown"
    sub = parts[2] if len(parts) > 2 else ""
    return f"kube.{verb}.{resource}" + (f".{sub}" if sub else "")
