"""API server paths of the compozy.dev resources."""

from __future__ import annotations

from collections.abc import Iterable

from .models import GROUP, VERSION


def resource_path(resource: str, namespace: str | None = None, name: str | None = None) -> str:
    """An object's path, its namespace's collection, or (``namespace`` None) every namespace's."""
    where = f"/namespaces/{namespace}" if namespace is not None else ""
    base = f"/apis/{GROUP}/{VERSION}{where}/{resource}"
    return f"{base}/{name}" if name else base


def executions_path(namespace: str | None, name: str | None = None) -> str:
    return resource_path("workflowexecutions", namespace, name)


def workflows_path(namespace: str | None, name: str | None = None) -> str:
    return resource_path("workflows", namespace, name)


def collection_paths(namespaces: Iterable[str], resource: str) -> list[str]:
    """The collections an operator watching ``namespaces`` (none: every namespace) lists."""
    return [resource_path(resource, ns) for ns in namespaces] or [resource_path(resource)]
