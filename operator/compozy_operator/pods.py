"""Task pod manifests (pure): deterministic names, owner reference, labels, restricted security."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from .resources.models import API_VERSION
from .events import COMMAND_NONCE_ENV
from .retention import ANNOTATION_POD_CLEANUP
from .settings import Settings

LABEL_MANAGED = "app.kubernetes.io/managed-by"
MANAGER = "compozy-operator"
LABEL_EXECUTION = "compozy.dev/execution"
LABEL_TASK = "compozy.dev/task"
LABEL_ATTEMPT = "compozy.dev/attempt"
TASK_POD_SELECTOR = f"{LABEL_MANAGED}={MANAGER},app.kubernetes.io/component=task"
RUNNER_UID = 65532
_MAX_NAME = 253


NATS_CA_KEY = "ca.crt"  # key of the NATS Secret holding a private CA (TLS), when there is one
ANNOTATION_TASK = "compozy.dev/task-key"  # the exact status key, e.g. each-url[3]
# COMPOZY_NATS_AUTH=callout: the attempt's NATS login is its pod's projected ServiceAccount token,
# bound to the pod, for this audience only (the callout service reviews it: nats_auth/)
NATS_TOKEN_AUDIENCE = "compozy-nats"
NATS_TOKEN_SECONDS = 3600  # the kubelet rotates it before it expires; each reconnect reads the file again
NATS_TOKEN_DIR = "/var/run/secrets/compozy.dev/nats"
NATS_TOKEN_FILE = f"{NATS_TOKEN_DIR}/token"
NATS_TOKEN_FILE_ENV = "COMPOZY_NATS_TOKEN_FILE"


def dns_part(task: str) -> str:
    """A status key as a name part. Task ids are used as they are; a collection child's key
    ``each-url[3]`` becomes ``each-url-3-<hash>``, so it can never equal a real task id ``each-url-3``."""
    if re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", task):
        return task
    readable = re.sub(r"[^a-z0-9-]+", "-", task.lower()).strip("-")
    return f"{readable}-{hashlib.sha256(task.encode()).hexdigest()[:5]}"


def pod_nonce(pod: dict[str, Any]) -> str | None:
    """The command nonce a task pod was created with (None: an older operator's pod)."""
    for container in pod.get("spec", {}).get("containers", [])[:1]:
        for var in container.get("env") or []:
            if var.get("name") == COMMAND_NONCE_ENV:
                return var.get("value")
    return None


def pod_name(execution: str, task: str, attempt: int) -> str:
    """``<execution>-<task>-<attempt>``; names too long for the API keep a hash of the whole."""
    name = f"{execution}-{dns_part(task)}-{attempt}"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    tail = f"-{digest}-{attempt}"
    return name[: _MAX_NAME - len(tail)].rstrip("-.") + tail


def label_value(text: str) -> str:
    """Label values are at most 63 characters."""
    if len(text) <= 63:
        return text
    return text[:52].rstrip("-.") + "-" + hashlib.sha256(text.encode()).hexdigest()[:10]


CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
}
POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True, "runAsUser": RUNNER_UID, "runAsGroup": RUNNER_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def runner_variables(settings: Settings) -> list[dict[str, Any]]:
    """What every runner (a task pod, a pool's runner) needs: its pod's name and uid, and how to
    reach NATS. Token mode: the shared token from the namespace's NATS Secret; callout mode: none
    (the pod's own ServiceAccount token, in a projected volume, is its NATS login)."""
    secret = settings.nats_secret
    login = ({"name": NATS_TOKEN_FILE_ENV, "value": NATS_TOKEN_FILE} if settings.nats_auth == "callout" else
             {"name": "COMPOZY_NATS_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}}})
    return [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        # the runner's claim on its attempt names the pod's uid (a re-created pod has another)
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "COMPOZY_NATS_URL", "valueFrom": {"secretKeyRef": {"name": secret, "key": "url"}}},
        login,
        {"name": "COMPOZY_NATS_CA", "valueFrom": {"secretKeyRef": {"name": secret, "key": NATS_CA_KEY,
                                                                   "optional": True}}},
    ]


def runner_volumes(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A runner's mounts and volumes: a writable /tmp, and in callout mode its NATS login token."""
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
    if settings.nats_auth == "callout":
        mounts.append({"name": "nats-token", "mountPath": NATS_TOKEN_DIR, "readOnly": True})
        volumes.append({"name": "nats-token", "projected": {"sources": [{"serviceAccountToken": {
            "audience": NATS_TOKEN_AUDIENCE, "expirationSeconds": NATS_TOKEN_SECONDS, "path": "token"}}]}})
    return mounts, volumes


def task_pod(settings: Settings, execution: dict[str, Any], task: str, attempt: int, *, image: str | None = None,
             env: list[dict[str, Any]] | None = None, resources: dict[str, Any] | None = None,
             nonce: str | None = None, cleanup: str | None = None) -> dict[str, Any]:
    """The pod of one attempt; ``image``, ``env`` (EnvVars, after the runner's own) and ``resources``
    come from the tool (or the agent) it runs; ``nonce``: the one its TaskExecute command carries
    (the runner runs no command without it: see task_executor); ``cleanup``: its run's pod cleanup
    rule (retention.PodRule.annotation), read back by the pod watch once the pod has finished."""
    meta = execution["metadata"]
    name = pod_name(meta["name"], task, attempt)
    variables: list[dict[str, Any]] = [
        {"name": "COMPOZY_NAMESPACE", "value": meta["namespace"]},
        {"name": "COMPOZY_EXECUTION", "value": meta["name"]},
        {"name": "COMPOZY_EXECUTION_UID", "value": meta["uid"]},
        {"name": "COMPOZY_TASK", "value": task},
        {"name": "COMPOZY_ATTEMPT", "value": str(attempt)},
        *runner_variables(settings),
        *([{"name": COMMAND_NONCE_ENV, "value": nonce}] if nonce else []),
        *(env or []),
    ]
    mounts, volumes = runner_volumes(settings)
    container = {
        "name": "task",
        "image": image or settings.task_image,
        "args": ["task", "run"],
        "env": variables,
        "resources": resources or {"requests": {"cpu": "50m", "memory": "64Mi"}},
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
        "securityContext": CONTAINER_SECURITY,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {
                LABEL_MANAGED: MANAGER,
                "app.kubernetes.io/component": "task",
                LABEL_EXECUTION: label_value(meta["name"]),
                LABEL_TASK: label_value(dns_part(task)),
                LABEL_ATTEMPT: str(attempt),
            },
            "annotations": {ANNOTATION_TASK: task, **({ANNOTATION_POD_CLEANUP: cleanup} if cleanup else {})},
            "ownerReferences": [{
                "apiVersion": API_VERSION, "kind": "WorkflowExecution", "name": meta["name"], "uid": meta["uid"],
                "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 10,
            "securityContext": POD_SECURITY,
            "volumes": volumes,
            "containers": [container],
        },
    }
