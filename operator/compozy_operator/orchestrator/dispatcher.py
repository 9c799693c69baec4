"""Dispatching task attempts: the TaskExecute command, ``TaskDispatched``, then the pod.

Idempotent end to end, so it is simply done again until the pod is known to exist: the event
has a deterministic id (JetStream drops a repeat), the command is the one kept on its subject
(a repeat replaces it), the pod has a deterministic name (a repeat answers 409). That is what
makes a crash between the event and the pod harmless: the restarted orchestrator sees a
dispatched attempt without a pod and dispatches it again. The runner's claim on its attempt
(task_executor) keeps a tool from running twice even so.

A pooled attempt (its tool names a RunnerPool: docs/pools.md) gets no pod: the command, then a
message on its pool's work queue naming the attempt and the command's nonce, then
``TaskDispatched``; a dispatch that finds the attempt dispatched in the status publishes nothing
again (the queue holds its message until a runner has run it), unless the queue's stream was created
after the dispatch (deleted and recreated: its messages are gone) and no runner has claimed the
attempt: then its message is queued again, with the stored command's nonce and the message id of the
first (so a stream that was not recreated after all drops it as a duplicate). A runner process that
finds the attempt claimed on a first delivery (such a second message) leaves it to its holder.

The command carries a random nonce that the pod is created with (env ``COMPOZY_COMMAND_NONCE``),
and the runner runs only a command that carries its pod's (docs/security.md): a command anyone
else published, before or after the operator's, is not run. The command has no ``Nats-Msg-Id``
(a guessable one let a forged command be stored first and the real one dropped as its
duplicate): a repeat just replaces it. A dispatch that finds the pod there already (409: a
restart, a retry) reads the pod's nonce and, if it published another, publishes the command
again with the pod's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
from collections import defaultdict
from typing import Any

from ..resources.models import WorkflowExecutionStatus, WorkflowSpec
from ..bus import Bus, PayloadTooLarge, without_credentials
from ..events import (POOL_STREAM, EventType, claim_subject, command_subject, event_id, make_event, pool_subject,
                      rendered_key)
from ..executor import Dispatch, epoch
from ..kube import ApiException, Kube
from ..monitoring import DISPATCH_SECONDS, PODS_CREATED
from ..pods import NATS_CA_KEY, pod_name, pod_nonce, task_pod
from ..pools import PoolWork
from ..reducer import TASK_TERMINAL
from ..retention import PodRule
from ..settings import Settings
from .run import SOURCE, Run

log = logging.getLogger(__name__)
REJECTED = frozenset({400, 422})  # the API server refuses the pod itself: retrying the same pod cannot help


class Dispatcher:
    def __init__(self, settings: Settings, kube: Kube, bus: Bus) -> None:
        self.settings, self.kube, self.bus = settings, kube, bus
        self.secrets_ready: set[str] = set()
        # one create per namespace, not one per run dispatching there at once (the rest answered 409)
        self.secret_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # task pods not yet ended, per execution uid: pod name -> task key (kept by the pod watch)
        self.alive: dict[str, dict[str, str]] = {}
        self.default_pod_rule = PodRule(settings.pod_cleanup, settings.pod_cleanup_delay)
        # pooled attempts dispatched and not seen ended, per execution uid: (task key, attempt) -> task key
        self.pooled: dict[str, dict[tuple[str, int], str]] = {}
        self.known_pools: set[tuple[str, str]] = set()  # (namespace, name) of the RunnerPools seen (pool_control)
        # when the pool queue's stream was created (epoch seconds; None: not read yet), and the
        # pooled attempts queued again since (uid, task key, attempt)
        self.pool_queue_created: float | None = None
        self.requeued: set[tuple[str, str, int]] = set()

    def pod_rule(self, run: Run) -> PodRule:
        """The run's pod cleanup rule: its Workflow's ``podCleanup`` over the operator's default."""
        return PodRule.of(run.spec.pod_cleanup if run.spec else None, self.default_pod_rule)

    async def dispatch(self, run: Run, obj: dict[str, Any], status: WorkflowExecutionStatus, d: Dispatch) -> None:
        if (d.task, d.attempt) in run.pods:
            return
        if d.pool is not None:
            await self._dispatch_pooled(run, status, d, d.pool)
            return
        name = pod_name(run.name, d.task, d.attempt)
        alive = self.alive.setdefault(run.uid, {})
        if name not in alive and self._workers_full(run, d.task, status):
            return  # a full parent is decided again when one of its pods ends
        alive[name] = d.task
        try:
            nonce = secrets.token_urlsafe(24)
            if not await self._publish(run, d, name, nonce):
                alive.pop(name, None)
                return
            manifest = task_pod(self.settings, obj, d.task, d.attempt, image=d.image, env=d.env,
                                resources=d.resources, nonce=nonce, cleanup=self.pod_rule(run).annotation())
            try:
                await asyncio.to_thread(self.kube.create, f"/api/v1/namespaces/{run.namespace}/pods", manifest)
                PODS_CREATED.inc()
            except ApiException as e:
                if e.status in REJECTED:
                    alive.pop(name, None)
                    await self._fail(run, d, "PodRejected", f"the API server refused pod {name}: {_api_message(e)}")
                    return
                if e.status != 409:  # 409: created before (a restart, a retry); the same deterministic pod
                    raise
                await self._command_for_existing(run, d, name, nonce)
        except BaseException:
            alive.pop(name, None)
            raise
        run.pods.add((d.task, d.attempt))
        finished = [t.finished_at for t in status.tasks.values() if t.finished_at]
        if finished:
            DISPATCH_SECONDS.observe(max(0.0, time.time() - epoch(max(finished))))
        await self.bus.emit_log(run.namespace, run.name, run.uid, "orchestrator", "info",
                                f"dispatched task {d.task} attempt {d.attempt} as pod {name}",
                                task=d.task, attempt=d.attempt)

    async def _dispatch_pooled(self, run: Run, status: WorkflowExecutionStatus, d: Dispatch, pool: str) -> None:
        mine = self.pooled.setdefault(run.uid, {})
        st = status.tasks.get(d.task)
        dispatched = st is not None and st.attempt == d.attempt and st.phase in ("Pending", "Running")
        if (d.task, d.attempt) not in mine and self._workers_full(run, d.task, status):
            return
        if not dispatched:  # (a restarted operator finds dispatched attempts in the status: nothing to redo)
            nonce = secrets.token_urlsafe(24)
            work = PoolWork(run.namespace, run.name, run.uid, d.task, d.attempt, nonce)
            try:
                # the pool in the command: the operator's word that the attempt runs there (the NATS
                # callout grants a runner's process the attempt's identity only then: nats_auth.decision)
                await self.bus.publish_command(command_subject(run.namespace, run.name, d.task, d.attempt),
                                               {**self._command(run, d, nonce), "pool": pool})
                # the nonce in the id: a dispatch repeated after a crash queues its own message (the
                # first one's process finds the command is not its own and leaves: pool_runner)
                await self.bus.publish_pool_work(pool_subject(run.namespace, pool), work.dump(),
                                                 event_id(run.uid, d.task, d.attempt, "PoolWork", nonce))
            except PayloadTooLarge as e:
                await self._fail(run, d, "InputTooLarge", f"task {d.task}: its rendered input is too large to send: {e}")
                return
            await run.publish(self.bus, make_event(EventType.TASK_DISPATCHED, SOURCE, run.namespace, run.name, run.uid,
                                                   d.task, d.attempt, pool=pool, **d.runs,
                                                   **await self._rendered(run, d)))
            if (run.namespace, pool) not in self.known_pools:  # it waits in the queue: say why
                await self.bus.publish_event(make_event(
                    EventType.TASK_POD_WAITING, SOURCE, run.namespace, run.name, run.uid, d.task, d.attempt,
                    id_extra="PoolNotFound", reason="PoolNotFound",
                    message=f"RunnerPool {pool} does not exist in namespace {run.namespace}; the attempt waits in its "
                    "queue until it does (or until its timeout)"))
        elif st is not None and st.phase == "Pending" and st.dispatched_at:
            await self._requeue_if_lost(run, d, pool, epoch(st.dispatched_at))
        mine[(d.task, d.attempt)] = d.task
        run.pods.add((d.task, d.attempt))
        if not dispatched:
            await self.bus.emit_log(run.namespace, run.name, run.uid, "orchestrator", "info",
                                    f"dispatched task {d.task} attempt {d.attempt} to runner pool {pool}",
                                    task=d.task, attempt=d.attempt)

    async def pool_queue_recreated(self) -> None:
        """The pool queue's stream is (re)created: read when, so that dispatches check their messages."""
        created = await self.bus.stream_created(POOL_STREAM)
        self.pool_queue_created = created.timestamp() if created is not None else None

    async def _requeue_if_lost(self, run: Run, d: Dispatch, pool: str, dispatched_at: float) -> None:
        """Queue a dispatched, not started attempt's message again if the queue lost it (see the module)."""
        if self.pool_queue_created is None:
            await self.pool_queue_recreated()
        key = (run.uid, d.task, d.attempt)
        if self.pool_queue_created is None or dispatched_at >= self.pool_queue_created or key in self.requeued:
            return
        if await self.bus.get_command(claim_subject(run.namespace, run.name, run.uid, d.task, d.attempt)):
            return  # a runner took it before the queue went: it runs (or its runner is found lost)
        stored = await self.bus.get_command(command_subject(run.namespace, run.name, d.task, d.attempt))
        nonce = stored[1].get("nonce") if stored is not None and isinstance(stored[1], dict) else None
        if not isinstance(nonce, str):  # the commands went too: a fresh one (as a new dispatch would)
            nonce = secrets.token_urlsafe(24)
            await self.bus.publish_command(command_subject(run.namespace, run.name, d.task, d.attempt),
                                           {**self._command(run, d, nonce), "pool": pool})
        work = PoolWork(run.namespace, run.name, run.uid, d.task, d.attempt, nonce)
        await self.bus.publish_pool_work(pool_subject(run.namespace, pool), work.dump(),
                                         event_id(run.uid, d.task, d.attempt, "PoolWork", nonce))
        self.requeued.add(key)
        log.warning("queued task %s attempt %d of %s/%s again on pool %s: the queue's stream was recreated after "
                    "its dispatch", d.task, d.attempt, run.namespace, run.name, pool)
        await self.bus.emit_log(run.namespace, run.name, run.uid, "orchestrator", "warning",
                                f"queued task {d.task} attempt {d.attempt} again on runner pool {pool}: the pool "
                                "queue's stream was deleted and recreated after its dispatch", task=d.task,
                                attempt=d.attempt)

    def _command(self, run: Run, d: Dispatch, nonce: str) -> dict[str, Any]:
        assert run.spec is not None
        return {"namespace": run.namespace, "execution": run.name, "uid": run.uid, "task": d.task,
                "attempt": d.attempt, "nonce": nonce, **d.command(), "env": run.spec.env or {},
                "outputInlineLimit": self.settings.output_inline_limit}

    async def _rendered(self, run: Run, d: Dispatch) -> dict[str, Any]:
        """The attempt's rendered input for its TaskDispatched event (api.Service's ``/attempt``), by
        the outputs' rule: in the event up to the inline limit, else in the object store (``renderedRef``)."""
        return await self.bus.output_fields(rendered_key(run.namespace, run.name, run.uid, d.task, d.attempt),
                                            d.rendered(), self.settings.output_inline_limit, "rendered")

    async def _command_for_existing(self, run: Run, d: Dispatch, name: str, published: str) -> None:
        """The pod was there already, created with its own nonce: make the stored command carry it."""
        pod = await asyncio.to_thread(self.kube.get, f"/api/v1/namespaces/{run.namespace}/pods/{name}")
        nonce = pod_nonce(pod)
        if nonce is not None and nonce != published:
            await self.bus.publish_command(command_subject(run.namespace, run.name, d.task, d.attempt),
                                           self._command(run, d, nonce))

    async def _publish(self, run: Run, d: Dispatch, name: str, nonce: str) -> bool:
        """Store the command and TaskDispatched (both before the pod exists: it fetches the command).
        False when the command can never fit: the attempt failed instead."""
        await self.ensure_nats_secret(run.namespace)
        rendered = await self._rendered(run, d)
        publish_command = self.bus.publish_command(command_subject(run.namespace, run.name, d.task, d.attempt),
                                                   self._command(run, d, nonce))
        try:
            await asyncio.gather(
                run.publish(self.bus, make_event(EventType.TASK_DISPATCHED, SOURCE, run.namespace, run.name, run.uid,
                                                 d.task, d.attempt, podName=name, **d.runs, **rendered)),
                publish_command)
        except PayloadTooLarge as e:
            await self._fail(run, d, "InputTooLarge", f"task {d.task}: its rendered input is too large to send: {e}")
            return False
        return True

    async def _fail(self, run: Run, d: Dispatch, reason: str, message: str) -> None:
        await run.publish(self.bus, make_event(EventType.TASK_FAILED, SOURCE, run.namespace, run.name, run.uid,
                                               d.task, d.attempt, error={"reason": reason, "message": message}))
        await self.bus.emit_log(run.namespace, run.name, run.uid, "orchestrator", "error", message, task=d.task,
                                attempt=d.attempt)

    async def ensure_nats_secret(self, namespace: str) -> None:
        if namespace in self.secrets_ready:
            return
        async with self.secret_locks[namespace]:
            if namespace not in self.secrets_ready:
                await self._create_nats_secret(namespace)
                self.secrets_ready.add(namespace)

    async def _create_nats_secret(self, namespace: str) -> None:
        callout = self.settings.nats_auth == "callout"
        # callout mode: no token (each pod logs in with its own ServiceAccount token), and the URL
        # without the operator's own user and password
        values = ({"url": without_credentials(self.settings.nats_url)} if callout else
                  {"url": self.settings.nats_url, "token": self.settings.nats_token or ""})
        if ca := self.settings.nats_ca():
            values[NATS_CA_KEY] = ca
        data = {k: base64.b64encode(v.encode()).decode() for k, v in values.items()}
        path = f"/api/v1/namespaces/{namespace}/secrets"
        body = {"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": self.settings.nats_secret, "namespace": namespace,
                             "labels": {"app.kubernetes.io/managed-by": "compozy-operator"}},
                "data": data}
        try:
            await asyncio.to_thread(self.kube.create, path, body)
        except ApiException as e:
            # kept as it is (the operator may create Secrets, not read or change them): one left from
            # token mode still holds the old shared token, which a callout-mode server does not accept,
            # and callout-mode pods do not read
            if e.status != 409:
                raise

    def _workers_full(self, run: Run, task: str, status: WorkflowExecutionStatus) -> bool:
        """maxWorkers counts pods, not statuses: a child that has reported keeps its pod alive a
        moment longer (its runner is exiting), and a new child must wait for that pod to end.
        Pooled children count from their dispatch until the status shows them ended."""
        assert run.spec is not None
        if run.limits is None:
            run.limits = worker_limits(run.spec)
        parent = run.limits.get(task.split("[", 1)[0])
        if parent is None:
            return False
        parent_id, limit = parent
        pooled = self.pooled.get(run.uid, {})
        for key, attempt in list(pooled):
            st = status.tasks.get(key)
            if st is not None and (st.attempt > attempt or st.phase in TASK_TERMINAL):
                del pooled[(key, attempt)]
        keys = [*self.alive.get(run.uid, {}).values(), *pooled.values()]
        busy = sum(1 for key in keys if run.limits.get(key.split("[", 1)[0], ("",))[0] == parent_id)
        return busy >= limit

    def forget(self, uid: str) -> None:
        """The run has ended: its pooled attempts need no counting."""
        self.pooled.pop(uid, None)
        self.requeued = {key for key in self.requeued if key[0] != uid}

    def track(self, uid: str, name: str, task: str, ended: bool) -> bool:
        """Record a pod the watch saw; True when an ended pod freed a worker slot."""
        alive = self.alive.setdefault(uid, {})
        if not ended:
            alive[name] = task
            return False
        freed = alive.pop(name, None) is not None
        if not alive:
            self.alive.pop(uid, None)
        return freed


def worker_limits(spec: WorkflowSpec) -> dict[str, tuple[str, int]]:
    """Child key prefix -> (parent id, maxWorkers) for the parents that bound their children."""
    limits: dict[str, tuple[str, int]] = {}
    for t in spec.tasks:
        if t.type == "parallel" and t.max_workers:
            limits.update({c.id: (t.id, t.max_workers) for c in t.tasks or []})
        elif t.type == "collection" and (t.max_workers or t.mode == "sequential"):
            limits[t.id] = (t.id, 1 if t.mode == "sequential" else t.max_workers or 1)
    return limits


def _api_message(e: ApiException) -> str:
    try:
        return json.loads(e.body or "{}").get("message") or f"{e.status} {e.reason}"
    except ValueError:
        return f"{e.status} {e.reason}"
