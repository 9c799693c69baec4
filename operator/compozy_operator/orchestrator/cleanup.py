"""Cleanup: pods of attempts that must stop, and what a deleted execution leaves in NATS."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..resources.models import TERMINAL_PHASES, WorkflowExecutionStatus
from ..bus import Bus
from ..events import EventType, cancel_subject, make_event, output_prefix
from ..kube import ApiException, Kube
from ..pods import LABEL_EXECUTION, label_value, pod_name
from .run import SOURCE, Run

log = logging.getLogger(__name__)


class Cleanup:
    def __init__(self, kube: Kube, bus: Bus) -> None:
        self.kube, self.bus = kube, bus

    async def delete_pod(self, namespace: str, name: str, grace: int | None = None, uid: str | None = None) -> None:
        """Delete a pod (gone already is fine; with ``uid``, only that very pod)."""
        body: dict[str, Any] = {} if grace is None else {"gracePeriodSeconds": grace}
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            await asyncio.to_thread(self.kube.delete, f"/api/v1/namespaces/{namespace}/pods/{name}", body)
        except ApiException as e:
            if e.status not in (404, 409):  # 409: a newer pod of the same name (uid precondition)
                raise

    async def stop_in_flight(self, run: Run, status: WorkflowExecutionStatus) -> None:
        """The run is ending: tell its tasks in flight over NATS, and remove their pods. Done before
        the end is published, so a crash in between repeats it. (Pods of tasks that already
        reported exit by themselves.)"""
        in_flight = {pod_name(run.name, tid, t.attempt) for tid, t in status.tasks.items()
                     if t.phase in ("Pending", "Running")}
        if not in_flight:
            return
        assert self.bus.nc is not None
        await self.bus.nc.publish(cancel_subject(run.namespace, run.name), b"{}")
        pods = await asyncio.to_thread(self.kube.get, f"/api/v1/namespaces/{run.namespace}/pods",
                                       labelSelector=f"{LABEL_EXECUTION}={label_value(run.name)}")
        for pod in pods["items"]:
            owners = {o.get("uid") for o in pod["metadata"].get("ownerReferences") or []}
            if run.uid in owners and pod["metadata"]["name"] in in_flight:
                await self.delete_pod(run.namespace, pod["metadata"]["name"])

    async def deleted(self, obj: dict[str, Any]) -> None:
        """``kubectl delete`` of an execution (or its TTL, or its Workflow's history limit): its pods go
        with it (owner references); remove its stored outputs, its log lines (by uid: a new run of
        the same name keeps its own) and its state events, tell its tasks to stop, and record the end
        for whoever watches the events (a run deleted while it ran: its events stay until they age out)."""
        meta = obj["metadata"]
        if self.bus.nc is None:
            raise ConnectionError("NATS is not connected")
        removed = await self.bus.delete_outputs(output_prefix(meta["namespace"], meta["name"], meta["uid"]))
        if removed:
            log.info("removed %d stored outputs of %s/%s", removed, meta["namespace"], meta["name"])
        await self.bus.purge_logs(meta["namespace"], meta["name"], meta["uid"])
        await self.bus.purge_state(meta["namespace"], meta["name"], meta["uid"])
        if (obj.get("status") or {}).get("phase", "Pending") in TERMINAL_PHASES:
            return
        await self.bus.nc.publish(cancel_subject(meta["namespace"], meta["name"]), b"{}")
        await self.bus.publish_event(make_event(
            EventType.WORKFLOW_CANCELLED, SOURCE, meta["namespace"], meta["name"], meta["uid"],
            error={"reason": "Deleted", "message": "the WorkflowExecution was deleted while it ran"}))
