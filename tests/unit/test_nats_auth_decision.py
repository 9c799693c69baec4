"""The callout's decision (nats_auth.decision): a TokenReview result and a pod -> grant or refusal."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from compozy_operator.resources.models import API_VERSION
from compozy_operator.nats_auth import decision
from compozy_operator.nats_auth.decision import Grant, Refusal, decide, token_expiry
from compozy_operator.nats_auth.permissions import attempt_permissions
from compozy_operator.pods import pod_name, task_pod
from compozy_operator.settings import Settings

NOW = 1_800_000_000
EXECUTION = {"metadata": {"name": "run-1", "namespace": "team-a", "uid": "exec-uid"}}


def _pod(task: str = "fetch", attempt: int = 2) -> dict[str, Any]:
    """A task pod as the operator creates it, as the API server returns it."""
    pod = task_pod(Settings(), EXECUTION, task, attempt)
    pod["metadata"]["uid"] = "pod-uid"
    pod["status"] = {"phase": "Running"}
    return pod


def _review(pod: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    meta = (pod or _pod())["metadata"]
    status = {"authenticated": True, "audiences": ["compozy-nats"],
              "user": {"username": f"system:serviceaccount:{meta['namespace']}:default", "uid": "sa-uid",
                       "extra": {decision.POD_NAME_EXTRA: [meta["name"]], decision.POD_UID_EXTRA: [meta["uid"]]}}}
    status.update(changes)
    return status


def test_a_task_pod_gets_its_attempts_permissions() -> None:
    pod = _pod("each-url[3]", 2)
    got = decide(_review(pod), pod, NOW + 600, NOW)
    assert isinstance(got, Grant)
    assert (got.namespace, got.execution, got.uid, got.task, got.attempt) == ("team-a", "run-1", "exec-uid",
                                                                              "each-url[3]", 2)
    assert got.permissions == attempt_permissions("team-a", "run-1", "exec-uid", "each-url[3]", 2)
    assert got.expires == NOW + 600
    assert got.user_name == f"task:team-a/{pod_name('run-1', 'each-url[3]', 2)}"


def test_expiry_is_the_tokens_at_most_max_ttl() -> None:
    pod = _pod()
    assert decide(_review(), pod, NOW + 7200, NOW, max_ttl=900).expires == NOW + 900  # type: ignore[union-attr]
    assert decide(_review(), pod, None, NOW, max_ttl=900).expires == NOW + 900  # type: ignore[union-attr]
    assert decide(_review(), pod, NOW - 1, NOW) == Refusal(decision.UNAUTHENTICATED, f"token of pod team-a/"
                                                                                     f"{pod['metadata']['name']} has expired")


def _mutated(path: str, value: Any) -> dict[str, Any]:
    """The task pod with one field changed (None: removed); ``~`` in a path stands for ``/``."""
    pod = _pod()
    node = pod
    *parents, last = path.split("/")
    last = last.replace("~", "/")
    for key in parents:
        node = node[key] if not key.isdigit() else node[int(key)]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return pod


ANOTHER_OWNER = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs", "controller": True}
REFUSALS = [
    ("token not accepted", _review(authenticated=False, error="token has been invalidated"), _pod(),
     decision.UNAUTHENTICATED),
    ("another audience", _review(audiences=["https://kubernetes.default.svc"]), _pod(), decision.UNAUTHENTICATED),
    ("a user, not a service account", _review(user={"username": "alice", "extra": {}}), _pod(), decision.NOT_A_POD),
    ("a service account token not bound to a pod", _review(user={"username": "system:serviceaccount:team-a:default"}),
     _pod(), decision.NOT_A_POD),
    ("the pod is gone", _review(), None, decision.POD_GONE),
    ("re-created under the same name", _review(), _mutated("metadata/uid", "new-uid"), decision.POD_GONE),
    ("another namespace's pod of that name", _review(), _mutated("metadata/namespace", "victim"), decision.POD_GONE),
    ("not managed by the operator", _review(), _mutated("metadata/labels/app.kubernetes.io~managed-by", None),
     decision.NOT_A_TASK_POD),
    ("not a task pod", _review(), _mutated("metadata/labels/app.kubernetes.io~component", "web"),
     decision.NOT_A_TASK_POD),
    ("a task pod labelled a pool runner", _review(), _mutated("metadata/labels/app.kubernetes.io~component", "runner"),
     decision.NOT_A_RUNNER_POD),
    ("no owner", _review(), _mutated("metadata/ownerReferences", []), decision.NOT_A_TASK_POD),
    ("owned by something else", _review(), _mutated("metadata/ownerReferences", [ANOTHER_OWNER]),
     decision.NOT_A_TASK_POD),
    ("owner not the controller", _review(), _mutated("metadata/ownerReferences/0/controller", False),
     decision.NOT_A_TASK_POD),
    ("no task annotation", _review(), _mutated("metadata/annotations/compozy.dev~task-key", None),
     decision.NOT_A_TASK_POD),
    ("annotation names another task", _review(), _mutated("metadata/annotations/compozy.dev~task-key", "other"),
     decision.NOT_A_TASK_POD),
    ("label names another attempt", _review(), _mutated("metadata/labels/compozy.dev~attempt", "3"),
     decision.NOT_A_TASK_POD),
    ("attempt zero", _review(), _mutated("metadata/labels/compozy.dev~attempt", "0"), decision.NOT_A_TASK_POD),
    ("attempt not a number", _review(), _mutated("metadata/labels/compozy.dev~attempt", "02"), decision.NOT_A_TASK_POD),
    ("finished", _review(), _mutated("status/phase", "Succeeded"), decision.ENDED),
    ("failed", _review(), _mutated("status/phase", "Failed"), decision.ENDED),
]


@pytest.mark.parametrize(("what", "review", "pod", "reason"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals(what: str, review: dict[str, Any], pod: dict[str, Any] | None, reason: str) -> None:
    got = decide(review, pod, NOW + 600, NOW)
    assert isinstance(got, Refusal), what
    assert got.reason == reason, got.message
    assert got.reason in decision.REASONS


def test_the_fixture_mutations_hit_real_keys() -> None:
    pod = _mutated("metadata/labels/compozy.dev~attempt", "3")
    assert pod["metadata"]["labels"]["compozy.dev/attempt"] == "3"
    assert len(pod["metadata"]["labels"]) == len(_pod()["metadata"]["labels"])


def test_a_terminating_pod_still_gets_its_identity() -> None:
    """Its runner reports Terminated on SIGTERM: it may have to reconnect for that."""
    pod = _mutated("metadata/deletionTimestamp", "2027-01-15T08:00:00Z")
    assert isinstance(decide(_review(), pod, NOW + 600, NOW), Grant)


def test_owner_must_be_a_workflow_execution_of_our_api() -> None:
    pod = _pod()
    pod["metadata"]["ownerReferences"][0]["apiVersion"] = "evil.example/v1"
    assert decide(_review(), pod, NOW + 600, NOW).reason == decision.NOT_A_TASK_POD  # type: ignore[union-attr]
    assert _pod()["metadata"]["ownerReferences"][0]["apiVersion"] == API_VERSION


def _token(claims: Any) -> str:
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJSUzI1NiJ9.{body}.sig"


def test_token_expiry() -> None:
    assert token_expiry(_token({"exp": NOW, "aud": ["compozy-nats"]})) == NOW
    for bad in ("", "a.b", _token({"exp": "soon"}), _token({"exp": True}), _token([1]), "a.!!!.c"):
        assert token_expiry(bad) is None
