"""A thin JSON-in, JSON-out client over the official kubernetes ApiClient.

The operator, the local cluster and the process node work on plain dicts (what the API
sends), which keeps their logic testable without the generated model classes. Authentication,
TLS and kubeconfig handling stay with the official client.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from prometheus_client import Counter

from . import failpoints

JSON = dict[str, Any]
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"

__all__ = ["ApiException", "Kube", "write_kubeconfig"]
# Every write of this process (here, not in monitoring, which needs this module): what a task costs
# the API server, by kind (docs/performance.md)
API_WRITES = Counter("compozy_api_writes_total", "Kubernetes API writes sent, by verb and resource "
                     "(e.g. patch.workflowexecutions.status)", ["write"])


def write_kubeconfig(
    path: Path,
    server: str,
    ca_cert: Path,
    *,
    user: Mapping[str, str],
    namespace: str | None = None,
    name: str = "compozy-local",
) -> Path:
    """Write a one-context kubeconfig; ``user`` holds client-certificate/-key or token entries."""
    context: JSON = {"cluster": name, "user": name}
    if namespace:
        context["namespace"] = namespace
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority": str(ca_cert)}}],
        "users": [{"name": name, "user": dict(user)}],
        "contexts": [{"name": name, "context": context}],
        "current-context": name,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    path.chmod(0o600)
    return path


def set_context_extension(path: Path, name: str, extension: JSON) -> None:
    """Add (or replace) the extension ``name`` of the kubeconfig's current context, as kubectl keeps
    them (``contexts[].context.extensions[{name, extension}]``); kubectl itself ignores it."""
    doc = yaml.safe_load(path.read_text())
    context = next(c["context"] for c in doc["contexts"] if c["name"] == doc["current-context"])
    others = [e for e in context.get("extensions") or [] if e.get("name") != name]
    context["extensions"] = [*others, {"name": name, "extension": extension}]
    path.write_text(yaml.safe_dump(doc, sort_keys=False))


class Kube:
    """Raw REST calls with dict bodies."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client

    @classmethod
    def from_kubeconfig(cls, path: Path | str) -> Kube:
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(path), client_configuration=cfg)
        cfg.retries = 3
        return cls(client.ApiClient(cfg))

    @classmethod
    def from_environment(cls, pool_size: int = 32) -> Kube:
        """In-cluster service-account credentials if present, else ``$KUBECONFIG`` / ~/.kube/config."""
        cfg = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)
        cfg.retries = 3
        cfg.connection_pool_maxsize = pool_size
        return cls(client.ApiClient(cfg))

    def close(self) -> None:
        self.api_client.close()

    def raw(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: Mapping[str, Any] | None = None,
        content_type: str | None = None,
        timeout: float | tuple[float, float] | None = 30,
        accept: str = "application/json",
    ) -> Any:
        headers = {"Accept": accept}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        return self.api_client.call_api(
            path,
            method,
            query_params=[(k, v) for k, v in (query or {}).items() if v is not None],
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
            _preload_content=False,
            _request_timeout=timeout,
        )[0]

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> JSON:
        resp = self.raw(method, path, body, **kw)
        data = resp.data
        return json.loads(data) if data else {}

    def get(self, path: str, **query: Any) -> JSON:
        return self.request("GET", path, query=query)

    def list(self, path: str, metadata_only: bool = False, **query: Any) -> Iterator[JSON]:
        """Every object of a collection, a page of 500 at a time. ``metadata_only``: as
        PartialObjectMetadata (a listing of every execution must not carry statuses of up to 256 KiB)."""
        token: str | None = None
        while True:
            page = self.request("GET", path, query={"limit": 500, **query, "continue": token},
                                accept=METADATA_LIST if metadata_only else "application/json")
            yield from page.get("items") or []
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    def _write(self, verb: str, method: str, path: str, body: Any, **kw: Any) -> JSON:
        name = failpoints.kube_write(verb, path)
        API_WRITES.labels(name.removeprefix("kube.")).inc()
        failpoints.point(f"{name}:before")
        result = self.request(method, path, body, **kw)
        failpoints.point(f"{name}:after")
        return result

    def create(self, path: str, body: JSON) -> JSON:
        return self._write("create", "POST", path, body)

    def merge_patch(self, path: str, body: JSON) -> JSON:
        return self._write("patch", "PATCH", path, body, content_type=MERGE_PATCH)

    def delete(self, path: str, body: JSON | None = None) -> JSON:
        return self._write("delete", "DELETE", path, body)

    def watch(self, path: str, resource_version: str, timeout_seconds: int = 300, **query: Any) -> Iterator[JSON]:
        """Yield watch events ({"type", "object"}) until the server closes the stream."""
        resp = self.raw(
            "GET",
            path,
            query={
                "watch": "true",
                "resourceVersion": resource_version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": timeout_seconds,
                **query,
            },
            timeout=(10, timeout_seconds + 30),
        )
        buffer = b""
        try:
            for chunk in resp.stream(64 * 1024):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            resp.release_conn()


def merge_patch_diff(old: Any, new: Any) -> Any:
    """The RFC 7386 merge patch that turns ``old`` into ``new`` (removed keys become null)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: JSON = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif old[key] != value:
            patch[key] = merge_patch_diff(old[key], value)
    return patch
