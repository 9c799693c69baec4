"""The orchestrator's loop: from an execution's status, carry out workflow.Executor's decisions.

Level-triggered: every decision comes from the execution's status (plus the events this
orchestrator published that the status does not show yet, folded on top of it). Nothing here
must survive a restart: the status (with its snapshot), the state stream and deterministic names
(pods, event ids) carry everything.

Every action is retried until it is known done: an action is marked done only after it succeeded,
a failed reconcile is tried again with back-off while its failure is transient, and a failure that
can never go away ends the run ``Failed`` with a message instead of leaving it to hang.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from typing import Any

from nats.js.errors import NotFoundError

from ..resources.models import TERMINAL_PHASES, ErrorInfo, WorkflowExecutionStatus
from ..bus import Bus
from ..events import Event, EventType, make_event, output_key, output_prefix, round_id, stop_subject
from ..execution_requests import requested_retries
from ..executor import CompleteTask, Dispatch, FailTask, Finish, ScheduleRetry, WakeAt, epoch, retry_due, retry_plan
from ..kube import Kube
from ..monitoring import RECONCILE_SECONDS
from ..pods import pod_name
from ..sandbox import EvalPool, EvaluationError
from ..settings import Settings
from .cleanup import Cleanup
from .dispatcher import Dispatcher
from .effects import Effects, backoff, describe, transient
from .pod_watch import PodWatch
from .pool_control import PoolControl
from .retention import Retention
from .run import SOURCE, Run
from .starter import SnapshotLost, Starter
from .timers import Timers

log = logging.getLogger(__name__)
LOADED_POD_RECHECK = 2.0  # seconds after a run's first sight its pods are looked at again (it is decided from by then)
PURGED_MEMORY = 10_000  # deleted runs remembered, so that their leftovers are purged once, not twice
MAX_MESSAGE = 4000  # characters of an error message in an event or the status


class OutputLost(RuntimeError):
    """A task output the run still needs is gone from the object store."""


class Orchestrator:
    def __init__(self, settings: Settings, kube: Kube, bus: Bus) -> None:
        self.settings, self.kube, self.bus = settings, kube, bus
        self.runs: dict[str, Run] = {}
        self.effects = Effects()
        self.timers = Timers(self._fire)
        self.cleanup = Cleanup(kube, bus)
        self.purged: OrderedDict[str, None] = OrderedDict()  # uids of deleted runs whose leftovers are purged
        self.retention = Retention(kube, self.effects, settings.ttl_seconds_after_finished, self.on_deleted)
        self.pool = EvalPool(settings)  # untrusted expressions are evaluated there, bounded
        self.starter = Starter(settings, kube, bus, self.pool)
        self.dispatcher = Dispatcher(settings, kube, bus)
        self.pods = PodWatch(settings, kube, bus, self.runs, self.dispatcher, self.cleanup, self.effects,
                             lambda run: asyncio.get_running_loop().call_soon(self._fire, run.uid))
        self.pools = PoolControl(settings, kube, bus, self.dispatcher, self.runs, self.effects)

    # ---- entry points ---------------------------------------------------------------------

    async def reconcile(self, obj: dict[str, Any], facts: list[Event] | None = None) -> None:
        """Bring one execution forward from its current status (called on every change).

        ``facts``: handed over by the state manager, the events just folded into ``obj``'s status,
        which may not be written yet; None when ``obj`` was read from the API server."""
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            self.forget(meta["uid"])
            self.retention.forget(meta["uid"])
            return
        status = WorkflowExecutionStatus.model_validate(obj.get("status") or {})
        wanted = requested_retries(obj.get("spec") or {})
        known = self.runs.get(meta["uid"])
        # a copy older than the newest status seen (the watch can lag) cannot end a run that goes on
        current = known.newest if known and known.newest and known.newest.state_seq > status.state_seq else status
        if current.phase in TERMINAL_PHASES and not retry_due(current, max(wanted, known.wanted if known else 0)):
            workflow = ((obj.get("spec") or {}).get("workflowRef") or {}).get("name")
            # its end, first seen here; and again once the API server has it (the prune LISTs the runs,
            # and a status handed over by the state manager may not be written yet)
            if (facts is None or meta["uid"] not in self.pods.finished) and isinstance(workflow, str):
                self.retention.workflow_seen(meta["namespace"], workflow)
            self.forget(meta["uid"], epoch(current.finished_at) if current.finished_at else None, meta["namespace"])
            await self.retention.run_seen(obj)
            return
        self.pool.start()
        run = self.runs.setdefault(meta["uid"], Run(meta["uid"], meta["namespace"], meta["name"]))
        run.obj = obj
        if isinstance(meta.get("generation"), int):  # a handed-over copy may be older than the watch's
            run.generation = max(run.generation or 0, meta["generation"])
        if wanted >= run.wanted:  # (a copy from before the latest retry: its cancel was of an earlier round)
            if wanted > run.wanted:
                run.cancel = False  # a new round: the cancel of an earlier one is not its own
            run.wanted = wanted
            run.cancel = run.cancel or bool((obj.get("spec") or {}).get("cancel"))
        async with run.lock:
            if facts is None:
                run.confirm(status)
            else:
                run.learn(facts)
            # The watch can deliver a copy older than the status the state manager handed over
            # directly: decide from the newest (the highest stream sequence folded), never go back.
            if run.newest is not None and status.state_seq < run.newest.state_seq:
                status = run.newest
            run.newest = status
            try:
                with RECONCILE_SECONDS.time():
                    await self._reconcile(run, obj, status)
                run.failures = 0
                self.timers.set(run.uid, "retry", None)
            except Exception as e:  # noqa: BLE001 - classified: retried, or the run ends with the message
                await self._failed(run, status, e)

    async def on_deleted(self, obj: dict[str, Any]) -> None:
        """The execution is gone (its delete event; or deleted by retention, which calls this at once
        so that a crash before the delete event is seen loses as little as possible)."""
        meta = obj["metadata"]
        self.forget(meta["uid"])
        self.retention.forget(meta["uid"])
        if meta["uid"] in self.purged:
            return
        self.purged[meta["uid"]] = None
        while len(self.purged) > PURGED_MEMORY:
            self.purged.popitem(last=False)
        await self.effects.run(("deleted", meta["uid"]), lambda: self.cleanup.deleted(obj),
                               f"cleaning up after the deleted execution {meta['namespace']}/{meta['name']}")

    async def on_pod(self, event_type: str, pod: dict[str, Any]) -> None:
        await self.pods.on_pod(event_type, pod)

    async def on_node(self, node: dict[str, Any], deleted: bool = False) -> None:
        await self.pods.on_node(node, deleted)

    def forget(self, uid: str, finished_at: float | None = None, namespace: str | None = None) -> None:
        """The run (of ``namespace``) has ended (at ``finished_at``) or is gone."""
        run = self.runs.pop(uid, None)
        self.dispatcher.forget(uid)
        self.timers.cancel(uid)
        self.pods.run_ended(uid, finished_at, run.namespace if run is not None else namespace)

    async def close(self) -> None:
        await self.effects.close()
        await self.pool.close()

    async def pool_queue_recreated(self) -> None:
        """The pool queue's stream was deleted and is back, empty: every pool's consumer is created
        again, and every run looks again at its pooled attempts (dispatcher: lost messages queued again)."""
        await self.dispatcher.pool_queue_recreated()
        for key in list(self.pools.pools):
            self.pools.resync(key)
        for uid, run in list(self.runs.items()):
            status = run.newest or run.status
            tasks = status.tasks if status is not None else {}
            # dispatched again, to look at their messages: the attempts not started yet
            run.pods -= {(key, attempt) for key, attempt in self.dispatcher.pooled.get(uid, {})
                         if key in tasks and tasks[key].attempt == attempt and tasks[key].phase == "Pending"}
            self._fire(uid)

    def _fire(self, uid: str) -> None:
        if run := self.runs.get(uid):
            asyncio.ensure_future(self.reconcile(run.obj))

    # ---- failures -------------------------------------------------------------------------

    async def _failed(self, run: Run, status: WorkflowExecutionStatus, e: Exception) -> None:
        run.failures += 1
        if transient(e):
            delay = backoff(run.failures)
            if run.failures == 1:
                log.warning("reconciling %s/%s failed (%s); retrying in %.1fs", run.namespace, run.name, describe(e),
                            delay)
            self.timers.set(run.uid, "retry", time.time() + delay)
            return
        log.error("%s/%s cannot continue: %s", run.namespace, run.name, describe(e), exc_info=e)
        reason = type(e).__name__ if isinstance(e, SnapshotLost | OutputLost) else "InternalError"
        message = describe(e)
        if isinstance(e, EvaluationError):  # a bound of the evaluation pool (its message says which)
            reason, message = e.reason, str(e)
        try:
            await self._finish(run, Finish("Failed", error=ErrorInfo(reason=reason, message=message)),
                               run.virtual(status))
        except Exception as again:  # noqa: BLE001 - not even the end could be recorded: later
            log.warning("ending %s/%s failed too (%s); retrying", run.namespace, run.name, describe(again))
            self.timers.set(run.uid, "retry", time.time() + backoff(run.failures))

    # ---- the work -------------------------------------------------------------------------

    async def _reconcile(self, run: Run, obj: dict[str, Any], status: WorkflowExecutionStatus) -> None:
        if not run.loaded:
            for pod in await self.starter.load(run, status):
                self.pods.recheck_later(pod, LOADED_POD_RECHECK)
            run.loaded = True
        virtual = run.virtual(status)
        if retry_due(virtual, run.wanted):
            await self._retry(run, virtual)
            virtual = run.virtual(status)
        if run.retrying():
            # The round began in our view only: nothing of it is done before the state manager has
            # folded its Retried (its status comes back here), so every event of the round is folded
            # after the reset, never under it (after a crash: within the consumer's ack wait).
            self.timers.set(run.uid, "wake", await run.republish(self.bus, time.time()))
            return
        if run.spec is None and virtual.phase == "Pending":
            await self.starter.start(run, obj, virtual.retries or 0)
            virtual = run.virtual(status)
        if run.spec is None:
            if virtual.phase == "Running":
                raise SnapshotLost("the run's workflow snapshot is in neither its status nor the state stream")
            return  # could not start: the failure is published
        virtual = await self._with_outputs(run, virtual)
        assert run.context is not None
        context = dataclasses.replace(run.context, cancel=run.cancel, pods=frozenset(run.pods))
        wake: list[float] = []
        for action in await self.pool.decide(run.uid, run.spec, virtual, context, time.time()):
            if isinstance(action, Dispatch):
                await self.dispatcher.dispatch(run, obj, virtual, action)
            elif isinstance(action, FailTask):
                await self._fail_task(run, action)
            elif isinstance(action, CompleteTask):
                await run.once(("complete", action.task, action.attempt), lambda a=action: self._complete_task(run, a))
            elif isinstance(action, ScheduleRetry):
                await run.once(("retry", action.task, action.attempt), lambda a=action: self._schedule_retry(run, a))
            elif isinstance(action, Finish):
                await run.once((f"finish {action.phase}", "", virtual.retries or 0),
                               lambda a=action: self._finish(run, a, virtual))
            elif isinstance(action, WakeAt):
                wake.append(action.at)
        if (again := await run.republish(self.bus, time.time())) is not None:
            wake.append(again)
        self.timers.set(run.uid, "wake", min(wake) if wake else None)
        run.status = virtual
        await self.pods.stop_stale(run)

    async def _with_outputs(self, run: Run, status: WorkflowExecutionStatus) -> WorkflowExecutionStatus:
        """Templates read outputs by value: fetch the ones kept in the object store (cached per run)."""
        for key, task in status.tasks.items():
            if task.output_ref is not None and task.output is None:
                ref = task.output_ref.dump()
                if ref["key"] not in run.outputs:
                    try:
                        run.outputs[ref["key"]] = await self.bus.get_output(ref)
                    except NotFoundError:
                        raise OutputLost(f"the stored output of task {key} ({ref['bucket']}/{ref['key']}) "
                                         "is gone") from None
                task.output = run.outputs[ref["key"]]
        return status

    async def _log(self, run: Run, level: str, message: str, **fields: Any) -> None:
        await self.bus.emit_log(run.namespace, run.name, run.uid, "orchestrator", level, message, **fields)

    async def _fail_task(self, run: Run, f: FailTask) -> None:
        """Published each time the executor asks, until the status shows the attempt ended (see
        Run.publish: the stream decides between this and the attempt's own report); the same id
        as the runner's own TaskExecutionFailed, so a repeat is dropped."""
        message = f.message[:MAX_MESSAGE]
        await run.publish(self.bus, make_event(EventType.TASK_FAILED, SOURCE, run.namespace, run.name, run.uid,
                                               f.task, f.attempt, error={"reason": f.reason, "message": message}))
        await run.once(("fail", f.task, f.attempt), lambda: self._failed_task(run, f, message))

    async def _failed_task(self, run: Run, f: FailTask, message: str) -> None:
        await self._log(run, "warning", f"task {f.task} attempt {f.attempt} failed: {message}", task=f.task,
                        attempt=f.attempt)
        if f.stop_pod:  # its pod, or its process on a pool's runner
            assert self.bus.nc is not None
            await self.bus.nc.publish(stop_subject(run.namespace, run.name, run.uid, f.task, f.attempt), b"{}")
            await self.cleanup.delete_pod(run.namespace, pod_name(run.name, f.task, f.attempt))

    async def _complete_task(self, run: Run, c: CompleteTask) -> None:
        # e.g. a large collection's list of outputs goes to the object store like any large output
        result = await self.bus.output_fields(output_key(run.namespace, run.name, run.uid, c.task, c.attempt),
                                              c.output, self.settings.output_inline_limit)
        await run.publish(self.bus, make_event(EventType.TASK_SUCCESS, SOURCE, run.namespace, run.name, run.uid,
                                               c.task, c.attempt, **result))

    async def _schedule_retry(self, run: Run, r: ScheduleRetry) -> None:
        await run.publish(self.bus, make_event(EventType.TASK_RETRY_SCHEDULED, SOURCE, run.namespace, run.name,
                                               run.uid, r.task, r.attempt, delay=r.delay, notBefore=r.not_before))
        await self._log(run, "info", f"task {r.task}: attempt {r.attempt} scheduled in {r.delay:g}s", task=r.task,
                        attempt=r.attempt)

    async def _finish(self, run: Run, f: Finish, status: WorkflowExecutionStatus) -> None:
        """End the run. Attempts in flight are stopped *before* the end is published: a crash in
        between repeats both, while the other order would leave their pods running. What the
        run was decided from goes into the stream again first if the status does not show it yet
        (see Run.republish): the end must not outlive the facts it rests on."""
        await run.republish(self.bus, time.time(), everything=True)
        r = status.retries or 0  # each retry round ends once: its end has an id (and output key) of its own
        rounds = {"round": r} if r else {}
        if f.phase == "Succeeded":
            key = f"{output_prefix(run.namespace, run.name, run.uid)}_workflow/output" + (f"-{r}" if r else "")
            result = await self.bus.output_fields(key, f.output, self.settings.output_inline_limit)
            event = make_event(EventType.WORKFLOW_SUCCESS, SOURCE, run.namespace, run.name, run.uid,
                               id_extra=round_id(r), generation=run.generation, **rounds, **result)
        else:
            await self.cleanup.stop_in_flight(run, status)
            event = self._end_event(run, f, r)
        await run.publish(self.bus, event)
        await self._log(run, "info", f"workflow {f.phase.lower()}" + (f" (retry {r})" if r else ""))

    async def _retry(self, run: Run, status: WorkflowExecutionStatus) -> None:
        """Begin retry round ``run.wanted`` of an ended run: one event, whose fold (reducer) makes the
        run Running again and resets the tasks :func:`retry_plan` names; the walk does the rest."""
        self.pods.run_resumed(run.uid)
        r, plan = run.wanted, retry_plan(run.spec, status) if run.spec else {}  # never started: start again
        await run.publish(self.bus, make_event(EventType.WORKFLOW_RETRIED, SOURCE, run.namespace, run.name, run.uid,
                                               id_extra=round_id(r), round=r, tasks=plan, generation=run.generation))
        shown = ", ".join(list(plan)[:10]) + (f" and {len(plan) - 10} more" if len(plan) > 10 else "")
        await self._log(run, "info", f"retry {r}: the run continues; tasks to run again: {shown or 'none'}")

    @staticmethod
    def _end_event(run: Run, f: Finish, r: int) -> Event:
        etype = {"Failed": EventType.WORKFLOW_FAILED, "TimedOut": EventType.WORKFLOW_TIMED_OUT,
                 "Cancelled": EventType.WORKFLOW_CANCELLED}[f.phase]
        error = f.error.dump() if f.error else {}
        if error.get("message"):
            error = {**error, "message": error["message"][:MAX_MESSAGE]}
        return make_event(etype, SOURCE, run.namespace, run.name, run.uid, id_extra=round_id(r), error=error,
                          generation=run.generation, **({"round": r} if r else {}))
