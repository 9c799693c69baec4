"""Whether a presented ServiceAccount token is a task attempt's, and which (pure).

:func:`decide` takes what the callout service fetched (the TokenReview's status, the pod the
token names or None, the token's expiry) and answers with a :class:`Grant` carrying the attempt's
permissions and expiry, or a :class:`Refusal` with a reason (a metric label) and a message (a log
line). The pod must be one the operator created for an attempt: managed by it, a task pod, owned
by (the controller reference to) a WorkflowExecution, its name and labels agreeing with its
task annotation and attempt label, the very pod (uid) the token is bound to, and not finished.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

from ..resources.models import API_VERSION
from ..pods import ANNOTATION_TASK, LABEL_ATTEMPT, LABEL_MANAGED, LABEL_TASK, MANAGER, dns_part, label_value, pod_name
from .permissions import Permissions, attempt_permissions

AUDIENCE = "compozy-nats"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"
SA_PREFIX = "system:serviceaccount:"
DEFAULT_MAX_TTL = 3600  # a user JWT lives at most this long (the client reconnects with a fresh token after)
ENDED_PHASES = ("Succeeded", "Failed")

# Reasons of a refusal (the ``result`` label of compozy_nats_auth_total, with "granted").
INVALID_REQUEST = "invalid_request"  # not a well-formed authorization request
NO_TOKEN = "no_token"  # the client presented no token or password
UNAUTHENTICATED = "unauthenticated"  # TokenReview did not accept it (bad, expired, other audience, pod gone)
NOT_A_POD = "not_a_pod"  # a valid token, but not bound to a pod
POD_GONE = "pod_gone"  # the pod is deleted (or re-created: another uid)
NOT_A_TASK_POD = "not_a_task_pod"  # a pod, but not one the operator created for an attempt
ENDED = "ended"  # the attempt's pod has finished
ERROR = "error"  # the callout could not check (API server unreachable, ...): refused, never granted
REASONS = (INVALID_REQUEST, NO_TOKEN, UNAUTHENTICATED, NOT_A_POD, POD_GONE, NOT_A_TASK_POD, ENDED, ERROR)


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class Grant:
    pod: PodRef
    namespace: str
    execution: str
    uid: str  # the execution's
    task: str
    attempt: int
    permissions: Permissions
    expires: int  # unix seconds

    @property
    def user_name(self) -> str:
        return f"task:{self.namespace}/{self.pod.name}"


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str


def reviewed_pod(review_status: dict[str, Any], audience: str = AUDIENCE) -> PodRef | Refusal:
    """The pod a TokenReview's status says the token is bound to, or why there is none."""
    if not review_status.get("authenticated"):
        return Refusal(UNAUTHENTICATED, f"token not accepted: {review_status.get('error') or 'not authenticated'}")
    if audience not in (review_status.get("audiences") or []):
        return Refusal(UNAUTHENTICATED, f"token not meant for {audience}")
    user = review_status.get("user") or {}
    username = user.get("username") or ""
    extra = user.get("extra") or {}
    names, uids = extra.get(POD_NAME_EXTRA) or [], extra.get(POD_UID_EXTRA) or []
    parts = username[len(SA_PREFIX):].split(":") if username.startswith(SA_PREFIX) else []
    if len(parts) != 2 or len(names) != 1 or len(uids) != 1:
        return Refusal(NOT_A_POD, f"token of {username or 'nobody'} is not bound to a pod")
    return PodRef(parts[0], names[0], uids[0])


def decide(review_status: dict[str, Any], pod: dict[str, Any] | None, token_expires: int | None, now: float,
           max_ttl: int = DEFAULT_MAX_TTL, audience: str = AUDIENCE) -> Grant | Refusal:
    """The grant for the attempt whose pod presented the token, or why there is none. ``pod`` is
    the pod object as the API server has it now (None: not found)."""
    ref = reviewed_pod(review_status, audience)
    if isinstance(ref, Refusal):
        return ref
    where = f"pod {ref.namespace}/{ref.name}"
    if pod is None:
        return Refusal(POD_GONE, f"{where} no longer exists")
    meta = pod.get("metadata") or {}
    if meta.get("uid") != ref.uid or meta.get("namespace") != ref.namespace or meta.get("name") != ref.name:
        return Refusal(POD_GONE, f"{where} is not the pod the token was made for (re-created)")
    identity = _attempt_of(meta)
    if isinstance(identity, str):
        return Refusal(NOT_A_TASK_POD, f"{where} is not a task pod: {identity}")
    execution, uid, task, attempt = identity
    if (pod.get("status") or {}).get("phase") in ENDED_PHASES:
        return Refusal(ENDED, f"{where} has finished")
    expires = int(now) + max_ttl if token_expires is None else min(int(token_expires), int(now) + max_ttl)
    if expires <= now:
        return Refusal(UNAUTHENTICATED, f"token of {where} has expired")
    try:
        permissions = attempt_permissions(ref.namespace, execution, uid, task, attempt)
    except ValueError as e:
        return Refusal(NOT_A_TASK_POD, f"{where}: {e}")
    return Grant(ref, ref.namespace, execution, uid, task, attempt, permissions, expires)


def _attempt_of(meta: dict[str, Any]) -> tuple[str, str, str, int] | str:
    """(execution, execution uid, task, attempt) of an operator-made task pod, or what is missing."""
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    if labels.get(LABEL_MANAGED) != MANAGER or labels.get("app.kubernetes.io/component") != "task":
        return f"not labelled {LABEL_MANAGED}={MANAGER}, app.kubernetes.io/component=task"
    owners = [o for o in meta.get("ownerReferences") or []
              if o.get("controller") and o.get("kind") == "WorkflowExecution" and o.get("apiVersion") == API_VERSION]
    if len(owners) != 1 or not owners[0].get("name") or not owners[0].get("uid"):
        return "not controlled by a WorkflowExecution"
    task = annotations.get(ANNOTATION_TASK)
    attempt_text = labels.get(LABEL_ATTEMPT, "")
    if not task or not attempt_text.isdigit() or int(attempt_text) < 1 or attempt_text != str(int(attempt_text)):
        return f"no {ANNOTATION_TASK} annotation or {LABEL_ATTEMPT} label"
    execution, attempt = owners[0]["name"], int(attempt_text)
    if labels.get(LABEL_TASK) != label_value(dns_part(task)):
        return f"its {LABEL_TASK} label does not name its task {task!r}"
    if meta.get("name") != pod_name(execution, task, attempt):
        return f"its name is not {pod_name(execution, task, attempt)} (execution {execution}, task {task!r}, " \
               f"attempt {attempt})"
    return execution, owners[0]["uid"], task, attempt


def token_expiry(token: str) -> int | None:
    """The ``exp`` of a ServiceAccount token (a JWT), read without checking its signature: only
    after TokenReview has accepted the token, to bound the NATS identity's life by the token's."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return exp if isinstance(exp, int) and not isinstance(exp, bool) else None
