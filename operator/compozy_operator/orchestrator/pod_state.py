"""Reading a task pod's status: why it failed, why it does not start, what the user must fix. Pure."""

from __future__ import annotations

import re
from typing import Any

from ..executor import epoch

# The pod can never start as it is: a Secret, ConfigMap or key it needs is missing, its image name
# is wrong. Failed after a short grace (a Secret applied together with the run may still come), and
# not retried: a new attempt would wait for the same thing.
CONFIG_FAILURES = frozenset({"CreateContainerConfigError", "CreateContainerError", "InvalidImageName",
                             "ErrImageNeverPull"})
# The pod may still start (a registry hiccup, a crashing start): failed after pod_start_timeout.
START_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "RunContainerError"})
_NOT_NEWS = frozenset({"ContainerCreating", "PodInitializing"})  # every pod passes through these
# kubelet's messages for a missing Secret or ConfigMap, or a missing key in one
_MISSING = re.compile(r'(?P<kind>secret|configmap) "(?P<name>[^"]+)" not found'
                      r"|couldn't find key (?P<key>\S+) in (?P<kind2>Secret|ConfigMap) (?:[^/\s]+/)?(?P<name2>\S+)",
                      re.IGNORECASE)


def waiting(pod: dict[str, Any]) -> tuple[str, str] | None:
    """Why a Pending pod is not running yet, worth telling the user: a container's waiting reason
    (image pull, missing Secret, ...) or the scheduler's verdict; None while it merely starts."""
    status = pod.get("status") or {}
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        w = (cs.get("state") or {}).get("waiting") or {}
        if w.get("reason") and w["reason"] not in _NOT_NEWS:
            return w["reason"], w.get("message") or w["reason"]
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return cond.get("reason") or "Unschedulable", cond.get("message") or "no node can run the pod"
    return None


def explain(pod: dict[str, Any], reason: str, message: str) -> str:
    """kubelet's message, plus which of the task's settings refer to the missing Secret or key."""
    found = _MISSING.search(message)
    if reason not in CONFIG_FAILURES or not found:
        return message
    kind = (found.group("kind") or found.group("kind2")).lower()
    name, key = found.group("name") or found.group("name2"), found.group("key")
    ref_field = "secretKeyRef" if kind == "secret" else "configMapKeyRef"
    users = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        for env in c.get("env") or []:
            ref = (env.get("valueFrom") or {}).get(ref_field) or {}
            if ref.get("name") == name and (key is None or ref.get("key") == key):
                users.append(f"env {env.get('name')} ({ref_field} {name}/{ref.get('key')})")
    kind_name = "Secret" if kind == "secret" else "ConfigMap"
    ns = pod["metadata"].get("namespace", "")
    what = f"key {key!r} of {kind_name} {ns}/{name}" if key else f"{kind_name} {ns}/{name}"
    needed = f", needed by {', '.join(users)}" if users else ""
    return f"{message}: create the {what}{needed}, then retry the run"


def finished_at(pod: dict[str, Any]) -> float:
    """When a finished pod's container ended (epoch seconds), else when the pod was created."""
    ends = [epoch(t["finishedAt"]) for cs in (pod.get("status") or {}).get("containerStatuses") or []
            if (t := (cs.get("state") or {}).get("terminated")) and t.get("finishedAt")]
    return max(ends) if ends else epoch(pod["metadata"]["creationTimestamp"])


def ready(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds) or not conds


def failure(pod: dict[str, Any]) -> tuple[str, str]:
    """The reason a failed pod gives: the pod's own (Evicted, ...) first, else its container's."""
    status = pod.get("status") or {}
    if status.get("reason"):
        return status["reason"], status.get("message") or f"the task pod failed ({status['reason']})"
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            reason = term.get("reason") or "Error"
            message = (term.get("message") or "").strip()
            return reason, message or f"the task container exited with code {term.get('exitCode')} ({reason})"
    return status.get("reason") or "PodFailed", status.get("message") or "the task pod failed"
