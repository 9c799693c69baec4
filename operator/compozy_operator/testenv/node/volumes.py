"""Pod volumes as host directories.

A process cannot see a container path such as ``/var/run/secrets/...``, so every volume is a
directory under the pod's root, and a container learns where its mounts are from the
``COMPOZY_PROCESS_NODE_MOUNTS`` environment variable (a JSON map: mountPath -> host path).
A service-account token mount also yields a kubeconfig (``KUBECONFIG``) that authenticates as
the pod's service account with a token from the TokenRequest API, which is what in-cluster
config would give the container.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ...kube import Kube
from .podspec import ConfigError, Lookup, field_ref

JSON = dict[str, Any]
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def _write(directory: Path, files: Mapping[str, str | bytes]) -> None:
    for rel, content in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def _items(data: Mapping[str, str], items: list[JSON] | None) -> dict[str, str]:
    if not items:
        return dict(data)
    return {i.get("path", i["key"]): data[i["key"]] for i in items if i["key"] in data}


def service_account_token(kube: Kube, pod: JSON, audience: str | None, expiration: int) -> str:
    meta = pod["metadata"]
    sa = pod["spec"].get("serviceAccountName") or "default"
    spec: JSON = {
        "expirationSeconds": expiration,
        "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"], "uid": meta["uid"]},
    }
    if audience:
        spec["audiences"] = [audience]
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    resp = kube.create(f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{sa}/token", body)
    return resp["status"]["token"]


def _source_files(kube: Kube, pod: JSON, source: JSON, lookup: Lookup) -> dict[str, str]:
    ns = pod["metadata"]["namespace"]
    if "serviceAccountToken" in source:
        s = source["serviceAccountToken"]
        token = service_account_token(kube, pod, s.get("audience"), int(s.get("expirationSeconds", 3607)))
        return {s.get("path", "token"): token}
    for kind, key in (("secret", "secret"), ("configmap", "configMap")):
        if key in source:
            ref = source[key]
            name = ref.get("name") or ref.get("secretName")
            data = lookup(kind, ns, name)
            if data is None:
                if ref.get("optional"):
                    return {}
                raise ConfigError(f'{kind} "{name}" not found (volume source)')
            return _items(data, ref.get("items"))
    if "downwardAPI" in source:
        return {i["path"]: field_ref(pod, i["fieldRef"]["fieldPath"])
                for i in source["downwardAPI"].get("items", []) if "fieldRef" in i}
    raise ConfigError(f"unsupported projected volume source {sorted(source)}")


def materialize(kube: Kube, pod: JSON, root: Path, lookup: Lookup) -> dict[str, Path]:
    """Create every volume of the pod under ``root/volumes``; return volume name -> host dir."""
    dirs: dict[str, Path] = {}
    for vol in pod["spec"].get("volumes") or []:
        d = root / "volumes" / vol["name"]
        d.mkdir(parents=True, exist_ok=True)
        if "emptyDir" in vol:
            pass
        elif "projected" in vol:
            for source in vol["projected"].get("sources") or []:
                _write(d, _source_files(kube, pod, source, lookup))
        elif "secret" in vol or "configMap" in vol or "downwardAPI" in vol:
            _write(d, _source_files(kube, pod, vol, lookup))
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise ConfigError(f"volume {vol['name']}: {kinds} volumes are not supported on the process node")
        dirs[vol["name"]] = d
    return dirs


def mounts(container: JSON, volume_dirs: Mapping[str, Path]) -> dict[str, Path]:
    """mountPath -> host path for one container."""
    out: dict[str, Path] = {}
    for m in container.get("volumeMounts") or []:
        if m["name"] not in volume_dirs:
            raise ConfigError(f"volumeMount {m['mountPath']}: no volume named {m['name']}")
        out[m["mountPath"]] = volume_dirs[m["name"]] / m.get("subPath", "")
    return out


def decode_secret(obj: JSON) -> dict[str, str]:
    return {k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (obj.get("data") or {}).items()}
