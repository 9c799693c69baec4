"""Limits a process of untrusted code puts on itself: the evaluation pool's workers (sandbox_worker)
and the processes of pooled task attempts (pool_runner)."""

from __future__ import annotations

import os
import resource


def limit_memory(extra_mb: int) -> None:
    """Let this process map at most ``extra_mb`` MiB more than it has now (RLIMIT_AS): an allocation
    beyond it fails in this process (MemoryError), before the container's memory limit makes the
    kernel kill the whole container. No core dumps either. ``extra_mb`` <= 0: no limit."""
    if extra_mb <= 0:
        return
    with open("/proc/self/statm") as f:
        size = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = size + extra_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def oom_kill_me_first() -> None:
    """Should the container's memory run out anyway, the kernel's OOM killer picks this process
    before the one it works for."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
