"""Warm runner pools (pure): the runners' Deployment, their number from the queue, the queue's messages.

A RunnerPool (resources.models.RunnerPoolSpec) is a Deployment of runner pods (``compozy runner
--pool NAME``) owned by the pool. The orchestrator puts one small message per pooled attempt on the
pool's work queue (:func:`.events.pool_subject`): which attempt, and the nonce its TaskExecute
command carries. A runner takes it, forks a process for it, and that process runs the attempt as
a task pod would (task_executor): fetch the command, check the nonce, claim, run, report.
See docs/pools.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .resources.models import API_VERSION, RunnerPoolSpec
from .pods import (CONTAINER_SECURITY, LABEL_MANAGED, MANAGER, POD_SECURITY, label_value, runner_variables,
                   runner_volumes)
from .settings import Settings

LABEL_POOL = "compozy.dev/pool"
RUNNER_COMPONENT = "runner"
RUNNER_POD_SELECTOR = f"{LABEL_MANAGED}={MANAGER},app.kubernetes.io/component={RUNNER_COMPONENT}"
POOL_NAME_ENV = "COMPOZY_POOL"
CONCURRENCY_ENV = "COMPOZY_POOL_CONCURRENCY"
ATTEMPT_MEMORY_ENV = "COMPOZY_POOL_ATTEMPT_MEMORY_MB"


def deployment_name(pool: str) -> str:
    return f"compozy-runner-{pool}"


def mebibytes(quantity: str) -> int:
    """``512Mi`` -> 512, ``2Gi`` -> 2048 (the forms RunnerPoolSpec.attempt_memory allows)."""
    return int(quantity[:-2]) * (1024 if quantity.endswith("Gi") else 1)


def runner_deployment(settings: Settings, pool: dict[str, Any], replicas: int) -> dict[str, Any]:
    """The Deployment of a RunnerPool's runners (owned by the pool: it goes with it)."""
    meta = pool["metadata"]
    spec = RunnerPoolSpec.model_validate(pool.get("spec") or {})
    name = meta["name"]
    labels = {LABEL_MANAGED: MANAGER, "app.kubernetes.io/component": RUNNER_COMPONENT, LABEL_POOL: label_value(name)}
    mounts, volumes = runner_volumes(settings)
    container = {
        "name": "runner",
        "image": spec.image or settings.task_image,
        "args": ["runner", "--pool", name],
        "env": [
            {"name": "COMPOZY_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": POOL_NAME_ENV, "value": name},
            {"name": CONCURRENCY_ENV, "value": str(spec.concurrency)},
            # (glibc's per-thread malloc arenas would reserve 64 MiB of address space each)
            *([{"name": ATTEMPT_MEMORY_ENV, "value": str(mebibytes(spec.attempt_memory))},
               {"name": "MALLOC_ARENA_MAX", "value": "2"}] if spec.attempt_memory else []),
            *runner_variables(settings),
            *(spec.env or []),
        ],
        "resources": spec.resources or {"requests": {"cpu": "100m", "memory": "128Mi"}},
        "volumeMounts": mounts,
        "securityContext": CONTAINER_SECURITY,
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": POD_SECURITY,
        "volumes": volumes,
        "containers": [container],
    }
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(name),
            "namespace": meta["namespace"],
            "labels": labels,
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": "RunnerPool", "name": name, "uid": meta["uid"],
                                 "controller": True, "blockOwnerDeletion": True}],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {LABEL_POOL: label_value(name), "app.kubernetes.io/component": RUNNER_COMPONENT}},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def desired_replicas(spec: RunnerPoolSpec, pending: int, in_flight: int, current: int) -> int:
    """Runners wanted for ``pending`` attempts waiting and ``in_flight`` taken: enough for all of
    them at the pool's concurrency, within min and max. Down by one at a time (a runner that goes
    takes nothing new, but its attempts in flight must end), up at once."""
    wanted = math.ceil((pending + in_flight) / spec.concurrency)
    wanted = max(spec.min_replicas, min(spec.max_replicas, wanted))
    if wanted < current:
        return max(wanted, current - 1)
    return wanted


@dataclass(frozen=True)
class PoolWork:
    """One message of a pool's queue: run this attempt; its command carries ``nonce``."""

    namespace: str
    execution: str
    uid: str
    task: str
    attempt: int
    nonce: str

    def dump(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "execution": self.execution, "uid": self.uid, "task": self.task,
                "attempt": self.attempt, "nonce": self.nonce}

    @property
    def key(self) -> tuple[str, str, str, int]:
        return self.execution, self.uid, self.task, self.attempt


def parse_work(body: Any, namespace: str) -> PoolWork | str:
    """The work a queue message asks for, or why it is none a runner of ``namespace`` may take."""
    if not isinstance(body, dict):
        return "not a JSON object"
    for field in ("namespace", "execution", "uid", "task", "nonce"):
        if not isinstance(body.get(field), str) or not body[field]:
            return f"{field} is not a non-empty string"
    attempt = body.get("attempt")
    if not isinstance(attempt, int) or isinstance(attempt, bool) or attempt < 1:
        return "attempt is not an integer >= 1"
    if body["namespace"] != namespace:
        return f"it is for namespace {body['namespace'][:63]!r}, this pool's is {namespace!r}"
    return PoolWork(body["namespace"], body["execution"], body["uid"], body["task"], attempt, body["nonce"])
