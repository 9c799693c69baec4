"""The orphan sweep: stored outputs whose run is gone.

A run's outputs are removed when the operator sees it deleted (cleanup.deleted). One deleted while
no operator ran (``kubectl delete`` during an outage), or deleted by the operator just before it was
killed, leaves its outputs in the object store, which has no age limit (its log lines and state
events age out of their streams). So the leader sweeps: at its start and every
``COMPOZY_ORPHAN_SWEEP_SECONDS``, it lists the stored outputs, then the executions that exist
(metadata only), and removes the outputs of runs that exist no longer (retention.orphaned_outputs).
Listing the outputs first makes it safe: a run that stored an output before the first listing and
still exists is in the second.
"""

from __future__ import annotations

import asyncio
import logging

from ..bus import Bus
from ..kube import Kube
from ..monitoring import OUTPUTS_SWEPT
from ..resources.paths import collection_paths
from ..retention import orphaned_outputs

log = logging.getLogger(__name__)


class OrphanSweep:
    def __init__(self, kube: Kube, bus: Bus, namespaces: tuple[str, ...], interval: float) -> None:
        self.kube, self.bus, self.namespaces, self.interval = kube, bus, namespaces, interval

    async def run(self) -> None:
        """Sweep now and every ``interval`` seconds (the leader's loop)."""
        while True:
            await self.sweep()
            await asyncio.sleep(self.interval)

    async def sweep(self) -> int:
        """Remove the stored outputs of runs that are gone; returns how many."""
        names = await self.bus.output_names()
        if not names:
            return 0
        live = await asyncio.to_thread(self._live)
        orphans = orphaned_outputs(names, live, list(self.namespaces))
        removed = await self.bus.delete_output_keys(orphans, "sweep.outputs")
        if removed:
            OUTPUTS_SWEPT.inc(removed)
            log.info("removed %d stored outputs of runs that no longer exist", removed)
        return removed

    def _live(self) -> set[tuple[str, str]]:
        return {(obj["metadata"]["namespace"], obj["metadata"]["uid"])
                for path in collection_paths(self.namespaces, "workflowexecutions")
                for obj in self.kube.list(path, metadata_only=True)}
