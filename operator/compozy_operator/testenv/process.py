"""Child processes that never outlive their parent.

Every component of the local cluster (etcd, kube-apiserver, ..., process nodes, pod processes)
is started through :class:`ManagedProcess`. Three layers make sure nothing is left behind:

* ``PR_SET_PDEATHSIG``: the kernel sends SIGKILL to the child when the thread that started it
  dies, even when the parent itself is SIGKILLed (a killed test run);
* each child leads its own process group, so stopping it also stops what it forked;
* :func:`stop_all` runs at interpreter exit and on SIGTERM/SIGHUP for whatever is still alive.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)
_live: set[ManagedProcess] = set()
_live_lock = threading.Lock()


class ComponentError(RuntimeError):
    """A component did not start or died; the message names it and shows its log tail."""

    def __init__(self, name: str, problem: str, log_path: Path | None = None) -> None:
        tail = log_tail(log_path) if log_path else ""
        text = f"{name}: {problem}"
        if tail:
            text += f"\n--- last lines of {log_path} ---\n{tail}"
        super().__init__(text)
        self.name = name
        self.log_tail = tail


def log_tail(path: Path | None, lines: int = 25, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of a log file ("" when there is none)."""
    if path is None or not path.exists():
        return ""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - max_bytes))
        data = f.read().decode("utf-8", "replace")
    return "\n".join(data.splitlines()[-lines:])


def _die_with_parent() -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


class ManagedProcess:
    """One child process with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            try:
                self.popen = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=self.cwd,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                raise ComponentError(self.name, f"cannot start {self.argv[0]}: {exc}") from exc
        with _live_lock:
            _live.add(self)
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_until(
        self, check: Callable[[], bool], timeout: float, what: str = "ready", interval: float = 0.05
    ) -> None:
        """Poll ``check`` until it is true; fail with the log tail if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                code = self.popen.returncode if self.popen else None
                raise ComponentError(self.name, f"exited with code {code} before it was {what}", self.log_path)
            try:
                if check():
                    return
            except Exception:  # noqa: BLE001 - not up yet; the log tail tells why if it never is
                pass
            if time.monotonic() > deadline:
                raise ComponentError(self.name, f"not {what} after {timeout:.0f}s", self.log_path)
            time.sleep(interval)

    def signal_group(self, sig: int) -> None:
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; return the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.signal_group(signal.SIGTERM)
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.signal_group(signal.SIGKILL)
                self.popen.wait()
        self.signal_group(signal.SIGKILL)  # anything the child left in its group
        with _live_lock:
            _live.discard(self)
        return self.popen.returncode


def stop_all(grace: float = 5.0) -> None:
    """Stop every managed process still alive (newest first)."""
    with _live_lock:
        procs = list(_live)
    for proc in reversed(procs):
        proc.stop(grace)


def _on_signal(signum: int, _frame: object) -> None:
    stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def install_cleanup_handlers() -> None:
    """Stop children at exit and on SIGTERM/SIGHUP (SIGINT raises KeyboardInterrupt as usual)."""
    atexit.register(stop_all)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                signal.signal(sig, _on_signal)
