"""Leader election on a Kubernetes Lease (coordination.k8s.io/v1), as client-go's leaderelection does it.

Several operator replicas run; the one holding the Lease orchestrates (Kopf's execution, pod and
Workflow handlers, the state manager, the JetStream check), the others are hot standbys: watches
open, api.Service, the admission webhook and the NATS auth callout served by all. The holder renews
every ``retry`` seconds. A standby takes the Lease when its holder has not renewed it for
``duration`` seconds *as the standby observed it* (its own monotonic clock since it last saw the
Lease change, so clocks of different nodes need not agree), or at once when the holder released it
on a graceful stop (a rolling upgrade has no gap). Every write carries the resourceVersion read, so
two standbys cannot both take it. A leader that cannot renew within ``renew_deadline`` stops
leading: the operator then exits (its pod restarts as a standby), because another replica may
already lead.

:func:`decide` is the pure rule; :class:`LeaderElector` does the I/O.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from .kube import ApiException, Kube

log = logging.getLogger(__name__)


class Action(Enum):
    CREATE = "create"  # no Lease yet
    RENEW = "renew"  # ours
    TAKE = "take"  # released, or its holder stopped renewing
    WAIT = "wait"  # another replica holds it


@dataclass(frozen=True)
class Observed:
    """The Lease as last read, and since when (monotonic seconds) it has looked like this."""

    holder: str
    renew_time: str
    acquire_time: str
    duration: float
    transitions: int
    resource_version: str
    since: float

    def same_record(self, other: Observed | None) -> bool:
        return other is not None and (self.holder, self.renew_time) == (other.holder, other.renew_time)


def decide(lease: Observed | None, me: str, now: float) -> Action:
    """What a replica named ``me`` does with the Lease it observed, at monotonic time ``now``."""
    if lease is None:
        return Action.CREATE
    if lease.holder == me:
        return Action.RENEW
    if not lease.holder or now - lease.since >= lease.duration:
        return Action.TAKE
    return Action.WAIT


def observed(lease: dict[str, Any], default_duration: float, now: float) -> Observed:
    spec = lease.get("spec") or {}
    return Observed(str(spec.get("holderIdentity") or ""), str(spec.get("renewTime") or ""),
                    str(spec.get("acquireTime") or ""), float(spec.get("leaseDurationSeconds") or default_duration),
                    int(spec.get("leaseTransitions") or 0), lease["metadata"]["resourceVersion"], now)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, kube: Kube, namespace: str, name: str, identity: str, *, duration: float = 15,
                 renew_deadline: float = 10, retry: float = 2) -> None:
        if not retry < renew_deadline < duration:
            raise ValueError("leader election: retry < renew deadline < lease duration is needed "
                             f"(got {retry}, {renew_deadline}, {duration})")
        self.kube, self.namespace, self.name, self.identity = kube, namespace, name, identity
        self.duration, self.renew_deadline, self.retry = duration, renew_deadline, retry
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
        self.observed: Observed | None = None
        self.leading = False

    async def run(self, on_leading: Callable[[], Awaitable[None]], on_lost: Callable[[], None]) -> None:
        """Try for the Lease until it is ours, call ``on_leading``, then renew it; when renewing
        failed for ``renew_deadline`` seconds, call ``on_lost`` and return."""
        while not await self._try():
            await asyncio.sleep(self.retry)
        self.leading = True
        log.info("leader election: %s leads (Lease %s/%s)", self.identity, self.namespace, self.name)
        await on_leading()
        renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.retry)
            if await self._try():
                renewed = time.monotonic()
            elif time.monotonic() - renewed >= self.renew_deadline:
                self.leading = False
                log.error("leader election: %s could not renew Lease %s/%s for %.0fs; it stops leading",
                          self.identity, self.namespace, self.name, self.renew_deadline)
                on_lost()
                return

    async def release(self) -> None:
        """On a graceful stop: hand the Lease back so a standby takes it at its next try."""
        if not self.leading or self.observed is None:
            return
        self.leading = False
        try:
            await asyncio.to_thread(self._write, self._lease(holder="", duration=1,
                                                             transitions=self.observed.transitions))
            log.info("leader election: %s released Lease %s/%s", self.identity, self.namespace, self.name)
        except Exception as e:  # noqa: BLE001 - it then expires as after a crash
            log.warning("leader election: could not release the Lease: %s", e)

    async def _try(self) -> bool:
        """One round: read the Lease and act on it; True when we hold it afterwards."""
        try:
            return await asyncio.to_thread(self._round)
        except ApiException as e:
            if e.status != 409:  # 409: another replica wrote first; it is theirs
                log.warning("leader election: Lease %s/%s: %s %s", self.namespace, self.name, e.status, e.reason)
            return False
        except Exception as e:  # noqa: BLE001 - API server unreachable: try again, renew deadline applies
            log.warning("leader election: Lease %s/%s: %s", self.namespace, self.name, e)
            return False

    def _round(self) -> bool:
        self.observed = self._observe()
        action = decide(self.observed, self.identity, time.monotonic())
        if action is Action.WAIT:
            return False
        transitions = 0 if self.observed is None else self.observed.transitions + (action is Action.TAKE)
        lease = self._lease(holder=self.identity, duration=self.duration, transitions=transitions,
                            acquired=action is not Action.RENEW)
        self._write(lease, create=action is Action.CREATE)
        return True

    def _observe(self) -> Observed | None:
        try:
            obj = self.kube.get(f"{self.path}/{self.name}")
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        seen = observed(obj, self.duration, time.monotonic())
        if seen.same_record(self.observed):  # unchanged: its age counts from when we first saw it
            assert self.observed is not None
            seen = dataclasses.replace(seen, since=self.observed.since)
        return seen

    def _lease(self, *, holder: str, duration: float, transitions: int, acquired: bool = False) -> dict[str, Any]:
        now = _now()
        spec: dict[str, Any] = {"holderIdentity": holder or None, "leaseDurationSeconds": max(1, round(duration)),
                                "renewTime": now, "leaseTransitions": transitions}
        if acquired or not (self.observed and self.observed.acquire_time):
            spec["acquireTime"] = now
        else:
            spec["acquireTime"] = self.observed.acquire_time
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.observed is not None:
            metadata["resourceVersion"] = self.observed.resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def _write(self, lease: dict[str, Any], create: bool = False) -> None:
        """A create, or a PUT guarded by the resourceVersion read (a 409 when another replica wrote
        since); what was written becomes what we observed, so the next write is guarded by it."""
        written = self.kube.create(self.path, lease) if create else \
            self.kube.request("PUT", f"{self.path}/{self.name}", lease)
        self.observed = observed(written, self.duration, time.monotonic())
