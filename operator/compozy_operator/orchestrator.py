"""system.Orchestrator: starts executions, carries out workflow.Executor's decisions, watches pods.

Level-triggered: every decision comes from the execution's status (plus the events this
orchestrator published that the status does not show yet, folded on top of it). Nothing
here must survive a restart: the status, the state stream and deterministic names (pods, event
ids) carry everything, so a restarted orchestrator continues where the old one stopped without
a duplicate pod or event.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .api.models import (GROUP, TERMINAL_PHASES, VERSION, WorkflowExecutionSpec, WorkflowExecutionStatus,
                         WorkflowSpec, parse_duration)
from .bus import Bus
from .events import (Event, EventType, cancel_subject, command_subject, event_id, make_event, output_key,
                     output_prefix, state_subject)
from .executor import CompleteTask, Dispatch, FailTask, Finish, RunContext, ScheduleRetry, WakeAt, decide
from .kube import ApiException, Kube
from .monitoring import DISPATCH_SECONDS, PODS_CREATED
from .pods import (ANNOTATION_TASK, LABEL_ATTEMPT, LABEL_EXECUTION, LABEL_TASK, NATS_CA_KEY, TASK_POD_SELECTOR,
                   label_value, pod_name, task_pod)
from .reducer import fold_all
from .settings import Settings
from .validation import SpecError, check_input, check_workflow, parse_workflow

log = logging.getLogger(__name__)
SOURCE = "compozy/orchestrator"
RETRY_SECONDS = 2.0


@dataclass
class Run:
    """What the orchestrator remembers about one execution: a cache, never the truth."""

    uid: str
    namespace: str
    name: str
    spec: WorkflowSpec | None = None
    context: RunContext | None = None
    overlay: list[tuple[int, Event]] = field(default_factory=list)
    history: list[tuple[int, Event]] = field(default_factory=list)  # replayed from the stream at load
    loaded: bool = False
    cancel: bool = False  # spec.cancel was seen (sticky: a stale copy of the object cannot undo it)
    obj: dict[str, Any] = field(default_factory=dict)  # the latest object seen, for timers
    timer: asyncio.TimerHandle | None = None
    outputs: dict[str, Any] = field(default_factory=dict)  # object-store outputs already fetched
    limits: dict[str, tuple[str, int]] | None = None  # child key prefix -> (parent, maxWorkers)
    acted: set[tuple[str, str, int]] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def _parse_time(ts: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


class Orchestrator:
    def __init__(self, settings: Settings, kube: Kube, bus: Bus) -> None:
        self.settings = settings
        self.kube = kube
        self.bus = bus
        self.runs: dict[str, Run] = {}
        self.secrets_ready: set[str] = set()
        self.rechecks: set[tuple[str, str]] = set()
        # task pods not yet ended, per execution uid: pod name -> task key (from the pod watch)
        self.alive_pods: dict[str, dict[str, str]] = {}

    # ---- entry points ---------------------------------------------------------------------

    async def reconcile(self, obj: dict[str, Any]) -> None:
        """Bring one execution forward from its current status (called on every change)."""
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            self.forget(meta["uid"])
            return
        status = WorkflowExecutionStatus.model_validate(obj.get("status") or {})
        if status.phase in TERMINAL_PHASES:
            self.forget(meta["uid"])
            return
        run = self.runs.setdefault(meta["uid"], Run(meta["uid"], meta["namespace"], meta["name"]))
        run.obj = obj
        run.cancel = run.cancel or bool((obj.get("spec") or {}).get("cancel"))
        async with run.lock:
            try:
                await self._reconcile(run, obj, status)
            except Exception:  # noqa: BLE001 - retried; the status stays the truth
                log.exception("reconciling %s/%s failed; retrying in %.0fs", run.namespace, run.name, RETRY_SECONDS)
                asyncio.get_running_loop().call_later(RETRY_SECONDS, self._retry, obj)

    def _retry(self, obj: dict[str, Any]) -> None:
        run = self.runs.get(obj["metadata"]["uid"])
        asyncio.ensure_future(self.reconcile(run.obj if run else obj))

    async def on_deleted(self, obj: dict[str, Any]) -> None:
        """``kubectl delete`` of a running execution: its pods go with it (owner references); tell
        its tasks to stop, and record the end for whoever watches the event stream."""
        meta = obj["metadata"]
        self.forget(meta["uid"])
        if self.bus.nc is None:
            return
        removed = await self.bus.delete_outputs(output_prefix(meta["namespace"], meta["name"], meta["uid"]))
        if removed:
            log.info("removed %d stored outputs of %s/%s", removed, meta["namespace"], meta["name"])
        phase = (obj.get("status") or {}).get("phase", "Pending")
        if phase in TERMINAL_PHASES:
            return
        await self.bus.nc.publish(cancel_subject(meta["namespace"], meta["name"]), b"{}")
        await self.bus.publish_event(make_event(
            EventType.WORKFLOW_CANCELLED, SOURCE, meta["namespace"], meta["name"], meta["uid"],
            error={"reason": "Deleted", "message": "the WorkflowExecution was deleted while it ran"}))

    def forget(self, uid: str) -> None:
        run = self.runs.pop(uid, None)
        if run and run.timer:
            run.timer.cancel()

    # ---- the work -------------------------------------------------------------------------

    def _virtual(self, run: Run, status: WorkflowExecutionStatus) -> WorkflowExecutionStatus:
        """The status plus the facts it may not show yet: the replayed history and our own events.

        The reducer is order-independent and idempotent, so folding facts the status already has
        changes nothing."""
        run.overlay = [(seq, ev) for seq, ev in run.overlay if seq > status.state_seq]
        if not run.history and not run.overlay:
            return status
        return fold_all(status, [(ev, seq) for seq, ev in [*run.history, *run.overlay]])

    async def _with_outputs(self, run: Run, status: WorkflowExecutionStatus) -> WorkflowExecutionStatus:
        """Templates read outputs by value: fetch the ones kept in the object store (cached per run)."""
        for key, task in status.tasks.items():
            if task.output_ref is not None and task.output is None:
                ref = task.output_ref.dump()
                if ref["key"] not in run.outputs:
                    run.outputs[ref["key"]] = await self.bus.get_output(ref)
                task.output = run.outputs[ref["key"]]
        return status

    async def _reconcile(self, run: Run, obj: dict[str, Any], status: WorkflowExecutionStatus) -> None:
        if not run.loaded:
            await self._load(run)
            run.loaded = True
        if run.spec is None and status.phase == "Pending":
            await self._start(run, obj)
        if run.spec is None:  # could not start (the failure is published), or started by nobody we know
            return
        virtual = await self._with_outputs(run, self._virtual(run, status))
        assert run.spec is not None and run.context is not None
        context = dataclasses.replace(run.context, cancel=run.cancel)
        wake: list[float] = []
        for action in decide(run.spec, virtual, context, time.time()):
            if isinstance(action, Dispatch):
                await self._dispatch(run, obj, virtual, action)
            elif isinstance(action, FailTask):
                await self._fail_task(run, action)
            elif isinstance(action, CompleteTask):
                await self._complete_task(run, action)
            elif isinstance(action, ScheduleRetry):
                await self._schedule_retry(run, action)
            elif isinstance(action, Finish):
                await self._finish(run, action, virtual)
            elif isinstance(action, WakeAt):
                wake.append(action.at)
        self._wake(run, min(wake) if wake else None)

    def _wake(self, run: Run, at: float | None) -> None:
        """Decide again at ``at`` (a timeout or a retry's back-off ends then)."""
        if run.timer is not None:
            run.timer.cancel()
            run.timer = None
        if at is not None:
            loop = asyncio.get_running_loop()
            run.timer = loop.call_later(max(0.0, at - time.time()) + 0.01, self._retry, run.obj)

    async def _publish(self, run: Run, event: Event) -> int:
        seq = await self.bus.publish_event(event)
        run.overlay.append((seq, event))
        return seq

    async def _start(self, run: Run, obj: dict[str, Any]) -> None:
        """Resolve and validate the workflow; publish Started, or Failed naming the field."""
        if not self._once(run, ("", "start", 0)):
            return
        try:
            wf_name, wf, spec = await self._resolve(obj)
            problems = check_workflow(wf, "spec.workflow" if spec.workflow else "workflow.spec")
            reason = "InvalidWorkflow"
            if not problems:
                problems, reason = check_input(wf.input, spec.input), "InvalidInput"
        except SpecError as e:
            problems, reason, wf_name, wf = e.problems, "InvalidSpec", None, None
        if problems or wf is None:
            message = "; ".join(problems)
            await self._publish(run, make_event(EventType.WORKFLOW_FAILED, SOURCE, run.namespace, run.name, run.uid,
                                                error={"reason": reason, "message": message}))
            await self.bus.emit_log(run.namespace, run.name, "orchestrator", "error", f"not started: {message}")
            return
        run.spec = wf
        timeout = spec.timeout or wf.timeout
        timeout_s = parse_duration(timeout) if timeout else None
        run.context = RunContext(execution=run.name, input=spec.input, timeout=timeout_s)
        await self._publish(run, make_event(EventType.WORKFLOW_STARTED, SOURCE, run.namespace, run.name, run.uid,
                                            workflow=wf_name, taskCount=len(wf.tasks), spec=wf.dump(),
                                            input=spec.input, timeoutSeconds=timeout_s))
        await self.bus.emit_log(run.namespace, run.name, "orchestrator", "info",
                                f"started workflow {wf_name} ({len(wf.tasks)} tasks)")

    async def _resolve(self, obj: dict[str, Any]) -> tuple[str, WorkflowSpec, WorkflowExecutionSpec]:
        try:
            spec = WorkflowExecutionSpec.model_validate(obj.get("spec") or {})
        except Exception as e:  # pydantic ValidationError
            raise SpecError([f"spec: {e}"]) from None
        if spec.workflow is not None:
            return "<inline>", spec.workflow, spec
        if spec.workflow_ref is None:
            raise SpecError(["spec: exactly one of spec.workflowRef or spec.workflow must be set"])
        ns, name = obj["metadata"]["namespace"], spec.workflow_ref.name
        try:
            raw = await asyncio.to_thread(self.kube.get, f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/workflows/{name}")
        except ApiException as e:
            if e.status == 404:
                raise SpecError([f"spec.workflowRef.name: Workflow {name!r} not found in namespace {ns}"]) from None
            raise
        return name, parse_workflow(raw.get("spec") or {}, f"Workflow {name}: spec"), spec

    async def _load(self, run: Run) -> None:
        """First sight of a run (e.g. after a restart): replay its events from the state stream.

        The status may lag the stream: events a killed operator had fetched but not yet written
        come back only after their ack wait. The stream has them all, so decisions are made from
        status + history and never repeat a dispatch the status does not show yet."""
        history = await self.bus.replay(state_subject(run.namespace, run.name, None))
        history = [(seq, ev) for seq, ev in history if ev.data.get("uid") == run.uid]
        run.history = history
        started = next((ev for _, ev in history if ev.type == EventType.WORKFLOW_STARTED), None)
        if started is not None:
            run.spec = WorkflowSpec.model_validate(started.data["spec"])
            run.context = RunContext(execution=run.name, input=started.data.get("input"),
                                     timeout=started.data.get("timeoutSeconds"))

    async def _ensure_nats_secret(self, namespace: str) -> None:
        if namespace in self.secrets_ready:
            return
        values = {"url": self.settings.nats_url, "token": self.settings.nats_token or ""}
        if ca := self.settings.nats_ca():
            values[NATS_CA_KEY] = ca
        body = {"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": self.settings.nats_secret, "namespace": namespace,
                             "labels": {"app.kubernetes.io/managed-by": "compozy-operator"}},
                "data": {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}}
        try:
            await asyncio.to_thread(self.kube.create, f"/api/v1/namespaces/{namespace}/secrets", body)
        except ApiException as e:
            if e.status != 409:
                raise
        self.secrets_ready.add(namespace)

    def _workers_full(self, run: Run, task: str) -> bool:
        """maxWorkers counts pods, not statuses: a child that has reported keeps its pod alive a
        moment longer (its runner is exiting), and a new child must wait for that pod to end."""
        assert run.spec is not None
        if run.limits is None:
            run.limits = worker_limits(run.spec)
        parent = run.limits.get(task.split("[", 1)[0])
        if parent is None:
            return False
        parent_id, limit = parent
        alive = self.alive_pods.get(run.uid, {}).values()
        busy = sum(1 for key in alive if run.limits.get(key.split("[", 1)[0], ("",))[0] == parent_id)
        return busy >= limit

    async def _dispatch(self, run: Run, obj: dict[str, Any], status: WorkflowExecutionStatus, d: Dispatch) -> None:
        key = ("dispatch", d.task, d.attempt)
        if key in run.acted or self._workers_full(run, d.task):
            return  # a full parent is decided again when one of its pods ends
        run.acted.add(key)
        self.alive_pods.setdefault(run.uid, {})[pod_name(run.name, d.task, d.attempt)] = d.task
        try:
            assert run.spec is not None
            name = pod_name(run.name, d.task, d.attempt)
            await self._ensure_nats_secret(run.namespace)
            command = {"namespace": run.namespace, "execution": run.name, "uid": run.uid, "task": d.task,
                       "attempt": d.attempt, **d.command(), "env": run.spec.env or {},
                       "outputInlineLimit": self.settings.output_inline_limit}
            # Both must be stored before the pod exists (it fetches the command); their order is free.
            await asyncio.gather(
                self._publish(run, make_event(EventType.TASK_DISPATCHED, SOURCE, run.namespace, run.name, run.uid,
                                              d.task, d.attempt, podName=name, **d.runs)),
                self.bus.publish_command(command_subject(run.namespace, run.name, d.task, d.attempt), command,
                                         event_id(run.uid, d.task, d.attempt, "TaskExecute")))
            manifest = task_pod(self.settings, obj, d.task, d.attempt, image=d.image, env=d.env,
                                resources=d.resources)
            try:
                await asyncio.to_thread(self.kube.create, f"/api/v1/namespaces/{run.namespace}/pods", manifest)
                PODS_CREATED.inc()
            except ApiException as e:
                if e.status != 409:  # 409: created before a restart; deterministic names make it the same pod
                    raise
            finished = [t.finished_at for t in status.tasks.values() if t.finished_at]
            if finished:
                DISPATCH_SECONDS.observe(max(0.0, time.time() - _parse_time(max(finished))))
            await self.bus.emit_log(run.namespace, run.name, "orchestrator", "info",
                                    f"dispatched task {d.task} attempt {d.attempt} as pod {name}",
                                    task=d.task, attempt=d.attempt)
        except BaseException:
            run.acted.discard(key)
            raise

    @staticmethod
    def _once(run: Run, key: tuple[str, str, int]) -> bool:
        """True the first time an action is carried out for this run (decide repeats itself)."""
        if key in run.acted:
            return False
        run.acted.add(key)
        return True

    async def _fail_task(self, run: Run, f: FailTask) -> None:
        if not self._once(run, ("fail", f.task, f.attempt)):
            return
        # The same id as the runner's own TaskExecutionFailed: whichever is first is the one kept.
        await self._publish(run, make_event(EventType.TASK_FAILED, SOURCE, run.namespace, run.name, run.uid,
                                            f.task, f.attempt, error={"reason": f.reason, "message": f.message}))
        await self.bus.emit_log(run.namespace, run.name, "orchestrator", "warning",
                                f"task {f.task} attempt {f.attempt} failed: {f.message}", task=f.task,
                                attempt=f.attempt)
        if f.stop_pod:
            await self._delete_pod(run.namespace, pod_name(run.name, f.task, f.attempt))

    async def _complete_task(self, run: Run, c: CompleteTask) -> None:
        if not self._once(run, ("complete", c.task, 1)):
            return
        # e.g. a large collection's list of outputs goes to the object store like any large output
        result = await self.bus.output_fields(output_key(run.namespace, run.name, run.uid, c.task, 1), c.output,
                                              self.settings.output_inline_limit)
        await self._publish(run, make_event(EventType.TASK_SUCCESS, SOURCE, run.namespace, run.name, run.uid,
                                            c.task, 1, **result))

    async def _schedule_retry(self, run: Run, r: ScheduleRetry) -> None:
        if not self._once(run, ("retry", r.task, r.attempt)):
            return
        await self._publish(run, make_event(EventType.TASK_RETRY_SCHEDULED, SOURCE, run.namespace, run.name, run.uid,
                                            r.task, r.attempt, delay=r.delay, notBefore=r.not_before))
        await self.bus.emit_log(run.namespace, run.name, "orchestrator", "info",
                                f"task {r.task}: attempt {r.attempt} scheduled in {r.delay:g}s", task=r.task,
                                attempt=r.attempt)

    async def _delete_pod(self, namespace: str, name: str, grace: int | None = None) -> None:
        body = {} if grace is None else {"gracePeriodSeconds": grace}
        try:
            await asyncio.to_thread(self.kube.delete, f"/api/v1/namespaces/{namespace}/pods/{name}", body)
        except ApiException as e:
            if e.status != 404:
                raise

    async def _stop_in_flight(self, run: Run, status: WorkflowExecutionStatus) -> None:
        """The run has ended: tell its tasks still in flight over NATS, and remove their pods.
        (Pods of tasks that already reported exit by themselves.)"""
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
                await self._delete_pod(run.namespace, pod["metadata"]["name"])

    async def _finish(self, run: Run, f: Finish, status: WorkflowExecutionStatus) -> None:
        if not self._once(run, ("finish", f.phase, 0)):
            return
        if f.phase == "Succeeded":
            ev = make_event(EventType.WORKFLOW_SUCCESS, SOURCE, run.namespace, run.name, run.uid, output=f.output)
        else:
            etype = {"Failed": EventType.WORKFLOW_FAILED, "TimedOut": EventType.WORKFLOW_TIMED_OUT,
                     "Cancelled": EventType.WORKFLOW_CANCELLED}[f.phase]
            ev = make_event(etype, SOURCE, run.namespace, run.name, run.uid, error=f.error.dump() if f.error else {})
        await self._publish(run, ev)
        await self.bus.emit_log(run.namespace, run.name, "orchestrator", "info", f"workflow {f.phase.lower()}")
        if f.phase != "Succeeded":
            await self._stop_in_flight(run, status)

    # ---- pods -----------------------------------------------------------------------------

    async def on_node(self, node: dict[str, Any], deleted: bool = False) -> None:
        """A node that is not ready (or gone) strands the task pods on it: look at each of them."""
        ready = next((c for c in (node.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {})
        if ready.get("status") == "True" and not deleted:
            return
        # per watched namespace in namespaced mode: its RBAC allows no cluster-wide pod list
        paths = [f"/api/v1/namespaces/{ns}/pods" for ns in self.settings.namespaces] or ["/api/v1/pods"]
        for path in paths:
            pods = await asyncio.to_thread(self.kube.get, path, labelSelector=TASK_POD_SELECTOR,
                                           fieldSelector=f"spec.nodeName={node['metadata']['name']}")
            for pod in pods["items"]:
                await self.on_pod("MODIFIED", pod, recheck=True)

    async def on_pod(self, event_type: str, pod: dict[str, Any], recheck: bool = False) -> None:
        """Turn a task pod that cannot report into TaskExecutionFailed; clean up finished pods.

        Caught here: a pod deleted before it reported, a pod that failed (OOM-killed, evicted,
        the runner crashed), a pod that cannot start (image, config errors) for
        ``pod_start_timeout``, and a pod whose node is not ready for ``node_lost_seconds``."""
        meta = pod["metadata"]
        owner = next((o for o in meta.get("ownerReferences") or [] if o.get("kind") == "WorkflowExecution"), None)
        labels = meta.get("labels") or {}
        if owner is None or LABEL_TASK not in labels:
            return
        task = (meta.get("annotations") or {}).get(ANNOTATION_TASK) or labels[LABEL_TASK]
        ns, attempt = meta["namespace"], int(labels.get(LABEL_ATTEMPT, "1"))
        phase = (pod.get("status") or {}).get("phase", "Pending")
        self._track_pod(owner["uid"], meta["name"], task, ended=event_type == "DELETED" or phase in ("Succeeded", "Failed"))
        failure = None
        if event_type == "DELETED":
            if phase not in ("Succeeded", "Failed"):
                failure = ("PodDeleted", f"pod {meta['name']} was deleted before the task reported a result")
        elif phase == "Failed":
            failure = _pod_failure(pod)
        elif phase == "Pending":
            failure = self._start_failure(pod)
        elif phase == "Running" and (recheck or not _pod_ready(pod)):
            failure = await self._node_lost(pod)
        if failure:
            reason, message = failure
            # Same id as the runner's own TaskExecutionFailed: if it did report, this is a duplicate.
            ev = make_event(EventType.TASK_FAILED, SOURCE, ns, owner["name"], owner["uid"], task, attempt,
                            podName=meta["name"], error={"reason": reason, "message": message})
            await self.bus.publish_event(ev)
            if event_type != "DELETED" and phase in ("Pending", "Running"):
                await self._delete_pod(ns, meta["name"], grace=0)
        if event_type != "DELETED" and phase in ("Succeeded", "Failed") and self.settings.delete_finished_pods:
            try:
                await asyncio.to_thread(self.kube.delete, f"/api/v1/namespaces/{ns}/pods/{meta['name']}",
                                        {"preconditions": {"uid": meta["uid"]}})
            except ApiException as e:
                if e.status not in (404, 409):
                    raise

    def _track_pod(self, uid: str, name: str, task: str, ended: bool) -> None:
        alive = self.alive_pods.setdefault(uid, {})
        if not ended:
            alive[name] = task
            return
        if alive.pop(name, None) is not None and uid in self.runs:
            run = self.runs[uid]  # a worker slot is free: a full parent may dispatch now
            asyncio.get_running_loop().call_soon(self._retry, run.obj)
        if not alive:
            self.alive_pods.pop(uid, None)

    def _recheck_later(self, pod: dict[str, Any], delay: float) -> None:
        """Look at a pod again later: nothing may change on it while the clock runs out."""
        key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
        if key in self.rechecks:
            return
        self.rechecks.add(key)

        async def recheck() -> None:
            self.rechecks.discard(key)
            try:
                fresh = await asyncio.to_thread(self.kube.get, f"/api/v1/namespaces/{key[0]}/pods/{key[1]}")
            except ApiException:
                return
            await self.on_pod("MODIFIED", fresh, recheck=True)

        asyncio.get_running_loop().call_later(delay, lambda: asyncio.ensure_future(recheck()))

    def _start_failure(self, pod: dict[str, Any]) -> tuple[str, str] | None:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in START_FAILURES:
                limit = self.settings.pod_start_timeout
                age = time.time() - _parse_time(pod["metadata"]["creationTimestamp"])
                if age >= limit:
                    return waiting["reason"], (f"the task pod could not start within {limit:g}s: "
                                               f"{waiting.get('message') or waiting['reason']}")
                self._recheck_later(pod, limit - age + 0.5)
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
        since = time.time() - _parse_time(ready.get("lastTransitionTime") or pod["metadata"]["creationTimestamp"])
        if since >= limit:
            return "NodeLost", (f"node {node_name} has not been ready for {since:.0f}s "
                                f"({ready.get('reason') or 'no status'}); the task's pod is lost")
        self._recheck_later(pod, limit - since + 0.5)
        return None


START_FAILURES = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull",
                            "CreateContainerConfigError", "CreateContainerError", "RunContainerError"})


def worker_limits(spec: WorkflowSpec) -> dict[str, tuple[str, int]]:
    """Child key prefix -> (parent id, maxWorkers) for the parents that bound their children."""
    limits: dict[str, tuple[str, int]] = {}
    for t in spec.tasks:
        if t.type == "parallel" and t.max_workers:
            limits.update({c.id: (t.id, t.max_workers) for c in t.tasks or []})
        elif t.type == "collection" and (t.max_workers or t.mode == "sequential"):
            limits[t.id] = (t.id, 1 if t.mode == "sequential" else t.max_workers or 1)
    return limits


def _pod_ready(pod: dict[str, Any]) -> bool:
    conds = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds) or not conds


def _pod_failure(pod: dict[str, Any]) -> tuple[str, str]:
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
