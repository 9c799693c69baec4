"""Deleting ended runs: ``ttlSecondsAfterFinished`` and Workflows' ``historyLimit`` (docs/cleanup.md).

Level-triggered: every sight of an ended run (each watch event, and the list every (re)started
operator gets) decides again from its stored spec and status (retention.py, pure). An expired run
is deleted at once; one that expires later gets a timer, which is only a wake-up: the operator that
replaces a crashed one lists the run, finds it expired and deletes it. The delete is conditional on
the uid and the resourceVersion decided from, so a run that changed meanwhile (its TTL raised, a
retry asked for, a new run under the same name) is decided again, never deleted on stale facts.

A Workflow's history is pruned when one of its runs ends, and when the Workflow is seen (every
operator start, every change of it): one GET of the Workflow and one LIST of its runs by label,
coalesced per Workflow, no polling. Deleting a run removes its pods (owner references), and its
stored outputs, log lines and state events (cleanup.deleted, on the run's delete event).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from ..execution_requests import LABEL_WORKFLOW
from ..kube import ApiException, Kube
from ..monitoring import RUNS_DELETED
from ..pods import label_value
from ..resources.models import HistoryLimit
from ..resources.paths import executions_path, workflows_path
from ..retention import expires_at, history_victims
from .effects import Effects
from .timers import Timers

log = logging.getLogger(__name__)
CONFLICTS = 3  # deletes refused because the run changed, before leaving it to its next watch event
LIST_PAGE = 500  # runs per LIST request of a history prune
COALESCE = 0.5  # seconds a Workflow's prune waits for the other ends it can share a LIST with
DeletedHook = Callable[[dict[str, Any]], Awaitable[None]]


class Retention:
    def __init__(self, kube: Kube, effects: Effects, default_ttl: int | None, deleted: DeletedHook) -> None:
        self.kube, self.effects, self.default_ttl, self.deleted = kube, effects, default_ttl, deleted
        self.timers = Timers(self._expire)
        self.expiring: dict[str, tuple[str, str]] = {}  # uid -> (namespace, name) of runs with a timer
        self.prunes: set[tuple[str, str]] = set()  # (namespace, Workflow) with a prune scheduled
        self.generations: dict[str, Any] = {}  # Workflow uid -> the generation (with a limit) last pruned for

    # ---- TTL ------------------------------------------------------------------------------

    async def run_seen(self, obj: dict[str, Any]) -> None:
        """Any sight of a run that is not in flight: delete it if it has expired, else wake up when it will."""
        meta = obj["metadata"]
        if self._due(obj):
            await self.effects.run(("expire", meta["uid"]), lambda: self._delete_expired(obj),
                                   f"deleting the expired execution {meta['namespace']}/{meta['name']}")

    def forget(self, uid: str) -> None:
        self.expiring.pop(uid, None)
        self.timers.set(uid, "ttl", None)

    def _due(self, obj: dict[str, Any]) -> bool:
        """Has the run expired? If it will later, its timer is set; if never, any timer is dropped."""
        meta = obj["metadata"]
        at = expires_at(obj, self.default_ttl)
        if at is not None and at > time.time():
            self.expiring[meta["uid"]] = (meta["namespace"], meta["name"])
            self.timers.set(meta["uid"], "ttl", at)
            return False
        self.forget(meta["uid"])
        return at is not None

    def _expire(self, uid: str) -> None:
        """A timer ran out: read the run again and decide from what is stored now."""
        where = self.expiring.pop(uid, None)
        if where is None:
            return

        async def again() -> None:
            obj = await self._get(*where, uid)
            if obj is not None and self._due(obj):
                await self._delete_expired(obj)

        asyncio.ensure_future(self.effects.run(("expire", uid), again,
                                               f"deleting the expired execution {where[0]}/{where[1]}"))

    async def _get(self, namespace: str, name: str, uid: str) -> dict[str, Any] | None:
        """The run as stored now; None when it is gone (or another run has its name)."""
        try:
            obj = await asyncio.to_thread(self.kube.get, executions_path(namespace, name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return obj if obj["metadata"]["uid"] == uid else None

    async def _delete_expired(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        for _ in range(CONFLICTS):
            if await self._delete(meta["namespace"], meta["name"], meta["uid"], meta.get("resourceVersion")):
                log.info("deleted %s/%s: its ttlSecondsAfterFinished has passed", meta["namespace"], meta["name"])
                RUNS_DELETED.labels("ttl").inc()
                await self.deleted(obj)
                return
            # changed since it was decided from (or gone): decide again from what is stored now
            fresh = await self._get(meta["namespace"], meta["name"], meta["uid"])
            if fresh is None or not self._due(fresh):
                return
            obj, meta = fresh, fresh["metadata"]
        # still changing: its next watch event decides again

    async def _delete(self, namespace: str, name: str, uid: str, resource_version: str | None) -> bool:
        """Delete exactly this run as it was seen; False when it changed meanwhile or is gone."""
        preconditions = {"uid": uid, **({"resourceVersion": resource_version} if resource_version else {})}
        try:
            await asyncio.to_thread(self.kube.delete, executions_path(namespace, name),
                                    {"preconditions": preconditions, "propagationPolicy": "Background"})
        except ApiException as e:
            if e.status in (404, 409):  # 409: a precondition failed
                return False
            raise
        return True

    # ---- history limits -------------------------------------------------------------------

    def workflow_changed(self, wf: dict[str, Any]) -> None:
        """A Workflow seen by the watch (each operator start lists them all): prune its history once
        per generation that has a limit (its status writes are events too, and change nothing)."""
        meta = wf["metadata"]
        if not (wf.get("spec") or {}).get("historyLimit"):
            self.generations.pop(meta["uid"], None)
            return
        if self.generations.get(meta["uid"]) != meta.get("generation"):
            self.generations[meta["uid"]] = meta.get("generation")
            self.workflow_seen(meta["namespace"], meta["name"])

    def workflow_seen(self, namespace: str, workflow: str) -> None:
        """A run of ``workflow`` ended, or the Workflow was seen: prune its history soon (coalesced)."""
        key = (namespace, workflow)
        if key in self.prunes:
            return
        self.prunes.add(key)

        async def prune() -> None:
            self.prunes.discard(key)
            await self.effects.run(("history", *key), lambda: self._prune(*key),
                                   f"applying the history limit of Workflow {namespace}/{workflow}")

        asyncio.get_running_loop().call_later(COALESCE, lambda: asyncio.ensure_future(prune()))

    async def _prune(self, namespace: str, workflow: str) -> None:
        try:
            wf = await asyncio.to_thread(self.kube.get,
                                         workflows_path(namespace, workflow))
        except ApiException as e:
            if e.status == 404:  # no Workflow, no limit: its runs stay until deleted otherwise
                return
            raise
        raw = (wf.get("spec") or {}).get("historyLimit")
        if not raw:
            return
        try:
            limit = HistoryLimit.model_validate(raw)
        except ValidationError:  # refused at apply; one that got in unchecked limits nothing
            return
        for obj in history_victims(await self._runs_of(namespace, workflow), workflow, limit):
            meta = obj["metadata"]
            if await self._delete(namespace, meta["name"], meta["uid"], meta.get("resourceVersion")):
                log.info("deleted %s/%s: beyond the history limit of Workflow %s", namespace, meta["name"], workflow)
                RUNS_DELETED.labels("history").inc()
                await self.deleted(obj)

    async def _runs_of(self, namespace: str, workflow: str) -> list[dict[str, Any]]:
        """The Workflow's runs, by label, a page at a time, each cut down to what the decision reads
        (a run's status may be 256 KiB: thousands of them are never held at once)."""
        runs: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = await asyncio.to_thread(self.kube.get, executions_path(namespace), limit=LIST_PAGE,
                                           labelSelector=f"{LABEL_WORKFLOW}={label_value(workflow)}",
                                           **({"continue": token} if token else {}))
            runs += [_summary(obj) for obj in page.get("items") or []]
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return runs


def _summary(obj: dict[str, Any]) -> dict[str, Any]:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    return {"metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp",
                                              "deletionTimestamp") if k in meta},
            "spec": {k: spec[k] for k in ("workflowRef", "retry") if k in spec},
            "status": {k: status[k] for k in ("phase", "finishedAt", "retries") if k in status}}
