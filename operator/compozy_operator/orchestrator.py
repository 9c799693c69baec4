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
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from .api.models import GROUP, TERMINAL_PHASES, VERSION, WorkflowExecutionSpec, WorkflowExecutionStatus, WorkflowSpec
from .bus import Bus
from .events import Event, EventType, command_subject, event_id, make_event, state_subject
from .executor import Dispatch, FailTask, Finish, RunContext, decide
from .kube import ApiException, Kube
from .monitoring import DISPATCH_SECONDS, PODS_CREATED
from .pods import LABEL_ATTEMPT, LABEL_TASK, pod_name, task_pod
from .reducer import fold
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
        async with run.lock:
            try:
                await self._reconcile(run, obj, status)
            except Exception:  # noqa: BLE001 - retried; the status stays the truth
                log.exception("reconciling %s/%s failed; retrying in %.0fs", run.namespace, run.name, RETRY_SECONDS)
                asyncio.get_running_loop().call_later(RETRY_SECONDS, self._retry, obj)

    def _retry(self, obj: dict[str, Any]) -> None:
        asyncio.ensure_future(self.reconcile(obj))

    def forget(self, uid: str) -> None:
        self.runs.pop(uid, None)

    # ---- the work -------------------------------------------------------------------------

    def _virtual(self, run: Run, status: WorkflowExecutionStatus) -> WorkflowExecutionStatus:
        """The status plus the facts it may not show yet: the replayed history and our own events.

        The reducer is order-independent and idempotent, so folding facts the status already has
        changes nothing."""
        run.overlay = [(seq, ev) for seq, ev in run.overlay if seq > status.state_seq]
        for seq, ev in [*run.history, *run.overlay]:
            status = fold(status, ev, seq)
        return status

    async def _reconcile(self, run: Run, obj: dict[str, Any], status: WorkflowExecutionStatus) -> None:
        if not run.loaded:
            await self._load(run)
            run.loaded = True
        if run.spec is None and status.phase == "Pending":
            await self._start(run, obj)
        if run.spec is None:  # could not start (the failure is published), or started by nobody we know
            return
        virtual = self._virtual(run, status)
        assert run.spec is not None and run.context is not None
        for action in decide(run.spec, virtual, run.context):
            if isinstance(action, Dispatch):
                await self._dispatch(run, obj, virtual, action)
            elif isinstance(action, FailTask):
                await self._fail_task(run, action)
            elif isinstance(action, Finish):
                await self._finish(run, action)

    async def _publish(self, run: Run, event: Event) -> int:
        seq = await self.bus.publish_event(event)
        run.overlay.append((seq, event))
        return seq

    async def _start(self, run: Run, obj: dict[str, Any]) -> None:
        """Resolve and validate the workflow; publish Started, or Failed naming the field."""
        key = ("", "start", 0)
        if key in run.acted:
            return
        run.acted.add(key)
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
        run.context = RunContext(execution=run.name, input=spec.input)
        await self._publish(run, make_event(EventType.WORKFLOW_STARTED, SOURCE, run.namespace, run.name, run.uid,
                                            workflow=wf_name, taskCount=len(wf.tasks), spec=wf.dump(),
                                            input=spec.input))
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
            run.context = RunContext(execution=run.name, input=started.data.get("input"))

    async def _ensure_nats_secret(self, namespace: str) -> None:
        if namespace in self.secrets_ready:
            return
        body = {"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": self.settings.nats_secret, "namespace": namespace,
                             "labels": {"app.kubernetes.io/managed-by": "compozy-operator"}},
                "data": {k: base64.b64encode(v.encode()).decode()
                         for k, v in (("url", self.settings.nats_url), ("token", self.settings.nats_token or ""))}}
        try:
            await asyncio.to_thread(self.kube.create, f"/api/v1/namespaces/{namespace}/secrets", body)
        except ApiException as e:
            if e.status != 409:
                raise
        self.secrets_ready.add(namespace)

    async def _dispatch(self, run: Run, obj: dict[str, Any], status: WorkflowExecutionStatus, d: Dispatch) -> None:
        key = ("dispatch", d.task, d.attempt)
        if key in run.acted:
            return
        run.acted.add(key)
        try:
            assert run.spec is not None
            name = pod_name(run.name, d.task, d.attempt)
            await self._ensure_nats_secret(run.namespace)
            command = {"namespace": run.namespace, "execution": run.name, "uid": run.uid, "task": d.task,
                       "attempt": d.attempt, "tool": d.tool.dump(), "input": d.input, "env": run.spec.env or {}}
            # Both must be stored before the pod exists (it fetches the command); their order is free.
            await asyncio.gather(
                self._publish(run, make_event(EventType.TASK_DISPATCHED, SOURCE, run.namespace, run.name, run.uid,
                                              d.task, d.attempt, podName=name, tool=d.tool.id)),
                self.bus.publish_command(command_subject(run.namespace, run.name, d.task, d.attempt), command,
                                         event_id(run.uid, d.task, d.attempt, "TaskExecute")))
            manifest = task_pod(self.settings, obj, d.task, d.attempt, d.tool)
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

    async def _fail_task(self, run: Run, f: FailTask) -> None:
        key = ("fail", f.task, f.attempt)
        if key not in run.acted:
            run.acted.add(key)
            await self._publish(run, make_event(EventType.TASK_FAILED, SOURCE, run.namespace, run.name, run.uid,
                                                f.task, f.attempt, error={"reason": f.reason, "message": f.message}))

    async def _finish(self, run: Run, f: Finish) -> None:
        key = ("finish", f.phase, 0)
        if key in run.acted:
            return
        run.acted.add(key)
        if f.phase == "Succeeded":
            ev = make_event(EventType.WORKFLOW_SUCCESS, SOURCE, run.namespace, run.name, run.uid, output=f.output)
        else:
            error = f.error.dump() if f.error else {}
            ev = make_event(EventType.WORKFLOW_FAILED, SOURCE, run.namespace, run.name, run.uid, error=error)
        await self._publish(run, ev)
        await self.bus.emit_log(run.namespace, run.name, "orchestrator", "info", f"workflow {f.phase.lower()}")

    # ---- pods -----------------------------------------------------------------------------

    async def on_pod(self, event_type: str, pod: dict[str, Any]) -> None:
        """Turn a task pod that ended without reporting into TaskExecutionFailed; clean up finished pods."""
        meta = pod["metadata"]
        owner = next((o for o in meta.get("ownerReferences") or [] if o.get("kind") == "WorkflowExecution"), None)
        labels = meta.get("labels") or {}
        if owner is None or LABEL_TASK not in labels:
            return
        ns, task, attempt = meta["namespace"], labels[LABEL_TASK], int(labels.get(LABEL_ATTEMPT, "1"))
        phase = (pod.get("status") or {}).get("phase", "Pending")
        failure = None
        if event_type == "DELETED" and phase not in ("Succeeded", "Failed"):
            failure = ("PodDeleted", f"pod {meta['name']} was deleted before the task reported a result")
        elif phase == "Failed":
            failure = _pod_failure(pod)
        if failure:
            reason, message = failure
            # Same id as the runner's own TaskExecutionFailed: if it did report, this is a duplicate.
            ev = make_event(EventType.TASK_FAILED, SOURCE, ns, owner["name"], owner["uid"], task, attempt,
                            podName=meta["name"], error={"reason": reason, "message": message})
            await self.bus.publish_event(ev)
        if event_type != "DELETED" and phase in ("Succeeded", "Failed") and self.settings.delete_finished_pods:
            try:
                await asyncio.to_thread(self.kube.delete, f"/api/v1/namespaces/{ns}/pods/{meta['name']}",
                                        {"preconditions": {"uid": meta["uid"]}})
            except ApiException as e:
                if e.status not in (404, 409):
                    raise


def _pod_failure(pod: dict[str, Any]) -> tuple[str, str]:
    status = pod.get("status") or {}
    for cs in status.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term:
            reason = term.get("reason") or "Error"
            message = (term.get("message") or "").strip()
            return reason, message or f"the task container exited with code {term.get('exitCode')} ({reason})"
    return status.get("reason") or "PodFailed", status.get("message") or "the task pod failed"
