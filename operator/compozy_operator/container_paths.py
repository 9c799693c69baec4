"""Where a container path (a mounted Secret, a projected token) is on the host.

In a real container the path is simply the path. The local cluster's process node runs
containers as host processes and says where their mounts are (``COMPOZY_PROCESS_NODE_MOUNTS``:
a JSON map mountPath -> host directory), so files named by settings are looked up through it.
Standard library only: the task runner imports it at start.
"""

from __future__ import annotations

import json
import os

MOUNTS_ENV = "COMPOZY_PROCESS_NODE_MOUNTS"


def host_path(path: str) -> str:
    """``path`` with its longest mounted prefix replaced by the host directory it is mounted from."""
    try:
        mounts = json.loads(os.environ.get(MOUNTS_ENV) or "{}")
    except ValueError:
        return path
    if not isinstance(mounts, dict):
        return path
    for mount in sorted(mounts, key=len, reverse=True):
        if path == mount or path.startswith(mount.rstrip("/") + "/"):
            return str(mounts[mount]) + path[len(mount.rstrip("/")):]
    return path
