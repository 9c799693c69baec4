"""Pure pod-spec logic of the process node: which images it runs, how a container's argv and
environment are built, when a container restarts, what the pod's phase is. No I/O here: values
from Secrets and ConfigMaps arrive through a lookup function."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

JSON = dict[str, Any]
# (kind "secret" | "configmap", namespace, name) -> data (decoded), or None if it does not exist
Lookup = Callable[[str, str, str], Mapping[str, str] | None]

NOT_RUNNABLE_REASON = "ImageNotRunnable"
TERMINATION_MESSAGE_LIMIT = 4096
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


class ConfigError(Exception):
    """The container cannot be configured yet (kubelet's CreateContainerConfigError)."""


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def image_repository(image: str) -> str:
    """``registry/name:tag@digest`` -> ``registry/name``."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


def is_own_image(image: str, repositories: Sequence[str]) -> bool:
    return image_repository(image) in repositories


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, ``$$`` escapes, the rest stays."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, text)


def field_ref(pod: JSON, path: str) -> str:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    simple = {
        "metadata.name": meta.get("name", ""),
        "metadata.namespace": meta.get("namespace", ""),
        "metadata.uid": meta.get("uid", ""),
        "spec.nodeName": spec.get("nodeName", ""),
        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
        "status.podIP": status.get("podIP", "127.0.0.1"),
        "status.hostIP": status.get("hostIP", "127.0.0.1"),
        "status.podIPs": status.get("podIP", "127.0.0.1"),
    }
    if path in simple:
        return simple[path]
    m = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    raise ConfigError(f"unsupported fieldRef {path!r}")


def _key_ref(ref: JSON, kind: str, namespace: str, lookup: Lookup) -> str | None:
    data = lookup(kind, namespace, ref["name"])
    optional = bool(ref.get("optional"))
    what = "secret" if kind == "secret" else "configmap"
    if data is None:
        if optional:
            return None
        raise ConfigError(f'{what} "{ref["name"]}" not found')
    if ref["key"] not in data:
        if optional:
            return None
        raise ConfigError(f'couldn\'t find key {ref["key"]} in {what} {namespace}/{ref["name"]}')
    return data[ref["key"]]


def container_env(pod: JSON, container: JSON, base: Mapping[str, str], lookup: Lookup) -> dict[str, str]:
    """The environment of one container: ``base`` (node-provided), then envFrom, then env."""
    ns = pod["metadata"]["namespace"]
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("secret", "secretRef"), ("configmap", "configMapRef")):
            if ref := source.get(key):
                data = lookup(kind, ns, ref["name"])
                if data is None and not ref.get("optional"):
                    raise ConfigError(f'{kind} "{ref["name"]}" not found')
                env.update({prefix + k: v for k, v in (data or {}).items()})
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        src = var["valueFrom"]
        value: str | None
        if "secretKeyRef" in src:
            value = _key_ref(src["secretKeyRef"], "secret", ns, lookup)
        elif "configMapKeyRef" in src:
            value = _key_ref(src["configMapKeyRef"], "configmap", ns, lookup)
        elif "fieldRef" in src:
            value = field_ref(pod, src["fieldRef"]["fieldPath"])
        else:
            raise ConfigError(f"env {name}: unsupported valueFrom {sorted(src)}")
        if value is not None:
            env[name] = value
    return env


def container_argv(container: JSON, env: Mapping[str, str], entrypoint: Sequence[str]) -> list[str]:
    """``command`` (or the image's entrypoint) followed by ``args``, with ``$(VAR)`` expanded."""
    command = container.get("command") or list(entrypoint)
    if not command:
        raise ConfigError("the container has no command and the image has no entrypoint")
    return [expand(a, env) for a in [*command, *(container.get("args") or [])]]


def restarts(policy: str, exit_code: int) -> bool:
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def backoff_seconds(restart_count: int, initial: float = 1.0, cap: float = 60.0) -> float:
    """Crash-loop back-off: 1s, 2s, 4s, ... capped (kubelet: 10s .. 5m; shorter for tests)."""
    return min(cap, initial * (2 ** max(0, restart_count)))


def terminated_state(exit_code: int, started_at: str, message: str = "", reason: str | None = None) -> JSON:
    state: JSON = {
        "exitCode": exit_code,
        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        "startedAt": started_at,
        "finishedAt": now(),
    }
    if exit_code < 0:  # killed by a signal, reported the way a shell would
        state["exitCode"] = 128 - exit_code
        state["signal"] = -exit_code
    if message:
        state["message"] = message
    return state


def termination_message(container: JSON, written: str, log_tail: str, exit_code: int) -> str:
    """The file's content, or with ``FallbackToLogsOnError`` the log tail of a failed container."""
    text = written
    if not text.strip() and exit_code != 0 and container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
        text = log_tail
    return text[-TERMINATION_MESSAGE_LIMIT:]


def pod_phase(policy: str, states: Sequence[JSON]) -> str:
    """Phase from container states (``{"running"|"waiting"|"terminated": ...}``) and restart policy."""
    if any("running" in s for s in states):
        return "Running"
    if states and all("terminated" in s for s in states):
        codes = [s["terminated"]["exitCode"] for s in states]
        if policy == "Always" or (policy == "OnFailure" and any(codes)):
            return "Running"  # about to restart
        return "Succeeded" if not any(codes) else "Failed"
    return "Pending"


def condition(kind: str, ok: bool, reason: str | None = None, message: str | None = None) -> JSON:
    c: JSON = {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": now()}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c
