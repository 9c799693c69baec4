"""The callout's decisions for warm runner pools (nats_auth.decision): a runner pod's own identity,
and the identity of a pooled attempt its process asks for, proven by the operator's command and the
run's status. Runner pods and commands are built as the operator and the Deployment controller
build them; the permissions are checked against a table of what a runner may and may not do."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import time
from typing import Any

import pytest

from compozy_operator.events import (EventType, Publisher, cancel_subject, command_subject, log_subject, make_event,
                                     pool_attempt_user, pool_consumer, pool_subject, runner_inbox_prefix,
                                     stop_subject)
from compozy_operator.kube import ApiException, Kube
from compozy_operator.nats_auth import decision
from compozy_operator.nats_auth.callout import REMEMBERED_PER_POD, CalloutConfig, CalloutService
from compozy_operator.nats_auth.decision import Grant, PoolAttempt, Refusal, decide, decide_pool_attempt
from compozy_operator.nats_auth.jwt import AuthorizationRequest
from compozy_operator.nats_auth.keys import CalloutKeys
from compozy_operator.nats_auth.permissions import allows, attempt_permissions, runner_permissions
from compozy_operator.pools import PoolWork, runner_deployment
from compozy_operator.settings import Settings

NOW = 1_800_000_000
NS, POOL, POD = "team-a", "warm", "compozy-runner-warm-5d4f8b7c9-x2x7q"
WORK = PoolWork(NS, "run-1", "exec-uid", "each[3]", 2, "the-nonce")


def _runner_pod(pool: str = POOL, namespace: str = NS) -> dict[str, Any]:
    """A runner pod as the Deployment controller makes it from the operator's Deployment."""
    deployment = runner_deployment(Settings(nats_auth="callout"),
                                   {"metadata": {"name": pool, "namespace": namespace, "uid": "pool-uid"}}, 1)
    template = copy.deepcopy(deployment["spec"]["template"])
    labels = {**template["metadata"]["labels"], "pod-template-hash": "5d4f8b7c9"}
    meta = {"name": f"compozy-runner-{pool}-5d4f8b7c9-x2x7q", "namespace": namespace, "uid": "pod-uid",
            "labels": labels,
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"compozy-runner-{pool}-5d4f8b7c9",
                                 "uid": "rs-uid", "controller": True, "blockOwnerDeletion": True}]}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"], "status": {"phase": "Running"}}


def _review(pod: dict[str, Any]) -> dict[str, Any]:
    meta = pod["metadata"]
    return {"authenticated": True, "audiences": ["compozy-nats"],
            "user": {"username": f"system:serviceaccount:{meta['namespace']}:default",
                     "extra": {decision.POD_NAME_EXTRA: [meta["name"]], decision.POD_UID_EXTRA: [meta["uid"]]}}}


def _decide(pod: dict[str, Any], user: str | None = None) -> Grant | Refusal | PoolAttempt:
    return decide(_review(pod), pod, NOW + 600, NOW, user=user)


def _command(work: PoolWork = WORK, **changes: Any) -> tuple[str, Any]:
    """The TaskExecute command the operator stores for a pooled attempt (dispatcher._dispatch_pooled)."""
    body = {**work.dump(), "tool": {"id": "t", "python": "..."}, "input": {}, "pool": POOL, **changes}
    return command_subject(work.namespace, work.execution, work.task, work.attempt), body


def _execution(phase: str = "Running", tasks: dict[str, Any] | None = None, uid: str = "exec-uid") -> dict[str, Any]:
    return {"metadata": {"name": "run-1", "namespace": NS, "uid": uid},
            "status": {"phase": phase, "tasks": {"each[3]": {"phase": "Running", "attempt": 2}} if tasks is None
                       else tasks}}


# ---- the runner's own identity ------------------------------------------------------------

def test_a_runner_pod_gets_its_pools_queue_and_nothing_to_publish() -> None:
    got = _decide(_runner_pod())
    assert isinstance(got, Grant), got
    assert (got.namespace, got.pool, got.execution, got.expires) == (NS, POOL, None, NOW + 600)
    assert got.permissions == runner_permissions(NS, POOL, POD)
    assert got.user_name == f"runner:{NS}/{POD}"


def _mutated(path: str, value: Any) -> dict[str, Any]:
    pod = _runner_pod()
    node = pod
    *parents, last = path.split("/")
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key.replace("~", "/")]
    if value is None:
        del node[last.replace("~", "/")]
    else:
        node[last.replace("~", "/")] = value
    return pod


RUNNER_REFUSALS = [
    ("not managed by the operator", _mutated("metadata/labels/app.kubernetes.io~managed-by", None),
     decision.NOT_A_RUNNER_POD),
    ("no owner", _mutated("metadata/ownerReferences", []), decision.NOT_A_RUNNER_POD),
    ("owner not the controller", _mutated("metadata/ownerReferences/0/controller", False), decision.NOT_A_RUNNER_POD),
    ("owned by a StatefulSet", _mutated("metadata/ownerReferences/0/kind", "StatefulSet"), decision.NOT_A_RUNNER_POD),
    ("another group's ReplicaSet", _mutated("metadata/ownerReferences/0/apiVersion", "evil.example/v1"),
     decision.NOT_A_RUNNER_POD),
    ("a ReplicaSet of another Deployment", _mutated("metadata/ownerReferences/0/name", "web-5d4f8b7c9"),
     decision.NOT_A_RUNNER_POD),
    ("a ReplicaSet of another template", _mutated("metadata/labels/pod-template-hash", "abc"),
     decision.NOT_A_RUNNER_POD),
    ("no template hash", _mutated("metadata/labels/pod-template-hash", None), decision.NOT_A_RUNNER_POD),
    ("pool label names another pool", _mutated("metadata/labels/compozy.dev~pool", "cold"), decision.NOT_A_RUNNER_POD),
    ("a pool name that is no DNS label", _mutated("metadata/ownerReferences/0/name", "compozy-runner-a.b-5d4f8b7c9"),
     decision.NOT_A_RUNNER_POD),
    ("finished", _mutated("status/phase", "Failed"), decision.ENDED),
    ("re-created", _mutated("metadata/uid", "other"), decision.POD_GONE),
]


@pytest.mark.parametrize(("what", "pod", "reason"), RUNNER_REFUSALS, ids=[r[0] for r in RUNNER_REFUSALS])
def test_runner_refusals(what: str, pod: dict[str, Any], reason: str) -> None:
    got = decide(_review(_runner_pod()), pod, NOW + 600, NOW)
    assert isinstance(got, Refusal), what
    assert got.reason == reason, got.message
    assert got.reason in decision.REASONS


def test_a_task_pods_token_is_still_a_task_pods() -> None:
    """The runner path is taken for runner pods only; a task pod naming an attempt as its user gets
    its own attempt, never the named one."""
    from tests.unit.test_nats_auth_decision import _pod, _review as task_review  # noqa: PLC0415
    pod = _pod("fetch", 1)
    got = decide(task_review(pod), pod, NOW + 600, NOW, user=pool_attempt_user(WORK.dump()))
    assert isinstance(got, Grant) and (got.task, got.attempt, got.pool) == ("fetch", 1, None)


OTHER_NS, OTHER_POOL = "victim", "cold"
# (what, publish or subscribe, subject, allowed)
RUNNER_TABLE = [
    ("pull from its pool", "pub", f"$JS.API.CONSUMER.MSG.NEXT.COMPOZY_POOLS.{pool_consumer(NS, POOL)}", True),
    ("ack its pool's messages", "pub", f"$JS.ACK.COMPOZY_POOLS.{pool_consumer(NS, POOL)}.1.5.5.1700000000.0", True),
    ("look for a kept stop", "pub", f"$JS.API.DIRECT.GET.COMPOZY_COMMANDS.{stop_subject(NS, 'run-1', 'u', 'a', 1)}",
     True),
    ("hear its namespace's cancels", "sub", f"compozy.cmd.{NS}.*.workflow.cancel", True),
    ("hear its namespace's stops", "sub", f"compozy.cmd.{NS}.*.task.stop.*.*.*", True),
    ("its replies", "sub", f"{runner_inbox_prefix(NS, POD)}.>", True),
    ("pull from another pool", "pub", f"$JS.API.CONSUMER.MSG.NEXT.COMPOZY_POOLS.{pool_consumer(NS, OTHER_POOL)}",
     False),
    ("pull from another namespace's pool of its name", "pub",
     f"$JS.API.CONSUMER.MSG.NEXT.COMPOZY_POOLS.{pool_consumer(OTHER_NS, POOL)}", False),
    ("ack another pool's messages", "pub", f"$JS.ACK.COMPOZY_POOLS.{pool_consumer(NS, OTHER_POOL)}.1.5.5.1.0", False),
    ("publish on its pool's queue", "pub", pool_subject(NS, POOL), False),
    ("read its queue through a consumer of its own", "pub", "$JS.API.CONSUMER.CREATE.COMPOZY_POOLS", False),
    ("delete its consumer", "pub", f"$JS.API.CONSUMER.DELETE.COMPOZY_POOLS.{pool_consumer(NS, POOL)}", False),
    ("forge an attempt's state event", "pub", make_event(EventType.TASK_SUCCESS, "x", NS, "run-1", "u", "a", 1,
                                                        publisher=Publisher.ATTEMPT).subject, False),
    ("forge the operator's event", "pub", make_event(EventType.TASK_DISPATCHED, "x", NS, "run-1", "u", "a", 1).subject,
     False),
    ("write an attempt's log", "pub", log_subject(NS, "run-1", "u", "x", "a", 1), False),
    ("read a command", "pub", f"$JS.API.DIRECT.GET.COMPOZY_COMMANDS.{command_subject(NS, 'run-1', 'a', 1)}", False),
    ("read commands by body", "pub", "$JS.API.DIRECT.GET.COMPOZY_COMMANDS", False),
    ("publish a stop", "pub", stop_subject(NS, "run-1", "u", "a", 1), False),
    ("publish a cancel", "pub", cancel_subject(NS, "run-1"), False),
    ("hear commands", "sub", f"compozy.cmd.{NS}.>", False),
    ("hear another namespace's stops", "sub", f"compozy.cmd.{OTHER_NS}.*.task.stop.*.*.*", False),
    ("look for another namespace's stops", "pub",
     f"$JS.API.DIRECT.GET.COMPOZY_COMMANDS.{stop_subject(OTHER_NS, 'run-1', 'u', 'a', 1)}", False),
    ("everyone's replies", "sub", "_INBOX.>", False),
    ("another runner's replies", "sub", f"{runner_inbox_prefix(NS, 'compozy-runner-warm-other')}.>", False),
]


@pytest.mark.parametrize(("what", "kind", "subject", "allowed"), RUNNER_TABLE, ids=[r[0] for r in RUNNER_TABLE])
def test_what_a_runner_may_do(what: str, kind: str, subject: str, allowed: bool) -> None:
    p = runner_permissions(NS, POOL, POD)
    assert allows(p.publish if kind == "pub" else p.subscribe, subject) is allowed, what


def test_pool_consumers_of_different_namespaces_never_share_a_name() -> None:
    """``pool-a-b-c`` was both namespace a-b's pool c and namespace a's pool b-c."""
    assert pool_consumer("a-b", "c") != pool_consumer("a", "b-c")


@pytest.mark.parametrize("names", [("a.b", POOL, POD), (NS, "*", POD), (NS, "a>", POD), (NS, POOL, "x y"),
                                   ("", POOL, POD)])
def test_runner_permissions_refuse_names_that_could_widen_them(names: tuple[str, str, str]) -> None:
    with pytest.raises(ValueError):
        runner_permissions(*names)


# ---- a pooled attempt's identity ----------------------------------------------------------

def _claim(user: str | None = None) -> PoolAttempt:
    got = _decide(_runner_pod(), pool_attempt_user(WORK.dump()) if user is None else user)
    assert isinstance(got, PoolAttempt), got
    return got


def test_a_runners_process_gets_exactly_its_attempts_identity() -> None:
    claim = _claim()
    assert (claim.pool, claim.work, claim.pod.name) == (POOL, WORK, POD)
    got = decide_pool_attempt(claim, _execution(), _command())
    assert isinstance(got, Grant), got
    assert got.permissions == attempt_permissions(NS, "run-1", "exec-uid", "each[3]", 2)
    assert (got.pod.uid, got.pool, got.expires) == ("pod-uid", POOL, NOW + 600)  # kicked with the runner pod
    assert got.user_name == f"pool-attempt:{NS}/run-1/each[3]/2@{POD}"


@pytest.mark.parametrize("execution", [
    _execution(tasks={}),  # TaskDispatched not folded yet: the command alone says it is dispatched
    _execution(phase="Pending", tasks={}),
    _execution(tasks={"each[3]": {"phase": "Failed", "attempt": 1}}),  # attempt 1's end, before attempt 2 shows
    _execution(tasks={"each[3]": {"phase": "Pending", "attempt": 2}}),
])
def test_a_dispatched_attempt_the_status_does_not_show_ended_is_granted(execution: dict[str, Any]) -> None:
    assert isinstance(decide_pool_attempt(_claim(), execution, _command()), Grant)


USER_REFUSALS = [
    ("another namespace's attempt", pool_attempt_user({**WORK.dump(), "namespace": "victim"}), decision.WRONG_NAMESPACE),
    ("a user that is no attempt", "compozy-operator", decision.INVALID_REQUEST),
    ("not JSON", "compozy-pool-attempt:{", decision.INVALID_REQUEST),
    ("no nonce", pool_attempt_user({k: v for k, v in WORK.dump().items() if k != "nonce"}), decision.INVALID_REQUEST),
    ("attempt zero", pool_attempt_user({**WORK.dump(), "attempt": 0}), decision.INVALID_REQUEST),
    ("too long", pool_attempt_user({**WORK.dump(), "task": "x" * 5000}), decision.INVALID_REQUEST),
]


@pytest.mark.parametrize(("what", "user", "reason"), USER_REFUSALS, ids=[r[0] for r in USER_REFUSALS])
def test_a_runners_process_naming_no_attempt_of_its_namespace_is_refused(what: str, user: str, reason: str) -> None:
    got = _decide(_runner_pod(), user)
    assert isinstance(got, Refusal) and got.reason == reason, (what, got)


def test_a_finished_runners_process_is_refused_before_anything_is_read() -> None:
    pod = _runner_pod()
    pod["status"]["phase"] = "Succeeded"
    got = _decide(pod, pool_attempt_user(WORK.dump()))
    assert isinstance(got, Refusal) and got.reason == decision.ENDED


OTHER_RUN = PoolWork(NS, "run-2", "exec-uid", "each[3]", 2, "the-nonce")
PROOF_REFUSALS = [
    ("no command: never dispatched", _execution(), None, decision.NOT_DISPATCHED),
    ("the command of another run stored there", _execution(), (_command()[0], {**_command()[1], "execution": "run-2"}),
     decision.NOT_DISPATCHED),
    ("a command of a run of the same name that was deleted", _execution(), _command(uid="old-uid"),
     decision.NOT_DISPATCHED),
    ("the command is not JSON", _execution(), (_command()[0], None), decision.NOT_DISPATCHED),
    ("stored on another subject", _execution(), (command_subject(NS, "run-1", "each[3]", 1), _command()[1]),
     decision.NOT_DISPATCHED),
    ("a pod's attempt", _execution(), _command(pool=None), decision.NOT_POOLED),
    ("another pool's attempt", _execution(), _command(pool="cold"), decision.WRONG_POOL),
    ("another nonce (a repeated dispatch replaced it)", _execution(), _command(nonce="new-nonce"),
     decision.WRONG_NONCE),
    ("no nonce in the command", _execution(), _command(nonce=None), decision.WRONG_NONCE),
    ("the run is gone", None, _command(), decision.ENDED),
    ("the run was re-created", _execution(uid="new-uid"), _command(), decision.ENDED),
    ("the run has ended", _execution(phase="Cancelled"), _command(), decision.ENDED),
    ("the attempt has succeeded", _execution(tasks={"each[3]": {"phase": "Succeeded", "attempt": 2}}), _command(),
     decision.ENDED),
    ("the attempt was replaced by a retry", _execution(tasks={"each[3]": {"phase": "Running", "attempt": 3}}),
     _command(), decision.ENDED),
]


@pytest.mark.parametrize(("what", "execution", "command", "reason"), PROOF_REFUSALS, ids=[r[0] for r in PROOF_REFUSALS])
def test_an_attempt_not_proven_is_refused(what: str, execution: dict[str, Any] | None, command: Any,
                                          reason: str) -> None:
    got = decide_pool_attempt(_claim(), execution, command)
    assert isinstance(got, Refusal), what
    assert got.reason == reason, got.message
    assert got.reason in decision.REASONS


def test_the_fixture_command_is_the_granted_one() -> None:
    """The refusals above differ from a grant by one field each."""
    assert isinstance(decide_pool_attempt(_claim(), _execution(), _command()), Grant)
    assert _command()[1]["pool"] == POOL and OTHER_RUN.execution != WORK.execution


def test_a_runner_pods_connections_are_remembered_newest_first_and_bounded() -> None:
    """A runner's token logs in once per attempt: a long-lived runner must not grow the callout's memory
    (nor its kick at the pod's end) without bound."""
    service = CalloutService(CalloutConfig("nats://127.0.0.1:1", CalloutKeys().issuer_seed, "COMPOZY"),
                             Kube(None))  # type: ignore[arg-type]  # (no API call is made)
    for cid in range(REMEMBERED_PER_POD + 10):
        service.remember("runner-uid", "server", cid)
    service.remember("task-uid", "server", 1)
    kept = list(service.connections["runner-uid"])
    assert len(kept) == REMEMBERED_PER_POD and kept[-1] == ("server", REMEMBERED_PER_POD + 9) and kept[0][1] == 10
    assert list(service.connections["task-uid"]) == [("server", 1)]


# ---- a runner token's review, kept between its logins ------------------------------------------

def _token(exp: int) -> str:
    """A ServiceAccount token as far as the callout reads it without the API server (its ``exp``)."""
    claims = base64.urlsafe_b64encode(json.dumps({"exp": exp}).encode()).decode().rstrip("=")
    return f"h.{claims}.s"


class CountingKube:
    """The API server as the callout uses it: TokenReview and GETs, counted; ``pods`` as they are now."""

    def __init__(self, *pods: dict[str, Any]) -> None:
        self.pods = {p["metadata"]["uid"]: p for p in pods}
        self.reviews = self.gets = 0

    def request(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.reviews += 1
        pod = self.pods.get(body["spec"]["token"].split("|")[-1]) if "|" in body["spec"]["token"] else None
        return {"status": _review(pod) if pod else {"authenticated": False, "error": "the pod is gone"}}

    def get(self, path: str) -> dict[str, Any]:
        self.gets += 1
        if "/pods/" in path:
            found = [p for p in self.pods.values() if path.endswith("/" + p["metadata"]["name"])]
            if found:
                return found[0]
            raise ApiException(status=404, reason="Not Found")
        return _execution()


def _request(token: str, user: str | None = None) -> AuthorizationRequest:
    return AuthorizationRequest(server_id="S", user_nkey="U", token=None, user=user, password=token,
                                client_name="c", client_host="h", expires=None, client_id=1)


def _service(kube: CountingKube, watched: bool = True) -> CalloutService:
    async def commands(_: str) -> tuple[str, Any]:
        return _command()
    return CalloutService(CalloutConfig("nats://127.0.0.1:1", CalloutKeys().issuer_seed, "COMPOZY"),
                          kube, commands=commands, pods_watched=watched)  # type: ignore[arg-type]


def test_a_runner_tokens_review_is_kept_until_its_pod_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pooled attempt's login presents the runner pod's token: its TokenReview and pod GET are
    made once, not per attempt, until the pod ends; then the token is reviewed again (and refused)."""
    pod = _runner_pod()
    kube = CountingKube(pod)
    service = _service(kube)
    token = _token(int(time.time()) + 3600) + "|pod-uid"
    attempt = pool_attempt_user(WORK.dump())

    async def scenario() -> list[Any]:
        got = [await service.authorize(_request(token, attempt)) for _ in range(5)]
        await service.end_pod("pod-uid")
        del kube.pods["pod-uid"]
        got.append(await service.authorize(_request(token, attempt)))
        return got

    got = asyncio.run(scenario())
    assert all(isinstance(g, Grant) for g in got[:5]), got
    assert isinstance(got[5], Refusal) and got[5].reason == decision.UNAUTHENTICATED, got[5]
    assert kube.reviews == 2 and kube.gets == 1 + 5, (kube.reviews, kube.gets)  # one pod GET, a run GET per attempt


@pytest.mark.parametrize("case", ["a task pod's token", "no pod watch (the standalone callout)", "no expiry"])
def test_a_review_is_not_kept_where_nothing_would_drop_it(case: str) -> None:
    pod = _runner_pod()
    if case == "a task pod's token":
        pod["metadata"]["labels"]["app.kubernetes.io/component"] = "task"
    kube = CountingKube(pod)
    service = _service(kube, watched=case != "no pod watch (the standalone callout)")
    token = (_token(int(time.time()) + 3600) if case != "no expiry" else "opaque") + "|pod-uid"

    async def scenario() -> None:
        for _ in range(3):
            await service.authorize(_request(token))

    asyncio.run(scenario())
    assert kube.reviews == 3 and not service.reviews


def test_a_grant_checked_while_its_pod_ended_is_refused() -> None:
    """The pod ends (its connections are kicked) while a login through its token is being checked: that
    grant would never be kicked, so it is not given."""
    kube = CountingKube(_runner_pod())
    service = _service(kube)
    token = _token(int(time.time()) + 3600) + "|pod-uid"
    real = service._checked

    async def ending_meanwhile(t: str) -> Any:
        checked = await real(t)
        await service.end_pod("pod-uid")
        return checked

    service._checked = ending_meanwhile  # type: ignore[method-assign]
    got = asyncio.run(service.authorize(_request(token, pool_attempt_user(WORK.dump()))))
    assert isinstance(got, Refusal) and got.reason == decision.POD_GONE, got
