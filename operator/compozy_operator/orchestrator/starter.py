"""Starting runs, and picking them up again after a restart.

A run starts once: its Workflow is resolved and validated, and ``WorkflowExecutionStarted``
carries the snapshot (resolved spec, input, timeout) that the state manager folds into
``status.snapshot``. From then on the run depends on nothing but its own object: a restarted
operator reads the snapshot from the status (or from the stream, when the status lags), large
parts from the object store. A start that can never succeed (invalid spec or input, a value too
large or too deep) ends the run ``Failed`` with a message naming the field.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.js.errors import NotFoundError
from pydantic import ValidationError

from ..resources.models import (GROUP, VERSION, OutputRef, Snapshot, WorkflowExecutionSpec, WorkflowExecutionStatus,
                          WorkflowSpec, parse_duration)
from ..bus import Bus, PayloadTooLarge
from ..events import EventType, make_event, output_prefix, round_id, state_subject
from ..execution_requests import LABEL_CREATED, LABEL_WORKFLOW, created_value
from ..executor import RunContext, epoch
from ..kube import ApiException, Kube
from ..pools import RUNNER_POD_SELECTOR
from ..resources.paths import executions_path
from ..pods import ANNOTATION_TASK, LABEL_ATTEMPT, LABEL_EXECUTION, LABEL_TASK, label_value
from ..reducer import fold_all
from ..sandbox import EvalPool, EvaluationError
from ..settings import Settings
from ..validation import SpecError, apply_defaults, input_problems, model_problems, parse_workflow
from .run import SOURCE, Run

log = logging.getLogger(__name__)


def run_labels_patch(obj: dict[str, Any]) -> dict[str, str]:
    """The labels the operator keeps on a run that it lacks or has wrong (empty: none)."""
    meta = obj["metadata"]
    want: dict[str, str] = {}
    name = ((obj.get("spec") or {}).get("workflowRef") or {}).get("name")
    if isinstance(name, str) and name:
        want[LABEL_WORKFLOW] = label_value(name)
    if meta.get("creationTimestamp"):
        want[LABEL_CREATED] = created_value(epoch(meta["creationTimestamp"]))
    have = meta.get("labels") or {}
    return {k: v for k, v in want.items() if have.get(k) != v}


class SnapshotLost(RuntimeError):
    """A running run whose snapshot is neither in its status nor in the stream."""


class Starter:
    def __init__(self, settings: Settings, kube: Kube, bus: Bus, pool: EvalPool) -> None:
        self.settings, self.kube, self.bus, self.pool = settings, kube, bus, pool

    async def start(self, run: Run, obj: dict[str, Any], round: int = 0) -> None:
        """Resolve and validate the workflow; publish Started, or Failed naming the field. The run's
        input is ``spec.input`` with the defaults of the workflow's input schema filled in.
        ``round``: a run that never started is started again by a retry (docs/retry.md)."""
        problems: list[str] = []
        await self._label(obj)
        try:
            wf_name, wf, spec = await self._resolve(obj)
            value = apply_defaults(wf.input, spec.input)
            # the workflow's checks, then the input's (its schema's regexes are untrusted): in the pool
            problems, reason = await self.pool.validate(wf, "spec.workflow" if spec.workflow else "workflow.spec",
                                                        value)
        except SpecError as e:
            problems, reason = e.problems, "InvalidSpec"
        except EvaluationError as e:  # the checks killed their worker: the run cannot start
            problems, reason = [str(e)], e.reason
        if problems:
            await self._refuse(run, reason, "; ".join(problems), round)
            return
        timeout = spec.timeout or wf.timeout
        timeout_s = parse_duration(timeout) if timeout else None
        prefix = output_prefix(run.namespace, run.name, run.uid)
        inline = self.settings.output_inline_limit
        snapshot = {**await self.bus.output_fields(f"{prefix}_snapshot/spec", wf.dump(), inline, "spec"),
                    **await self.bus.output_fields(f"{prefix}_snapshot/input", value, inline, "input")}
        started = make_event(EventType.WORKFLOW_STARTED, SOURCE, run.namespace, run.name, run.uid,
                             id_extra=round_id(round), workflow=wf_name, taskCount=len(wf.tasks), timeoutSeconds=timeout_s,
                             generation=run.generation, **({"retry": spec.retry} if spec.retry else {}),
                             **({"ttlSecondsAfterFinished": wf.ttl_seconds_after_finished}
                                if wf.ttl_seconds_after_finished is not None else {}), **snapshot)
        try:
            await run.publish(self.bus, started)
        except PayloadTooLarge as e:  # e.g. a huge workflow name; everything large is stored apart
            await self._refuse(run, "PayloadTooLarge", str(e), round)
            return
        run.spec = wf
        run.context = RunContext(execution=run.name, input=value, timeout=timeout_s)
        await self.bus.emit_log(run.namespace, run.name, run.uid, "orchestrator", "info",
                                f"started workflow {wf_name} ({len(wf.tasks)} tasks)")

    async def _label(self, obj: dict[str, Any]) -> None:
        """Label a run with its Workflow (``kubectl get wfx -l compozy.dev/workflow=NAME``; inline-workflow
        runs have none) and its creation second (``compozy.dev/created-at``, the API's time filter)
        where whoever created it did not, or not exactly: one metadata patch per run at most, none
        for runs that api.Service or the CLI created with the right labels (execution_requests)."""
        meta = obj["metadata"]
        patch = run_labels_patch(obj)
        if not patch:
            return
        try:
            await asyncio.to_thread(self.kube.merge_patch, executions_path(meta["namespace"], meta["name"]),
                                    {"metadata": {"labels": patch}})
        except ApiException as e:
            if e.status != 404:  # deleted meanwhile: nothing to label
                raise

    async def _refuse(self, run: Run, reason: str, message: str, round: int) -> None:
        await run.publish(self.bus, make_event(EventType.WORKFLOW_FAILED, SOURCE, run.namespace, run.name, run.uid,
                                               id_extra=round_id(round), error={"reason": reason,
                                                                                "message": message[:4000]},
                                               **({"round": round} if round else {})))
        await self.bus.emit_log(run.namespace, run.name, run.uid, "orchestrator", "error",
                                f"not started: {message[:4000]}")

    async def _resolve(self, obj: dict[str, Any]) -> tuple[str, WorkflowSpec, WorkflowExecutionSpec]:
        raw = obj.get("spec") or {}
        if problems := input_problems(raw.get("input")):  # a large input runs (offloaded); a deep one never
            raise SpecError(problems)
        try:
            spec = WorkflowExecutionSpec.model_validate(raw)
        except ValidationError as e:
            raise SpecError(model_problems(e)) from None
        if spec.workflow is not None:
            return "<inline>", spec.workflow, spec
        if spec.workflow_ref is None:
            raise SpecError(["spec: exactly one of spec.workflowRef or spec.workflow must be set"])
        ns, name = obj["metadata"]["namespace"], spec.workflow_ref.name
        try:
            wf = await asyncio.to_thread(self.kube.get, f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/workflows/{name}")
        except ApiException as e:
            if e.status == 404:
                raise SpecError([f"spec.workflowRef.name: Workflow {name!r} not found in namespace {ns}"]) from None
            raise
        return name, parse_workflow(wf.get("spec") or {}, f"Workflow {name}: spec"), spec

    async def load(self, run: Run, status: WorkflowExecutionStatus) -> list[dict[str, Any]]:
        """First sight of a run (e.g. after a restart): what exists of it, then its events; returns
        its pods (the pod watch looks at them again once the run is decided from: their events
        may have come before the run was loaded, when nothing could be decided about them).

        Pods are listed *before* the stream is replayed: a pod gone at list time had published
        all it ever will before the replay, so an attempt the replay still shows in flight without
        a pod really has none (dispatched but never created, or lost unseen)."""
        pods = await asyncio.to_thread(self.kube.get, f"/api/v1/namespaces/{run.namespace}/pods",
                                       labelSelector=f"{LABEL_EXECUTION}={label_value(run.name)}")
        own = [pod for pod in pods["items"]
               if any(o.get("uid") == run.uid for o in pod["metadata"].get("ownerReferences") or [])]
        for pod in own:
            meta = pod["metadata"]
            labels = meta.get("labels") or {}
            task = (meta.get("annotations") or {}).get(ANNOTATION_TASK) or labels.get(LABEL_TASK, "")
            run.pods.add((task, int(labels.get(LABEL_ATTEMPT, "1"))))
        history = await self.bus.replay(state_subject(run.namespace, run.name, None))
        run.history = [(seq, ev) for seq, ev in history if ev.data.get("uid") == run.uid]
        # pooled attempts started on a runner that is still there are in flight (if it goes, the
        # pool's watch or their queue message coming back fails them: pool_control, pool_runner)
        running = [(task, st) for task, st in fold_all(status, [(ev, seq) for seq, ev in run.history]).tasks.items()
                   if st.phase == "Running" and (task, st.attempt) not in run.pods]
        runners = await self._runners(run.namespace) if running else set()
        run.pods.update((task, st.attempt) for task, st in running if st.pod_name in runners)
        # the status's snapshot, else the stream's (a status written before snapshots existed)
        started = [(ev, seq) for seq, ev in run.history if ev.type == EventType.WORKFLOW_STARTED][:1]
        snapshot = status.snapshot or fold_all(WorkflowExecutionStatus(), started).snapshot
        if snapshot is not None:
            run.spec, run.context = await self._restore(run, snapshot)
        return own

    async def _runners(self, namespace: str) -> set[str]:
        """The names of the namespace's pool runner pods that have not ended."""
        pods = await asyncio.to_thread(self.kube.get, f"/api/v1/namespaces/{namespace}/pods",
                                       labelSelector=RUNNER_POD_SELECTOR)
        return {p["metadata"]["name"] for p in pods["items"]
                if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")}

    async def _restore(self, run: Run, snap: Snapshot) -> tuple[WorkflowSpec, RunContext]:
        spec = await self._value(run, snap.spec, snap.spec_ref)
        value = await self._value(run, snap.input, snap.input_ref)
        return (WorkflowSpec.model_validate(spec),
                RunContext(execution=run.name, input=value, timeout=snap.timeout_seconds))

    async def _value(self, run: Run, inline: Any, ref: OutputRef | None) -> Any:
        if ref is None:
            return inline
        try:
            return await self.bus.get_output(ref.dump())
        except NotFoundError:
            raise SnapshotLost(f"the run's stored snapshot {ref.bucket}/{ref.key} is gone") from None
