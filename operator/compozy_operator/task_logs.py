"""A task pod's log lines: every line the attempt produces becomes a LogEmitted event of its run
(by execution uid, on the attempt's own log subject) and a line on the container's own stdout, so
``kubectl logs`` of the pod shows what ``compozy logs`` shows, for as long as the pod exists.

Sources, by component (the LogEmitted ``component``):

* ``task-executor``: the runner's own lines (``TaskRunner.log`` and its Python logging);
* ``runtime``: a python tool's ``ctx.log``, an agent's model calls;
* ``stdout`` / ``stderr``: whatever the attempt's process writes to file descriptors 1 and 2, read
  from pipes put in their place (:meth:`TaskLog.capture`): a python tool's ``print``, tracebacks
  and warnings, a subprocess it starts, C extensions, and a command tool's stderr and its stdout
  beyond the JSON result (runtime.run_command copies them there).

Lines are published fire and forget (logs never block the work); a line longer than
:data:`MAX_LINE` is cut into pieces, so no line can exceed the NATS payload limit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import sys
import threading
from typing import Any, Protocol

from .bus import Bus
from .wire import Publisher, utcnow

MAX_LINE = 16 * 1024  # characters of one LogEmitted message
DRAIN_SECONDS = 2.0  # at the end, how long the pipes' last lines and the publishes may take


class AttemptIdentity(Protocol):
    namespace: str
    execution: str
    uid: str
    task: str
    attempt: int


def pieces(text: str) -> list[str]:
    """``text`` as log lines: one per line, none longer than :data:`MAX_LINE`, trailing blanks dropped."""
    out = []
    for line in text.rstrip("\n").split("\n"):
        line = line.rstrip("\r")
        out += [line[i:i + MAX_LINE] for i in range(0, len(line), MAX_LINE)] or [""]
    return out


class TaskLog:
    """Thread-safe: the tool runs in a worker thread, the pipes are read by threads of their own."""

    def __init__(self, loop: asyncio.AbstractEventLoop, bus: Bus, a: AttemptIdentity) -> None:
        self.loop, self.bus, self.a = loop, bus, a
        self.echo = {"stdout": 1, "stderr": 2}  # where lines are shown: the container's own streams
        self.pending: set[concurrent.futures.Future[None]] = set()
        self.readers: list[threading.Thread] = []
        self.lock = threading.Lock()
        self.captured = False

    def _show(self, component: str, level: str, message: str, stream: str) -> None:
        line = f"{utcnow()} {component} {self.a.task}[{self.a.attempt}] {level} {message}\n"
        try:
            os.write(self.echo[stream], line.encode(errors="replace"))
        except OSError:
            pass  # nobody reads the container's output: the event still goes out

    def _publish(self, component: str, level: str, message: str) -> Any:
        a = self.a
        return self.bus.emit_log(a.namespace, a.execution, a.uid, component, level, message, Publisher.ATTEMPT,
                                 task=a.task, attempt=a.attempt)

    def line(self, component: str, level: str, text: str, stream: str = "stdout") -> None:
        """Emit ``text`` (one line or several) from any thread."""
        for message in pieces(text):
            self._show(component, level, message, stream)
            coro = self._publish(component, level, message)
            try:
                future = asyncio.run_coroutine_threadsafe(coro, self.loop)
            except RuntimeError:  # the loop is closed: the process is ending; the line was shown
                coro.close()
                continue
            with self.lock:
                self.pending.add(future)
            future.add_done_callback(self._done)

    def _done(self, future: concurrent.futures.Future[None]) -> None:
        with self.lock:
            self.pending.discard(future)

    async def emit(self, component: str, level: str, text: str) -> None:
        """Emit from the event loop, published before this returns (in order with the state events)."""
        for message in pieces(text):
            self._show(component, level, message, "stderr" if level in ("warning", "error") else "stdout")
            await self._publish(component, level, message)

    def handler(self, component: str) -> logging.Handler:
        """A logging handler whose records become this attempt's lines of ``component``."""
        return _Handler(self, component)

    def capture(self) -> None:
        """Put pipes in place of file descriptors 1 and 2; what is written there becomes ``stdout`` and
        ``stderr`` lines. The container's own streams (kept under new descriptors) show every line."""
        for fd, stream in ((1, "stdout"), (2, "stderr")):
            self.echo[stream] = os.dup(fd)
            read, write = os.pipe()
            os.dup2(write, fd)
            os.close(write)
            reader = threading.Thread(target=self._read, args=(read, stream), name=f"capture-{stream}", daemon=True)
            reader.start()
            self.readers.append(reader)
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # a print is a line at once
        self.captured = True

    def _read(self, fd: int, stream: str) -> None:
        buffer = b""
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while chunk := pipe.read(64 * 1024):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    self.line(stream, "info", raw.decode(errors="replace"), stream)
                if len(buffer) >= MAX_LINE:
                    self.line(stream, "info", buffer.decode(errors="replace"), stream)
                    buffer = b""
        if buffer:
            self.line(stream, "info", buffer.decode(errors="replace"), stream)

    async def close(self) -> None:
        """The last lines: put the container's streams back (the pipes end), read what was left in them,
        and wait (a little) for the publishes in flight."""
        if self.captured:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            for fd, stream in ((1, "stdout"), (2, "stderr")):
                os.dup2(self.echo[stream], fd)  # closes the pipe's write end held by fd 1/2
            self.captured = False
            # a subprocess the tool left running may hold a write end open: do not wait for it forever
            await asyncio.gather(*(asyncio.to_thread(r.join, DRAIN_SECONDS) for r in self.readers))
        with self.lock:
            pending = [asyncio.wrap_future(f) for f in self.pending]
        if pending:
            await asyncio.wait(pending, timeout=DRAIN_SECONDS)


class _Handler(logging.Handler):
    def __init__(self, log: TaskLog, component: str) -> None:
        super().__init__()
        self.log, self.component = log, component

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
        except Exception:  # noqa: BLE001 - a bad format string in a tool's log call is the tool's problem
            self.handleError(record)
            return
        level = record.levelname.lower()
        self.log.line(self.component, level, text, "stderr" if record.levelno >= logging.WARNING else "stdout")
