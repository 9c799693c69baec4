"""RunnerPools: their runners' Deployment, their queue's consumer, their size from the queue's depth,
and the attempts of a runner pod that is gone.

Each RunnerPool gets a Deployment of runners (pools.runner_deployment, owned by the pool) and a
durable consumer on the pool stream. Every :data:`SCALE_SECONDS` the pool's replicas follow
:func:`.pools.desired_replicas` of the consumer's pending and unacknowledged messages (one API write
when the number changes, none otherwise). A runner pod deleted or failed fails the attempts it had
started with ``RunnerLost`` at once (retried by the tasks' policies); one whose process died and
was restarted leaves its queue messages to come back (pool_runner), which fails them the same way.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from ..resources.models import GROUP, VERSION, RunnerPoolSpec
from ..bus import Bus
from ..events import POOL_STREAM, EventType, make_event, pool_consumer, pool_subject
from ..kube import ApiException, Kube
from ..pools import LABEL_POOL, deployment_name, desired_replicas, runner_deployment
from ..settings import Settings
from .dispatcher import Dispatcher
from .effects import Effects
from .run import SOURCE, Run

log = logging.getLogger(__name__)
SCALE_SECONDS = 2.0
ACK_WAIT_SECONDS = 10.0  # a runner reports progress every 3 s; a lost one's messages come back after this


class PoolControl:
    def __init__(self, settings: Settings, kube: Kube, bus: Bus, dispatcher: Dispatcher, runs: dict[str, Run],
                 effects: Effects) -> None:
        self.settings, self.kube, self.bus, self.dispatcher = settings, kube, bus, dispatcher
        self.runs, self.effects = runs, effects
        self.pools: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, name) -> the RunnerPool
        self.replicas: dict[tuple[str, str], int] = {}  # what the Deployment was last set to
        self.shown: dict[tuple[str, str], dict[str, int]] = {}  # status last written
        self.synced: dict[tuple[str, str], tuple[str, int | None]] = {}  # (uid, generation) last synced

    async def on_pool(self, event_type: str, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        key = (meta["namespace"], meta["name"])
        if event_type == "DELETED" or meta.get("deletionTimestamp"):
            self.dispatcher.known_pools.discard(key)
            self.pools.pop(key, None)  # its Deployment goes with it (owner reference)
            self.replicas.pop(key, None)
            self.shown.pop(key, None)
            self.synced.pop(key, None)
            return
        try:
            spec = RunnerPoolSpec.model_validate(obj.get("spec") or {})
        except ValidationError as e:
            log.warning("RunnerPool %s/%s is invalid: %s", *key, e)
            return
        self.pools[key] = obj
        self.dispatcher.known_pools.add(key)
        if self.synced.get(key) == (meta["uid"], meta.get("generation")):
            return  # e.g. its status written by _scale: the spec is as synced
        await self.effects.run(("pool", *key), lambda: self._sync(obj, spec), f"syncing RunnerPool {key[0]}/{key[1]}")

    async def _sync(self, obj: dict[str, Any], spec: RunnerPoolSpec) -> None:
        """The pool's consumer and Deployment as the spec says (the replicas kept as scaled)."""
        ns, name = obj["metadata"]["namespace"], obj["metadata"]["name"]
        await self.dispatcher.ensure_nats_secret(ns)
        await self.bus.create_consumer(POOL_STREAM, ConsumerConfig(
            durable_name=pool_consumer(ns, name), filter_subject=pool_subject(ns, name), ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_SECONDS, max_ack_pending=spec.max_replicas * spec.concurrency * 2))
        replicas = max(spec.min_replicas, min(spec.max_replicas, self.replicas.get((ns, name), spec.min_replicas)))
        manifest = runner_deployment(self.settings, obj, replicas)
        path = f"/apis/apps/v1/namespaces/{ns}/deployments"
        try:
            await asyncio.to_thread(self.kube.create, path, manifest)
        except ApiException as e:
            if e.status != 409:
                raise
            await asyncio.to_thread(self.kube.merge_patch, f"{path}/{deployment_name(name)}",
                                    {"metadata": {"labels": manifest["metadata"]["labels"]}, "spec": manifest["spec"]})
        self.replicas[(ns, name)] = replicas
        self.synced[(ns, name)] = (obj["metadata"]["uid"], obj["metadata"].get("generation"))

    def resync(self, key: tuple[str, str]) -> None:
        """Sync the pool's consumer and Deployment again (its consumer is gone)."""
        self.synced.pop(key, None)
        if (obj := self.pools.get(key)) is not None:
            asyncio.ensure_future(self.on_pool("MODIFIED", obj))

    async def run(self) -> None:
        """Scale every pool from its queue, forever (the leader's loop)."""
        while True:
            for key, obj in list(self.pools.items()):
                try:
                    await self._scale(key, obj)
                except Exception as e:  # noqa: BLE001 - the next round tries again
                    log.warning("scaling RunnerPool %s/%s: %s", *key, e)
            await asyncio.sleep(SCALE_SECONDS)

    async def _scale(self, key: tuple[str, str], obj: dict[str, Any]) -> None:
        ns, name = key
        spec = RunnerPoolSpec.model_validate(obj.get("spec") or {})
        assert self.bus.js is not None
        try:
            info = await self.bus.js.consumer_info(POOL_STREAM, pool_consumer(ns, name))
        except NotFoundError:  # deleted (or its stream was): create it again; its messages stay in the stream
            self.resync(key)
            return
        pending, in_flight = info.num_pending or 0, info.num_ack_pending or 0
        current = self.replicas.get(key, spec.min_replicas)
        wanted = desired_replicas(spec, pending, in_flight, current)
        if wanted != current:
            await asyncio.to_thread(self.kube.merge_patch,
                                    f"/apis/apps/v1/namespaces/{ns}/deployments/{deployment_name(name)}",
                                    {"spec": {"replicas": wanted}})
            log.info("RunnerPool %s/%s: %d -> %d runners (%d pending, %d in flight)", ns, name, current, wanted,
                     pending, in_flight)
            self.replicas[key] = wanted
        shown = {"replicas": wanted, "pending": pending, "inFlight": in_flight}
        if self.shown.get(key) != shown:  # at most one write a round
            await asyncio.to_thread(self.kube.merge_patch,
                                    f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/runnerpools/{name}/status",
                                    {"status": shown})
            self.shown[key] = shown

    # ---- lost runners ---------------------------------------------------------------------

    async def on_runner_pod(self, event_type: str, pod: dict[str, Any]) -> None:
        """A runner pod that is gone (deleted, failed) loses the attempts it had started."""
        meta = pod["metadata"]
        phase = (pod.get("status") or {}).get("phase", "Pending")
        if event_type != "DELETED" and phase not in ("Failed", "Succeeded"):
            return
        pool = (meta.get("labels") or {}).get(LABEL_POOL, "?")
        for run in list(self.runs.values()):
            if run.namespace != meta["namespace"] or run.status is None:
                continue
            for task, st in run.status.tasks.items():
                if st.phase in ("Pending", "Running") and st.pod_name == meta["name"]:
                    message = (f"runner {meta['name']} of pool {pool} was lost ({event_type.lower()}, phase {phase}) "
                               f"while it ran task {task} attempt {st.attempt}")
                    event = make_event(EventType.TASK_FAILED, SOURCE, run.namespace, run.name, run.uid, task,
                                       st.attempt, error={"reason": "RunnerLost", "message": message})
                    await self.effects.run(("runner-lost", run.uid, task, st.attempt),
                                           lambda e=event: self._lost(e), f"failing {task} of a lost runner")

    async def _lost(self, event: Any) -> None:
        await self.bus.publish_event(event)
        await self.bus.emit_log(event.namespace, event.execution, event.data["uid"], "orchestrator", "warning",
                                event.data["error"]["message"], task=event.task, attempt=event.attempt)
