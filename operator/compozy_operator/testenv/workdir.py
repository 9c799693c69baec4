"""Where the local cluster keeps its state, free ports, and the binaries it runs."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

_RUN_PREFIX = "run-"


def cache_home() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def runs_root() -> Path:
    return Path(os.environ.get("COMPOZY_TESTENV_RUNS") or cache_home() / "compozy-testenv" / "runs")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prune_stale_runs(root: Path | None = None) -> list[Path]:
    """Remove the run directories of processes that are gone (e.g. a killed test run)."""
    root = root or runs_root()
    removed = []
    for d in root.glob(f"{_RUN_PREFIX}*") if root.exists() else []:
        try:
            pid = int(d.name[len(_RUN_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if not _pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def new_run_dir() -> Path:
    """A fresh directory for one cluster, named after this process so stale ones can be pruned."""
    root = runs_root()
    root.mkdir(parents=True, exist_ok=True)
    prune_stale_runs(root)
    return Path(tempfile.mkdtemp(prefix=f"{_RUN_PREFIX}{os.getpid()}-", dir=root))


def free_port() -> int:
    """A loopback TCP port that is free right now (callers retry if it is taken before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def repo_root() -> Path | None:
    """The source checkout this package runs from, if any (editable installs)."""
    for parent in Path(__file__).resolve().parents:
        if (parent / "hack" / "testenv" / "build.sh").exists():
            return parent
    return None


def find_binaries(build: bool = True) -> Path:
    """The directory with kube-apiserver, etcd, kubectl, helm, nats-server, ...

    ``COMPOZY_TESTENV_BIN`` wins; otherwise ``hack/testenv/build.sh`` builds what is missing
    (or, with ``build=False``, only reports where the binaries are).
    """
    if env := os.environ.get("COMPOZY_TESTENV_BIN"):
        return Path(env)
    root = repo_root()
    if root is None:
        raise RuntimeError(
            "cannot find hack/testenv/build.sh: run from a source checkout, or set "
            "COMPOZY_TESTENV_BIN to a directory holding kube-apiserver, etcd, kubectl, helm and nats-server"
        )
    cmd = [str(root / "hack" / "testenv" / "build.sh")] + ([] if build else ["--print"])
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed with exit code {proc.returncode} (its messages are above)")
    return Path(proc.stdout.strip().splitlines()[-1])


def which(bindir: Path, name: str) -> str:
    path = bindir / name
    if not os.access(path, os.X_OK):
        found = shutil.which(name)
        if not found:
            raise RuntimeError(f"{name} is not in {bindir}: run hack/testenv/build.sh")
        return found
    return str(path)
