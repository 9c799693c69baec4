"""The Kubernetes objects and patches behind a user's request on a run (pure; no I/O).

api.Service (HTTP and NATS), the ``compozy`` CLI and the UI all start, resubmit, retry and cancel
runs through these builders, so a run started one way looks exactly like one started another:
same labels, same naming, same spec.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from .resources.models import API_VERSION, TERMINAL_PHASES

LABEL_WORKFLOW = "compozy.dev/workflow"  # the Workflow a run runs (`kubectl get wfx -l compozy.dev/workflow=x`)
LABEL_RESUBMITTED_FROM = "compozy.dev/resubmitted-from"  # the run a resubmitted run was made from
# the run's metadata.creationTimestamp in Unix seconds, so that "created after" is a label selector
# (`compozy.dev/created-at>N`) the API server applies before it cuts a page: the orchestrator makes
# it exact when it starts the run; whoever creates a run stamps its own clock's guess to spare that write
LABEL_CREATED = "compozy.dev/created-at"
KIND = "WorkflowExecution"
_UNSET: Any = object()


def new_execution(workflow: str, input: Any = None, *, name: str | None = None,
                  labels: dict[str, str] | None = None, timeout: str | None = None) -> dict[str, Any]:
    """A WorkflowExecution of the Workflow ``workflow``: named ``name``, else generated
    (``<workflow>-xxxxx``), labelled with its workflow (and ``labels``)."""
    metadata: dict[str, Any] = {"labels": {**(labels or {}), LABEL_WORKFLOW: workflow}}
    if name:
        metadata["name"] = name
    else:
        metadata["generateName"] = f"{workflow[:57]}-"
    spec: dict[str, Any] = {"workflowRef": {"name": workflow}}
    if input is not None:
        spec["input"] = input
    if timeout:
        spec["timeout"] = timeout
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": spec}


def resubmission(old: dict[str, Any], input: Any = _UNSET, *, name: str | None = None) -> dict[str, Any]:
    """A new run of what ``old`` ran (its workflowRef or inline workflow, its timeout), with its
    input or ``input``; labelled with ``old``'s labels (but not those the operator owns) and the
    run it came from."""
    meta, spec = old.get("metadata") or {}, old.get("spec") or {}
    labels = {k: v for k, v in (meta.get("labels") or {}).items() if not k.startswith("compozy.dev/")
              and not k.startswith("app.kubernetes.io/")}
    ref = (spec.get("workflowRef") or {}).get("name")
    if ref:
        labels[LABEL_WORKFLOW] = ref
    labels[LABEL_RESUBMITTED_FROM] = meta.get("name", "")
    base = ref or meta.get("name", "run")
    new_spec = {k: v for k, v in spec.items() if k in ("workflowRef", "workflow", "timeout")}
    chosen = spec.get("input") if input is _UNSET else input
    if chosen is not None:
        new_spec["input"] = chosen
    metadata: dict[str, Any] = {"labels": labels}
    if name:
        metadata["name"] = name
    else:
        metadata["generateName"] = f"{base[:57]}-"
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": new_spec}


def created_value(when: datetime | float) -> str:
    """The ``compozy.dev/created-at`` value of a run created at ``when`` (a timestamp or Unix seconds)."""
    return str(int(when.timestamp() if isinstance(when, datetime) else when))


def stamp_created(obj: dict[str, Any], now: float) -> dict[str, Any]:
    """``obj`` (a new run) labelled as created at ``now``, the creator's guess of the API server's clock."""
    obj["metadata"].setdefault("labels", {})[LABEL_CREATED] = created_value(now)
    return obj


PHASES = ("Pending", "Running", *sorted(TERMINAL_PHASES))
PHASE_FIELD = "status.phase"  # a selectable field of the CRD (resources/crd.py; Kubernetes >= 1.31)


def phase_selector(phase: str) -> str:
    """The field selector of runs in ``phase``. A run the operator has not started has no phase, so
    ``Pending`` is "none of the others" (field selectors have no "or")."""
    if phase == "Pending":
        return ",".join(f"{PHASE_FIELD}!={p}" for p in PHASES if p != "Pending")
    return f"{PHASE_FIELD}={phase}"


def created_after_selector(after: datetime) -> str:
    """The label selector term of the runs created at or after ``after``; creation timestamps have
    whole seconds, and a label selector knows only ``>`` (on integers)."""
    return f"{LABEL_CREATED}>{math.ceil(after.timestamp()) - 1}"


def requested_retries(spec: dict[str, Any]) -> int:
    """``spec.retry`` of a run: the retries asked for (absent, or not a count: 0)."""
    value = spec.get("retry")
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def cancel_patch() -> dict[str, Any]:
    """The merge patch that cancels a run (the seed's WorkflowCancel)."""
    return {"spec": {"cancel": True}}


def retry_patch(old: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that asks for one more retry of an ended run: ``spec.retry`` raised by one,
    guarded by ``old``'s resourceVersion so two concurrent retries make one (the second gets 409).
    A cancelled run's ``spec.cancel`` is removed in the same patch (the CRD requires it: the
    retried round would be cancelled at once otherwise)."""
    meta, spec = old.get("metadata") or {}, old.get("spec") or {}
    new_spec: dict[str, Any] = {"retry": requested_retries(spec) + 1}
    if spec.get("cancel"):
        new_spec["cancel"] = None
    return {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "spec": new_spec}
