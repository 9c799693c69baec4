"""A real local Kubernetes cluster and NATS without Docker, for tests and the demo.

See ``docs/local-cluster.md``. Everything here runs the real upstream programs, built from
pinned Go modules by ``hack/testenv/build.sh``; only the kubelet is replaced (by the process
node, which runs pods of the project's own image as local processes).
"""

from .cluster import LocalCluster
from .environment import DevEnvironment
from ..kube import Kube
from .natsserver import NatsServer
from .process import ComponentError

__all__ = ["ComponentError", "DevEnvironment", "Kube", "LocalCluster", "NatsServer"]
