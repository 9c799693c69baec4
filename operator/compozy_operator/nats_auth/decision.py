"""Whether a presented ServiceAccount token is a task attempt's or a pool runner's, and which (pure).

:func:`decide` takes what the callout service fetched (the TokenReview's status, the pod the
token names or None, the token's expiry, the connect option ``user``) and answers with a
:class:`Grant` carrying the permissions and expiry, a :class:`Refusal` with a reason (a metric
label) and a message (a log line), or a :class:`PoolAttempt` still to be proven.

* A task pod: one the operator created for an attempt: managed by it, a task pod, owned by (the
  controller reference to) a WorkflowExecution, its name and labels agreeing with its task
  annotation and attempt label, the very pod (uid) the token is bound to, and not finished. It gets
  its attempt's permissions.
* A pool runner (no ``user``): a runner pod of a RunnerPool's Deployment (labels, the controller
  ReplicaSet ``compozy-runner-<pool>-<pod-template-hash>``, the pool label agreeing), not finished.
  It gets :func:`.permissions.runner_permissions`: its pool's queue, its namespace's stops and
  cancels, its replies; no event, log, command or output.
* A pooled attempt's process (``user`` = :data:`.wire.POOL_ATTEMPT_USER` + the queue message it was
  handed, the password its runner pod's token): a :class:`PoolAttempt`, which
  :func:`decide_pool_attempt` grants the attempt's own permissions only when the operator's command
  for that attempt names this pool and carries the message's nonce (only the pool's queue and the
  command hold it), and the run's status does not show the attempt ended.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any

from ..resources.models import API_VERSION, ID_PATTERN, TERMINAL_PHASES
from ..pods import ANNOTATION_TASK, LABEL_ATTEMPT, LABEL_MANAGED, LABEL_TASK, MANAGER, dns_part, label_value, pod_name
from ..pools import LABEL_POOL, RUNNER_COMPONENT, PoolWork, deployment_name, parse_work
from ..reducer import TASK_TERMINAL
from ..wire import POOL_ATTEMPT_USER, command_subject
from .permissions import Permissions, attempt_permissions, runner_permissions

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
ENDED = "ended"  # the attempt's pod has finished, or the pooled attempt (or its run) has ended
ERROR = "error"  # the callout could not check (API server unreachable, ...): refused, never granted
NOT_A_RUNNER_POD = "not_a_runner_pod"  # labelled a runner, but not one of a RunnerPool's Deployment
# a runner's process asked for an attempt ... of another namespace; that was never dispatched (no
# command); of a pod, not of a pool; of another pool; with a nonce that is not its command's
WRONG_NAMESPACE = "wrong_namespace"
NOT_DISPATCHED = "not_dispatched"
NOT_POOLED = "not_pooled"
WRONG_POOL = "wrong_pool"
WRONG_NONCE = "wrong_nonce"
REASONS = (INVALID_REQUEST, NO_TOKEN, UNAUTHENTICATED, NOT_A_POD, POD_GONE, NOT_A_TASK_POD, ENDED, ERROR,
           NOT_A_RUNNER_POD, WRONG_NAMESPACE, NOT_DISPATCHED, NOT_POOLED, WRONG_POOL, WRONG_NONCE)
COMPONENT = "app.kubernetes.io/component"
MAX_USER = 4096  # characters of a pooled attempt's user (its queue message) read at most


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True)
class Grant:
    pod: PodRef  # whose token: a task pod, or the runner of a pooled attempt
    namespace: str
    execution: str | None  # None (and uid, task, attempt): a pool runner's own identity
    uid: str | None  # the execution's
    task: str | None
    attempt: int | None
    permissions: Permissions
    expires: int  # unix seconds
    pool: str | None = None  # a runner's pool (its own identity, or its attempt's)

    @property
    def user_name(self) -> str:
        if self.pool is None:
            return f"task:{self.namespace}/{self.pod.name}"
        if self.execution is None:
            return f"runner:{self.namespace}/{self.pod.name}"
        return f"pool-attempt:{self.namespace}/{self.execution}/{self.task}/{self.attempt}@{self.pod.name}"

    @property
    def what(self) -> str:
        """Whose identity, for the log."""
        if self.execution is None:
            return f"runner of pool {self.namespace}/{self.pool}"
        on = f" on pool {self.pool}" if self.pool else ""
        return f"{self.namespace}/{self.execution} task {self.task} attempt {self.attempt}{on}"


@dataclass(frozen=True)
class PoolAttempt:
    """A runner's process asks for the identity of ``work`` (its queue message): still to be proven
    by the operator's command and the run's status (:func:`decide_pool_attempt`)."""

    pod: PodRef  # the runner's
    pool: str
    work: PoolWork
    expires: int


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
           max_ttl: int = DEFAULT_MAX_TTL, audience: str = AUDIENCE,
           user: str | None = None) -> Grant | Refusal | PoolAttempt:
    """The grant for the task attempt or pool runner whose pod presented the token, the pooled
    attempt a runner's process asks for (``user``), or why there is none. ``pod`` is the pod
    object as the API server has it now (None: not found)."""
    ref = reviewed_pod(review_status, audience)
    if isinstance(ref, Refusal):
        return ref
    where = f"pod {ref.namespace}/{ref.name}"
    if pod is None:
        return Refusal(POD_GONE, f"{where} no longer exists")
    meta = pod.get("metadata") or {}
    if meta.get("uid") != ref.uid or meta.get("namespace") != ref.namespace or meta.get("name") != ref.name:
        return Refusal(POD_GONE, f"{where} is not the pod the token was made for (re-created)")
    if (meta.get("labels") or {}).get(COMPONENT) == RUNNER_COMPONENT:
        return _runner(ref, pod, token_expires, now, max_ttl, user)
    identity = _attempt_of(meta)
    if isinstance(identity, str):
        return Refusal(NOT_A_TASK_POD, f"{where} is not a task pod: {identity}")
    execution, uid, task, attempt = identity
    expires = _expiry(ref, pod, token_expires, now, max_ttl)
    if isinstance(expires, Refusal):
        return expires
    try:
        permissions = attempt_permissions(ref.namespace, execution, uid, task, attempt)
    except ValueError as e:
        return Refusal(NOT_A_TASK_POD, f"{where}: {e}")
    return Grant(ref, ref.namespace, execution, uid, task, attempt, permissions, expires)


def _expiry(ref: PodRef, pod: dict[str, Any], token_expires: int | None, now: float, max_ttl: int) -> int | Refusal:
    """When the identity of a live pod's token ends: the token's expiry, at most ``max_ttl`` away."""
    where = f"pod {ref.namespace}/{ref.name}"
    if (pod.get("status") or {}).get("phase") in ENDED_PHASES:
        return Refusal(ENDED, f"{where} has finished")
    expires = int(now) + max_ttl if token_expires is None else min(int(token_expires), int(now) + max_ttl)
    if expires <= now:
        return Refusal(UNAUTHENTICATED, f"token of {where} has expired")
    return expires


def _runner(ref: PodRef, pod: dict[str, Any], token_expires: int | None, now: float, max_ttl: int,
            user: str | None) -> Grant | Refusal | PoolAttempt:
    """A runner pod's own identity (no ``user``), or the pooled attempt its process names in ``user``."""
    where = f"pod {ref.namespace}/{ref.name}"
    try:
        pool = _pool_of(pod.get("metadata") or {})
    except ValueError as e:
        return Refusal(NOT_A_RUNNER_POD, f"{where} is not a pool runner: {e}")
    expires = _expiry(ref, pod, token_expires, now, max_ttl)
    if isinstance(expires, Refusal):
        return expires
    if not user:
        try:
            permissions = runner_permissions(ref.namespace, pool, ref.name)
        except ValueError as e:
            return Refusal(NOT_A_RUNNER_POD, f"{where}: {e}")
        return Grant(ref, ref.namespace, None, None, None, None, permissions, expires, pool)
    if not user.startswith(POOL_ATTEMPT_USER) or len(user) > MAX_USER:
        return Refusal(INVALID_REQUEST, f"{where} (runner of pool {pool}) connected as a user that names no pooled "
                                        "attempt")
    try:
        body = json.loads(user[len(POOL_ATTEMPT_USER):])
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("namespace") != ref.namespace:
        return Refusal(WRONG_NAMESPACE, f"{where} (runner of pool {pool}) asked for an attempt of namespace "
                                        f"{str(body.get('namespace'))[:63]!r}")
    work = parse_work(body, ref.namespace)
    if isinstance(work, str):
        return Refusal(INVALID_REQUEST, f"{where} (runner of pool {pool}) named no attempt: {work}")
    return PoolAttempt(ref, pool, work, expires)


def decide_pool_attempt(claim: PoolAttempt, execution: dict[str, Any] | None,
                        command: tuple[str, Any] | None) -> Grant | Refusal:
    """The identity of the pooled attempt a runner's process asked for, given its run as the API
    server has it now (None: not found) and the TaskExecute command stored for that attempt (the
    subject it is stored on and its body; None: none). The command is the operator's word that the
    attempt runs on this pool (it publishes commands alone), and its nonce, which only the pool's
    queue message also holds, that this runner was handed it; the status, that it has not ended."""
    w = claim.work
    what = f"{w.namespace}/{w.execution} task {w.task!r} attempt {w.attempt}"
    asker = f"runner {claim.pod.name} of pool {claim.pool}"
    subject = command_subject(w.namespace, w.execution, w.task, w.attempt)
    if command is None or command[0] != subject or not isinstance(command[1], dict) \
            or any(command[1].get(k) != v for k, v in w.dump().items() if k != "nonce"):
        return Refusal(NOT_DISPATCHED, f"{asker} asked for {what}, which was never dispatched (no command)")
    body = command[1]
    if body.get("pool") is None:
        return Refusal(NOT_POOLED, f"{asker} asked for {what}, which runs in a pod of its own, not on a pool")
    if body["pool"] != claim.pool:
        return Refusal(WRONG_POOL, f"{asker} asked for {what}, which runs on pool {str(body['pool'])[:63]!r}")
    nonce = body.get("nonce")
    if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), w.nonce.encode()):
        return Refusal(WRONG_NONCE, f"{asker} asked for {what} with a nonce that is not its command's")
    ended = _attempt_ended(execution, w)
    if ended is not None:
        return Refusal(ENDED, f"{asker} asked for {what}: {ended}")
    permissions = attempt_permissions(w.namespace, w.execution, w.uid, w.task, w.attempt)
    return Grant(claim.pod, w.namespace, w.execution, w.uid, w.task, w.attempt, permissions, claim.expires,
                 claim.pool)


def _attempt_ended(execution: dict[str, Any] | None, w: PoolWork) -> str | None:
    """Why the run's status says attempt ``w`` cannot be running (None: it may be). A status that
    does not show the attempt yet (its TaskDispatched not folded) does not say it ended."""
    if execution is None or (execution.get("metadata") or {}).get("uid") != w.uid:
        return "its run no longer exists"
    status = execution.get("status") or {}
    if status.get("phase") in TERMINAL_PHASES:
        return f"its run has ended ({status['phase']})"
    task = (status.get("tasks") or {}).get(w.task)
    if not isinstance(task, dict) or not isinstance(task.get("attempt"), int):
        return None
    if task["attempt"] > w.attempt or (task["attempt"] == w.attempt and task.get("phase") in TASK_TERMINAL):
        return f"the attempt has ended (the task is at attempt {task['attempt']}, {task.get('phase')})"
    return None


def _pool_of(meta: dict[str, Any]) -> str:
    """The pool of a runner pod its Deployment made (ValueError: what is missing)."""
    labels = meta.get("labels") or {}
    if labels.get(LABEL_MANAGED) != MANAGER or labels.get(COMPONENT) != RUNNER_COMPONENT:
        raise ValueError(f"not labelled {LABEL_MANAGED}={MANAGER}, {COMPONENT}={RUNNER_COMPONENT}")
    owners = [o for o in meta.get("ownerReferences") or [] if o.get("controller")]
    if len(owners) != 1 or owners[0].get("kind") != "ReplicaSet" or owners[0].get("apiVersion") != "apps/v1" \
            or not owners[0].get("uid"):
        raise ValueError("not controlled by a ReplicaSet")
    name, template = owners[0].get("name") or "", labels.get("pod-template-hash") or ""
    prefix = deployment_name("")
    pool = name[len(prefix):-len(template) - 1] if template else ""
    if not name.startswith(prefix) or not name.endswith(f"-{template}") or not re.fullmatch(ID_PATTERN, pool):
        raise ValueError(f"its ReplicaSet {name[:80]!r} is not one of a RunnerPool's Deployment ({prefix}<pool>)")
    if labels.get(LABEL_POOL) != label_value(pool):
        raise ValueError(f"its {LABEL_POOL} label does not name its Deployment's pool {pool!r}")
    return pool


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
