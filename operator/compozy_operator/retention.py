"""Cleanup decisions (pure, no I/O): when an ended run expires, which ended runs a Workflow's history
limit removes, and when a finished task pod is deleted. docs/cleanup.md; the I/O is in
``orchestrator/retention.py`` (runs) and ``orchestrator/pod_watch.py`` (pods).

Everything is decided from what the API server stores (the run's spec and status, the pod's
annotations and status), never from memory: a restarted operator decides the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .execution_requests import requested_retries
from .executor import epoch
from .resources.models import POD_CLEANUP_POLICIES, TERMINAL_PHASES, HistoryLimit, PodCleanup, parse_duration

# A task pod carries its run's cleanup rule, so that the pod watch decides from the pod alone
# (also after a restart, before the run is loaded): "<policy>" or "<policy>/<delay seconds>".
ANNOTATION_POD_CLEANUP = "compozy.dev/pod-cleanup"
RETRYABLE = frozenset({"Failed", "TimedOut", "Cancelled"})  # executor.RETRYABLE_PHASES; the "failed" class


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def ended(obj: dict[str, Any]) -> bool:
    """Has the run ended for good: a terminal phase, no retry asked for that has not begun, not being deleted?"""
    status = obj.get("status") or {}
    phase = status.get("phase")
    if phase not in TERMINAL_PHASES or (obj.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return not (phase in RETRYABLE and requested_retries(obj.get("spec") or {}) > (_int(status.get("retries")) or 0))


def finished_at(obj: dict[str, Any]) -> float:
    """When the run ended: ``status.finishedAt`` (set by every end), else its creation."""
    for ts in ((obj.get("status") or {}).get("finishedAt"), (obj.get("metadata") or {}).get("creationTimestamp")):
        if isinstance(ts, str):
            try:
                return epoch(ts)
            except ValueError:
                continue
    return 0.0


def ttl_seconds(obj: dict[str, Any], default: int | None) -> int | None:
    """The run's own ``spec.ttlSecondsAfterFinished``, else its Workflow's (kept in the status's
    snapshot when it started), else the operator's default; None: kept."""
    own = _int((obj.get("spec") or {}).get("ttlSecondsAfterFinished"))
    if own is not None:
        return own
    snapshot = (obj.get("status") or {}).get("snapshot") or {}
    workflows = _int(snapshot.get("ttlSecondsAfterFinished") if isinstance(snapshot, dict) else None)
    return workflows if workflows is not None else default


def expires_at(obj: dict[str, Any], default: int | None) -> float | None:
    """When the run is to be deleted (epoch seconds), or None: it has not ended, or it is kept."""
    if not ended(obj):
        return None
    ttl = ttl_seconds(obj, default)
    return None if ttl is None else finished_at(obj) + ttl


def history_victims(executions: list[dict[str, Any]], workflow: str, limit: HistoryLimit) -> list[dict[str, Any]]:
    """The runs of ``workflow`` that ``limit`` removes: of each outcome (Succeeded; Failed, TimedOut
    or Cancelled) the ended runs beyond the newest N by finish time. Runs still going on, about
    to be retried, being deleted, or of another Workflow are neither kept nor counted."""
    classes: dict[bool, list[tuple[float, str, str, dict[str, Any]]]] = {True: [], False: []}
    for obj in executions:
        meta = obj.get("metadata") or {}
        if ((obj.get("spec") or {}).get("workflowRef") or {}).get("name") != workflow or not ended(obj):
            continue
        succeeded = (obj.get("status") or {}).get("phase") == "Succeeded"
        classes[succeeded].append((finished_at(obj), str(meta.get("creationTimestamp", "")), str(meta.get("name")),
                                   obj))
    victims: list[dict[str, Any]] = []
    for succeeded, keep in ((True, limit.succeeded), (False, limit.failed)):
        if keep is not None:
            newest_first = sorted(classes[succeeded], key=lambda r: r[:3], reverse=True)
            victims += [r[3] for r in newest_first[keep:]]
    return victims


def orphaned_outputs(names: list[str], live: set[tuple[str, str]], namespaces: list[str]) -> list[str]:
    """Stored output keys (``<ns>/<execution>/<uid>/<task>/<attempt>``) whose run is gone: its
    (namespace, uid) is not in ``live``, listed *after* the keys, so a run that stored one and still
    exists is always there. Keys of unwatched namespaces (``namespaces``; empty: all) and keys of
    another shape are never touched."""
    orphans = []
    for name in names:
        parts = name.split("/")
        if len(parts) != 5 or (namespaces and parts[0] not in namespaces):
            continue
        if (parts[0], parts[2]) not in live:
            orphans.append(name)
    return orphans


@dataclass(frozen=True)
class PodRule:
    """When a run's finished task pods are deleted (docs/cleanup.md)."""

    policy: str = "OnPodCompletion"
    delay: float = 0.0

    def annotation(self) -> str:
        return self.policy if not self.delay else f"{self.policy}/{self.delay:g}"

    @classmethod
    def of(cls, spec: PodCleanup | None, default: PodRule) -> PodRule:
        """A Workflow's ``podCleanup``, each field unset falling back to the operator's default."""
        if spec is None:
            return default
        return cls(spec.policy or default.policy, parse_duration(spec.delay) if spec.delay else default.delay)

    @classmethod
    def from_pod(cls, pod: dict[str, Any], default: PodRule) -> PodRule:
        """The rule a pod was created with (a pod of an older operator, or a mangled annotation: the default)."""
        text = ((pod.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_POD_CLEANUP)
        if not isinstance(text, str):
            return default
        policy, _, delay = text.partition("/")
        try:
            seconds = float(delay) if delay else 0.0
        except ValueError:
            return default
        if policy not in POD_CLEANUP_POLICIES or not 0 <= seconds < float("inf"):
            return default
        return cls(policy, seconds)


@dataclass(frozen=True)
class PodFate:
    """What becomes of a finished pod whose attempt has ended: deleted ``at`` (epoch seconds), or
    kept until its run ends (``wait_for_run``), or kept until its run is deleted (neither)."""

    at: float | None = None
    wait_for_run: bool = False


def pod_fate(rule: PodRule, pod_phase: str, pod_finished: float, run_finished: float | None) -> PodFate:
    """``run_finished``: when the pod's run ended, None while it goes on."""
    if rule.policy == "Never" or (rule.policy == "OnPodSuccess" and pod_phase != "Succeeded"):
        return PodFate()
    if rule.policy == "OnWorkflowCompletion":
        return PodFate(wait_for_run=True) if run_finished is None else PodFate(run_finished + rule.delay)
    return PodFate(pod_finished + rule.delay)
