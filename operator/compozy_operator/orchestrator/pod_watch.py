"""The pod and node watch: task pods that cannot report become ``TaskExecutionFailed``.

Caught here: a pod deleted before it reported, a pod that failed (OOM-killed, evicted, the runner
crashed), a pod that can never start as it is (a missing Secret or key, a bad image name) for
``config_error_grace``, a pod that cannot start (image pulls) for ``pod_start_timeout``, and a pod
whose node is not ready for ``node_lost_seconds``. While a pod waits, ``TaskPodWaiting`` tells the
status why. Finished pods are removed as their run's pod cleanup rule says (retention.py, carried
by each pod as an annotation, so it is known from the pod alone). Every handler's effects go
through :class:`Effects`, so a failure (NATS or the API server away) is retried, not dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..resources.models import TaskStatus
from ..bus import Bus
from ..events import EventType, make_event
from ..executor import epoch
from ..kube import ApiException, Kube
from ..pods import ANNOTATION_TASK, LABEL_ATTEMPT, LABEL_TASK, TASK_POD_SELECTOR
from ..reducer import TASK_TERMINAL
from ..retention import PodRule, pod_fate
from ..settings import Settings
from .cleanup import Cleanup
from .dispatcher import Dispatcher
from . import pod_state
from .effects import Effects
from .run import SOURCE, Run

RESULT_GRACE = 20.0  # seconds a finished pod's result may take to reach the status (redelivery included)
UNKNOWN_GRACE = 300.0  # seconds a finished pod waits for its run to be known (then it is removed)
STOP_GRACE = 10.0  # seconds a failed attempt's pod has to exit by itself before it is stopped
FINISHED_MEMORY = 10_000  # ended runs remembered, so their pods are removed at once


class PodWatch:
    def __init__(self, settings: Settings, kube: Kube, bus: Bus, runs: dict[str, Run], dispatcher: Dispatcher,
                 cleanup: Cleanup, effects: Effects, slot_freed: Callable[[Run], None]) -> None:
        self.settings, self.kube, self.bus, self.runs = settings, kube, bus, runs
        self.dispatcher, self.cleanup, self.effects, self.slot_freed = dispatcher, cleanup, effects, slot_freed
        self.rechecks: set[tuple[str, str]] = set()
        self.finished: OrderedDict[str, float] = OrderedDict()  # runs known to have ended: uid -> when
        self.kept: dict[str, set[tuple[str, str]]] = {}  # run uid -> its finished pods kept until it ends
        self.told: dict[str, str] = {}  # pod uid -> the waiting reason last published for it

    async def on_node(self, node: dict[str, Any], deleted: bool = False) -> None:
        """A node that is not ready (or gone) strands the task pods on it: look at each of them."""
        ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {})
        if ready.get("status") == "True" and not deleted:
            return
        name = node["metadata"]["name"]
        await self.effects.run(("node", name), lambda: self._on_node(name), f"checking the pods of node {name}")

    async def _on_node(self, name: str) -> None:
        # per watched namespace in namespaced mode: its RBAC allows no cluster-wide pod list
        paths = [f"/api/v1/namespaces/{ns}/pods" for ns in self.settings.namespaces] or ["/api/v1/pods"]
        for path in paths:
            pods = await asyncio.to_thread(self.kube.get, path, labelSelector=TASK_POD_SELECTOR,
                                           fieldSelector=f"spec.nodeName={name}")
            for pod in pods["items"]:
                await self.on_pod("MODIFIED", pod, recheck=True)

    async def on_pod(self, event_type: str, pod: dict[str, Any], recheck: bool = False) -> None:
        meta = pod["metadata"]
        owner = next((o for o in meta.get("ownerReferences") or [] if o.get("kind") == "WorkflowExecution"), None)
        labels = meta.get("labels") or {}
        if owner is None or LABEL_TASK not in labels:
            return
        task = (meta.get("annotations") or {}).get(ANNOTATION_TASK) or labels[LABEL_TASK]
        attempt = int(labels.get(LABEL_ATTEMPT, "1"))
        phase = (pod.get("status") or {}).get("phase", "Pending")
        ended = event_type == "DELETED" or phase in ("Succeeded", "Failed")
        if phase != "Pending" or ended:
            self.told.pop(meta["uid"], None)
        run = self.runs.get(owner["uid"])
        if run is not None:
            run.pods.add((task, attempt))
        if self.dispatcher.track(owner["uid"], meta["name"], task, ended) and run is not None:
            self.slot_freed(run)  # a worker slot is free: a full parent may dispatch now
        if run is not None and not ended:
            await self._stop_if_stale(run, meta["name"], task, attempt)
        elif run is None and not ended and owner["uid"] in self.finished:
            await self._stop_after_run(pod, owner["uid"])
        await self.effects.run(("pod", meta["uid"], event_type == "DELETED"),
                               lambda: self._check(event_type, pod, owner, task, attempt, phase, recheck),
                               f"handling pod {meta['namespace']}/{meta['name']} ({event_type})")

    async def _check(self, event_type: str, pod: dict[str, Any], owner: dict[str, Any], task: str, attempt: int,
                     phase: str, recheck: bool) -> None:
        meta = pod["metadata"]
        ns = meta["namespace"]
        known = self.attempt_state(owner["uid"], task, attempt)
        failure = None
        if event_type == "DELETED":
            if phase not in ("Succeeded", "Failed"):
                failure = ("PodDeleted", f"pod {meta['name']} was deleted before the task reported a result")
        elif phase == "Failed":
            failure = pod_state.failure(pod)
        elif phase == "Pending":
            failure = await self._pending(pod, owner, task, attempt, known)
        elif phase == "Running" and (recheck or not pod_state.ready(pod)):
            failure = await self._node_lost(pod)
        elif phase == "Succeeded" and known != "ended":
            failure = self._result_lost(pod, known)
            if failure is None:
                return  # kept until its result is folded (or found lost)
        if failure and known != "ended":  # an attempt that has ended needs no failure of its pod
            reason, message = failure
            # Same id as the runner's own TaskExecutionFailed: if it did report, this is a duplicate.
            await self.bus.publish_event(make_event(EventType.TASK_FAILED, SOURCE, ns, owner["name"], owner["uid"], task,
                                                    attempt, podName=meta["name"],
                                                    error={"reason": reason, "message": message}))
        if failure and event_type != "DELETED" and phase in ("Pending", "Running"):
            await self.cleanup.delete_pod(ns, meta["name"], grace=0)
        if event_type != "DELETED" and phase in ("Succeeded", "Failed"):
            await self._clean_up(pod, owner["uid"], phase)

    async def _clean_up(self, pod: dict[str, Any], run_uid: str, phase: str) -> None:
        """Delete a finished pod when its cleanup rule (carried by the pod) says: now, later (looked
        at again then), once its run has ended (remembered until :meth:`run_ended`), or never."""
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):  # being deleted (most often the echo of our own delete): once is enough
            return
        rule = PodRule.from_pod(pod, self.dispatcher.default_pod_rule)
        fate = pod_fate(rule, phase, pod_state.finished_at(pod), self.finished.get(run_uid))
        if fate.wait_for_run:
            self.kept.setdefault(run_uid, set()).add((meta["namespace"], meta["name"]))
        elif fate.at is not None and (wait := fate.at - time.time()) > 0:
            self.recheck_later(pod, wait + 0.05)
        elif fate.at is not None:
            await self.cleanup.delete_pod(meta["namespace"], meta["name"], uid=meta["uid"])

    def attempt_state(self, uid: str, task: str, attempt: int) -> str:
        """``ended`` (the attempt, or its whole run, has ended), ``in-flight``, or ``unknown`` (the run
        is not loaded yet), from the status the orchestrator last decided from."""
        if uid in self.finished:
            return "ended"
        run = self.runs.get(uid)
        if run is None or run.status is None:
            return "unknown"
        return "ended" if _ended(run.status.tasks.get(task), attempt, TASK_TERMINAL) else "in-flight"

    def run_ended(self, uid: str, finished_at: float | None = None, namespace_of_run: str | None = None) -> None:
        """Remember that a run has ended, and when (bounded: the oldest are forgotten first); its
        pods kept for the run's end (OnWorkflowCompletion) are looked at again."""
        self.finished[uid] = self.finished.get(uid) or finished_at or time.time()
        while len(self.finished) > FINISHED_MEMORY:
            self.finished.popitem(last=False)
        for namespace, name in self.kept.pop(uid, ()):
            self.recheck_later({"metadata": {"namespace": namespace, "name": name}}, 0.0)
        if namespace_of_run is not None:  # its pods still going are stopped after the grace (_stop_after_run)
            wait = max(0.0, self.finished[uid] + STOP_GRACE - time.time())
            for name in self.dispatcher.alive.get(uid, {}):
                self.recheck_later({"metadata": {"namespace": namespace_of_run, "name": name}}, wait + 0.05)

    async def _stop_after_run(self, pod: dict[str, Any], run_uid: str) -> None:
        """A pod still going after its run ended (a replaced attempt's whose stop was lost, and whose
        grace timer died with an operator): stopped once STOP_GRACE has passed since the run's end,
        a time kept in the status, so a restarted operator does it too."""
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            return
        wait = self.finished[run_uid] + STOP_GRACE - time.time()
        if wait > 0:
            self.recheck_later(pod, wait + 0.05)
            return
        await self.effects.run(("stop", run_uid, meta["name"]),
                               lambda: self.cleanup.delete_pod(meta["namespace"], meta["name"], uid=meta["uid"]),
                               f"stopping pod {meta['namespace']}/{meta['name']}: its run has ended")

    def run_resumed(self, uid: str) -> None:
        """A retry round of an ended run began: its pods matter again."""
        self.finished.pop(uid, None)

    def _result_lost(self, pod: dict[str, Any], known: str) -> tuple[str, str] | None:
        """A pod that exited 0 has stored its result before it exited; a result still not folded
        long after was lost with the state stream (deleted under it). None: wait and look again."""
        waited = time.time() - pod_state.finished_at(pod)
        limit = RESULT_GRACE if known == "in-flight" else UNKNOWN_GRACE
        if waited < limit:
            self.recheck_later(pod, min(2.0, max(0.25, waited / 2), limit - waited + 0.5))
            return None
        return "ResultLost", (f"pod {pod['metadata']['name']} exited successfully {waited:.0f}s ago but its result "
                              "never reached the status (the state stream lost it)")

    async def stop_stale(self, run: Run) -> None:
        """Stop the pods of attempts that have ended without them: timed out or cancelled attempts
        whose pod outlived the stop (e.g. the operator crashed between the end and the delete), and
        attempts already replaced by a retry."""
        for name, task in list(self.dispatcher.alive.get(run.uid, {}).items()):
            await self._stop_if_stale(run, name, task, int(name.rsplit("-", 1)[1]))  # names end in -<attempt>

    async def _stop_if_stale(self, run: Run, name: str, task: str, attempt: int) -> None:
        # not Succeeded: those pods are exiting by themselves, and removed once they have
        st = run.status.tasks.get(task) if run.status else None
        if not _ended(st, attempt, frozenset({"Failed", "Cancelled"})) or name in run.stopped:
            return
        if st is not None and (attempt < st.attempt or st.phase == "Failed"):
            # An attempt that failed (or was replaced by a retry) has usually reported it itself
            # and its pod is exiting: it has STOP_GRACE to end as Failed, so that the pod cleanup
            # rule decides about it (OnPodSuccess keeps it). The orchestrator's own failures (a
            # timeout, a lost pod) stopped their pod already: this is the backstop.
            if name not in run.grace:
                run.grace.add(name)
                what = f"stopping pod {run.namespace}/{name} of a failed attempt"
                asyncio.get_running_loop().call_later(STOP_GRACE, lambda: asyncio.ensure_future(
                    self.effects.run(("stop", run.uid, name), lambda: self._stop_late(run, name), what)))
            return
        run.stopped.add(name)
        await self.effects.run(("stop", run.uid, name), lambda: self.cleanup.delete_pod(run.namespace, name),
                               f"stopping pod {run.namespace}/{name} of an ended attempt")

    async def _stop_late(self, run: Run, name: str) -> None:
        """The grace is over: stop the pod if it still has not ended."""
        try:
            pod = await asyncio.to_thread(self.kube.get, f"/api/v1/namespaces/{run.namespace}/pods/{name}")
        except ApiException as e:
            if e.status == 404:
                return
            raise
        owners = {o.get("uid") for o in pod["metadata"].get("ownerReferences") or []}
        if run.uid in owners and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            run.stopped.add(name)
            await self.cleanup.delete_pod(run.namespace, name, uid=pod["metadata"]["uid"])

    def recheck_later(self, pod: dict[str, Any], delay: float) -> None:
        """Look at a pod again later: nothing may change on it while the clock runs out."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        if key in self.rechecks:
            return
        self.rechecks.add(key)

        async def recheck() -> None:
            self.rechecks.discard(key)
            try:
                fresh = await asyncio.to_thread(self.kube.get, f"/api/v1/namespaces/{key[0]}/pods/{key[1]}")
            except ApiException as e:
                if e.status != 404:
                    self.recheck_later(pod, 1.0)
                return
            await self.on_pod("MODIFIED", fresh, recheck=True)

        asyncio.get_running_loop().call_later(delay, lambda: asyncio.ensure_future(recheck()))

    async def _pending(self, pod: dict[str, Any], owner: dict[str, Any], task: str, attempt: int,
                       known: str) -> tuple[str, str] | None:
        """Tell the status why a pending pod waits; the failure once it has waited too long."""
        meta = pod["metadata"]
        why = pod_state.waiting(pod)
        if why is None:
            self.told.pop(meta["uid"], None)
            return None
        reason, message = why[0], pod_state.explain(pod, *why)
        if known == "in-flight" and self.told.get(meta["uid"]) != reason:
            await self.bus.publish_event(make_event(EventType.TASK_POD_WAITING, SOURCE, meta["namespace"], owner["name"],
                                                    owner["uid"], task, attempt, id_extra=reason,
                                                    podName=meta["name"], reason=reason, message=message))
            self.told[meta["uid"]] = reason
        if reason in pod_state.CONFIG_FAILURES:
            limit, explained = self.settings.config_error_grace, f"the task pod cannot start: {message}"
        elif reason in pod_state.START_FAILURES:
            limit = self.settings.pod_start_timeout
            explained = f"the task pod could not start within {limit:g}s: {message}"
        else:
            return None  # e.g. unschedulable: the attempt's own timeout, if any, bounds the wait
        age = time.time() - epoch(meta["creationTimestamp"])
        if age >= limit:
            return reason, explained
        self.recheck_later(pod, limit - age + 0.5)
        return None

    async def _node_lost(self, pod: dict[str, Any]) -> tuple[str, str] | None:
        node_name = pod["spec"].get("nodeName")
        if not node_name:
            return None
        try:
            node = await asyncio.to_thread(self.kube.get, f"/api/v1/nodes/{node_name}")
        except ApiException as e:
            if e.status == 404:
                return "NodeLost", f"node {node_name} of pod {pod['metadata']['name']} no longer exists"
            raise
        ready = next((c for c in node.get("status", {}).get("conditions") or [] if c["type"] == "Ready"), {})
        if ready.get("status") == "True":
            return None
        limit = self.settings.node_lost_seconds
        since = time.time() - epoch(ready.get("lastTransitionTime") or pod["metadata"]["creationTimestamp"])
        if since >= limit:
            return "NodeLost", (f"node {node_name} has not been ready for {since:.0f}s "
                                f"({ready.get('reason') or 'no status'}); the task's pod is lost")
        self.recheck_later(pod, limit - since + 0.5)
        return None


def _ended(st: TaskStatus | None, attempt: int, phases: frozenset[str]) -> bool:
    """Has ``attempt`` ended, by the task's status: replaced by a later one, or in one of ``phases``?"""
    return st is not None and (attempt < st.attempt or (attempt == st.attempt and st.phase in phases))


