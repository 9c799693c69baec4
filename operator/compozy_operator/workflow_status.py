"""A Workflow's status: is it valid (``Ready`` condition), which generation was checked, how many tasks.

What ``kubectl apply`` could not refuse shows here: a Workflow stored while the admission webhook
was off, bypassed or unreachable (``failurePolicy: Ignore``), or stored before it existed, gets
``Ready=False`` with the problems ``compozy validate`` names. ``kubectl get czwf`` shows it.

Level-triggered like the rest of the operator: every watch event of a Workflow recomputes the
status from its spec (:func:`desired_status`, pure) and patches ``/status`` only when it differs
(:func:`status_patch`), so the operator's own write comes back as an event that changes nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from .admission import Validate, review_workflow
from .resources.models import GROUP, VERSION
from .kube import ApiException, Kube
from .sandbox import EvaluationError

log = logging.getLogger("compozy.workflow_status")
READY = "Ready"
MESSAGE_LIMIT = 4000

JSON = dict[str, Any]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def task_count(obj: JSON) -> int:
    tasks = (obj.get("spec") or {}).get("tasks")
    return len(tasks) if isinstance(tasks, list) else 0


def desired_status(obj: JSON, problems: list[str], now: str) -> JSON:
    """The status ``obj`` should have, given the problems found in its spec (empty: valid).
    ``lastTransitionTime`` moves only when the condition's status changes."""
    generation = (obj.get("metadata") or {}).get("generation")
    n = task_count(obj)
    if problems:
        text = "; ".join(problems)
        cond = {"type": READY, "status": "False", "reason": "InvalidSpec",
                "message": text if len(text) <= MESSAGE_LIMIT else text[:MESSAGE_LIMIT - 3] + "..."}
    else:
        cond = {"type": READY, "status": "True", "reason": "Valid",
                "message": f"valid: {n} task{'s' if n != 1 else ''}"}
    old = next((c for c in (obj.get("status") or {}).get("conditions") or []
                if isinstance(c, dict) and c.get("type") == READY), None)
    same = old is not None and old.get("status") == cond["status"] and old.get("lastTransitionTime")
    cond["lastTransitionTime"] = old["lastTransitionTime"] if same and old else now
    cond["observedGeneration"] = generation
    return {"observedGeneration": generation, "taskCount": n, "conditions": [cond]}


def status_patch(obj: JSON, problems: list[str], now: str) -> JSON | None:
    """The merge patch of ``/status`` that brings ``obj`` to its desired status, or None."""
    want = desired_status(obj, problems, now)
    have = obj.get("status") or {}
    if all(have.get(k) == v for k, v in want.items()):
        return None
    return {"status": want}


class WorkflowStatus:
    """The I/O around :func:`status_patch`: check the spec, patch the status subresource."""

    def __init__(self, kube: Kube, validate: Callable[[], Validate]) -> None:
        self.kube, self.validate = kube, validate
        self.checked: dict[str, Any] = {}  # uid -> the generation this process checked and wrote

    def forget(self, uid: str) -> None:
        self.checked.pop(uid, None)

    async def sync(self, obj: JSON) -> None:
        meta = obj.get("metadata") or {}
        generation = meta.get("generation")
        if generation is not None and self.checked.get(meta.get("uid", "")) == generation:
            return  # e.g. the event of our own status write: the spec, hence the verdict, is unchanged
        try:
            problems = await review_workflow(obj, self.validate())
        except RecursionError:  # a spec nested deeper than Python's limit
            problems = ["spec: nested too deep to check"]
        except EvaluationError as e:
            problems = [f"spec: could not be checked: {e}"]
        patch = status_patch(obj, problems, _now())
        if patch is None:
            self.checked[meta["uid"]] = generation
            return
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{meta['namespace']}/workflows/{meta['name']}/status"
        try:
            await asyncio.to_thread(self.kube.merge_patch, path, patch)
        except ApiException as e:
            if e.status != 404:  # deleted meanwhile: nothing to say
                raise
        self.checked[meta["uid"]] = generation
        if problems:
            log.info("Workflow %s/%s is not valid: %s", meta["namespace"], meta["name"], "; ".join(problems)[:500])
