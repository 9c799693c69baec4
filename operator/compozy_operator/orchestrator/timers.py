"""Timers: when to decide again about a run without any event to say so.

Two per run: ``wake`` (a task or run timeout, a retry's back-off ends) and ``retry`` (a reconcile
failed; back-off). Each replaces its earlier setting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

Kind = str  # "wake" | "retry"


class Timers:
    def __init__(self, fire: Callable[[str], None]) -> None:
        self.fire = fire  # called with the run's uid
        self.handles: dict[tuple[str, Kind], asyncio.TimerHandle] = {}

    def set(self, uid: str, kind: Kind, at: float | None) -> None:
        """Fire at ``at`` (epoch seconds), or never with None."""
        old = self.handles.pop((uid, kind), None)
        if old is not None:
            old.cancel()
        if at is not None:
            delay = max(0.0, at - time.time()) + 0.01
            self.handles[(uid, kind)] = asyncio.get_running_loop().call_later(delay, self._fire, uid, kind)

    def _fire(self, uid: str, kind: Kind) -> None:
        self.handles.pop((uid, kind), None)
        self.fire(uid)

    def cancel(self, uid: str) -> None:
        for kind in ("wake", "retry"):
            self.set(uid, kind, None)
