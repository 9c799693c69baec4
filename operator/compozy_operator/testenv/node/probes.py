"""Readiness and liveness probes (httpGet, tcpSocket, exec) against a pod process on loopback."""

from __future__ import annotations

import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

JSON = dict[str, Any]


def _port(value: int | str, container: JSON) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    for p in container.get("ports") or []:
        if p.get("name") == value:
            return int(p["containerPort"])
    raise ValueError(f"no container port named {value!r}")


def run_probe(probe: JSON, container: JSON, env: Mapping[str, str], cwd: str) -> bool:
    """True when the probe passes; any error or timeout is a failure."""
    timeout = float(probe.get("timeoutSeconds", 1))
    try:
        if "httpGet" in probe:
            h = probe["httpGet"]
            scheme = h.get("scheme", "HTTP").lower()
            url = f"{scheme}://{h.get('host') or '127.0.0.1'}:{_port(h['port'], container)}{h.get('path', '/')}"
            headers = {x["name"]: x["value"] for x in h.get("httpHeaders") or []}
            ctx = ssl._create_unverified_context() if scheme == "https" else None  # noqa: S323 - kubelet does not verify either
            req = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:  # noqa: S310
                return 200 <= resp.status < 400
        if "tcpSocket" in probe:
            port = _port(probe["tcpSocket"]["port"], container)
            with socket.create_connection((probe["tcpSocket"].get("host") or "127.0.0.1", port), timeout):
                return True
        if "exec" in probe:
            done = subprocess.run(probe["exec"]["command"], env=dict(env), cwd=cwd, timeout=timeout,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return done.returncode == 0
    except (OSError, ValueError, urllib.error.URLError, subprocess.TimeoutExpired):
        return False
    return False
