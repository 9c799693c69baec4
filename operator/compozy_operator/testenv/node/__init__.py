"""The process node: a kubelet stand-in that runs the project's own image as local processes."""

from .kubelet import DEFAULT_ENTRYPOINT, DEFAULT_IMAGES, NodeConfig, ProcessNode

__all__ = ["DEFAULT_ENTRYPOINT", "DEFAULT_IMAGES", "NodeConfig", "ProcessNode"]
