"""system.Orchestrator: starts executions, carries out workflow.Executor's decisions, watches pods.

One module per seam: :mod:`.core` (the reconcile loop and its actions), :mod:`.starter` (starting
runs, picking them up after a restart), :mod:`.dispatcher` (task attempts to pods),
:mod:`.pod_watch` (pods and nodes that fail without reporting), :mod:`.timers` (timeouts and
back-offs), :mod:`.cleanup` (stopping pods, a deleted execution's leftovers), :mod:`.retention` (deleting ended
runs: TTL and history limits) and :mod:`.effects`
(retrying what failed until it is done).
"""

from .core import Orchestrator

__all__ = ["Orchestrator"]
