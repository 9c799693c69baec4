"""Warm runner pools in callout mode: NATS identities for runners and for the attempts they run.

The callout-mode cluster of test_tenant_isolation (its own nats-server with the auth callout, an
operator with ``COMPOZY_NATS_AUTH=callout``), a RunnerPool whose runner pods (a Deployment's real pods
on the process node) log in with their projected ServiceAccount tokens. A pooled run succeeds (each
attempt's process got its attempt's identity; a crashed process is reported under it too). Then the
test takes the runner pod's token, as a hostile tool in that runner could (the file is readable:
docs/pools.md), and tries with it what the runner's identity may not do, and asks for the identities
of attempts that are not the runner's to run: the server refuses each, and the callout counts why.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest

from compozy_operator.events import (COMMAND_STREAM, POOL_STREAM, EventType, Publisher, command_subject, make_event,
                                     pool_attempt_user, pool_consumer, runner_inbox_prefix)
from compozy_operator.kube import Kube
from compozy_operator.pool_runner import REFUSED_DELIVERIES
from compozy_operator.pools import PoolWork
from compozy_operator.task_executor import LOGIN_REFUSALS
from compozy_operator.testenv.natsserver import NatsServer
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.fakellm import FakeLLM
from tests.helpers import Kubectl, wait_for
from tests.testenv.test_nats_callout import _token

from .conftest import execution_status, wait_finished
from .test_pools import PY_OK, execution, pool, runners
from . import test_pool_agents, test_pools, test_tenant_isolation
from .test_tenant_isolation import _metric

CRASH = "import os\ndef run(input, ctx):\n    os._exit(3)\n"
callout_cluster, tenants = test_tenant_isolation.callout_cluster, test_tenant_isolation.tenants  # fixtures
REASONS = ("ended", "wrong_pool", "not_pooled", "wrong_namespace")


def _workflow(name: str, tasks: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": name},
            "spec": {"tools": tools, "tasks": tasks}}


def _apply(kubectl: Kubectl, namespace: str, *docs: dict[str, Any]) -> None:
    out = kubectl.apply(namespace, *docs)
    assert out.returncode == 0, out.stderr


async def _commands(url: str, *subjects: str) -> list[dict[str, Any]]:
    """The stored commands (as the operator's user: the test's view of what the operator sent)."""
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        return [json.loads((await js.get_last_msg(COMMAND_STREAM, s, direct=True)).data) for s in subjects]
    finally:
        await nc.close()


async def _as_attempt(url: str, token: str, work: dict[str, Any]) -> str | None:
    """Log in as a runner's process asking for ``work``'s identity: the error, or None when granted."""
    try:
        nc = await nats.connect(url, user=pool_attempt_user(work), password=token, allow_reconnect=False,
                                connect_timeout=5, max_reconnect_attempts=0)
    except Exception as e:  # noqa: BLE001 - what nats-py raises for a refused CONNECT
        return f"{type(e).__name__}: {e}"
    await nc.close()
    return None


async def _as_runner(url: str, token: str, namespace: str, pod: str, tries: dict[str, tuple[str, str, bytes]],
                     kicked: asyncio.Event | None = None) -> tuple[dict[str, bool], nats.NATS]:
    """Log in as the runner (its pod's token) and try each (pub|sub|request, subject, body): True when the
    server refused it. The connection is returned open (to see it closed when the pod goes)."""
    errors: list[str] = []

    async def on_error(e: Exception) -> None:
        errors.append(str(e).lower())

    async def on_closed() -> None:
        if kicked is not None:
            kicked.set()

    nc = await nats.connect(url, token=token, allow_reconnect=False, connect_timeout=5, error_cb=on_error,
                            closed_cb=on_closed, inbox_prefix=runner_inbox_prefix(namespace, pod))

    async def refused(subject: str) -> bool:
        await nc.flush(timeout=5)
        for _ in range(40):
            if any("permissions violation" in e and f'"{subject.lower()}"' in e for e in errors):
                return True
            await asyncio.sleep(0.05)
        return False

    got: list[str] = []

    async def collect(msg: Any) -> None:
        got.append(msg.subject)

    result: dict[str, bool] = {}
    for name, (kind, subject, body) in tries.items():
        if kind == "sub":
            await nc.subscribe(subject, cb=collect)
        elif kind == "pub":
            await nc.publish(subject, body)
        else:
            try:
                await nc.request(subject, body, timeout=2)
            except Exception:  # noqa: BLE001 - no answer (refused, or nothing there)
                pass
        result[name] = await refused(subject)
    result["received nothing"] = not got
    return result, nc


def test_a_pooled_run_in_callout_mode_and_what_a_runners_token_cannot_get(
        callout_cluster: tuple[NatsServer, OperatorProcess], kubectl: Kubectl, kube: Kube,
        tenants: tuple[str, str]) -> None:
    server, op = callout_cluster
    ns, other = tenants
    auth = server.callout
    assert auth is not None
    _apply(kubectl, ns, pool("warm"), pool("cold", minReplicas=0))
    _apply(kubectl, other, pool("warm", minReplicas=0))
    tools = [{"id": "ok", "python": PY_OK, "pool": "warm"}, {"id": "crash", "python": CRASH, "pool": "warm"},
             {"id": "in-a-pod", "python": PY_OK}, {"id": "elsewhere", "python": PY_OK, "pool": "missing"}]
    _apply(kubectl, ns, _workflow("mixed", [{"id": "all", "type": "parallel", "strategy": "bestEffort", "tasks": [
        {"id": "a", "tool": "ok", "with": {"n": 1}}, {"id": "crash", "tool": "crash"},
        {"id": "pod", "tool": "in-a-pod", "with": {"n": 2}}]}], tools), execution("mixed-1", "mixed"))
    status = wait_finished(kubectl, ns, "mixed-1", timeout=120)
    t = status["tasks"]
    assert t["a"]["phase"] == "Succeeded" and t["a"]["output"] == {"echo": {"n": 1}}, status
    [runner] = runners(kube, ns)
    name = runner["metadata"]["name"]
    assert t["a"]["podName"] == name  # it ran on the runner, through the callout
    # the crash is reported as the attempt (the runner's own identity may publish nothing)
    assert t["crash"]["phase"] == "Failed" and t["crash"]["error"]["reason"] == "ProcessExited", t["crash"]
    assert t["pod"]["phase"] == "Succeeded" and t["pod"]["podName"] != name

    # a live attempt of a pool that does not exist (it waits in its queue): dispatched, not the runner's
    _apply(kubectl, ns, _workflow("waits", [{"id": "w", "tool": "elsewhere"}], tools), execution("waits-1", "waits"))
    wait_for(lambda: execution_status(kubectl, ns, "waits-1").get("tasks", {}).get("w", {}).get("phase") == "Pending",
             60, "the attempt on pool 'missing' to be dispatched")
    uid = kubectl.ok("get", "wfx", "waits-1", "-n", ns, "-o", "jsonpath={.metadata.uid}")
    ended, in_a_pod, elsewhere = asyncio.run(_commands(
        server.operator_url, command_subject(ns, "mixed-1", "a", 1), command_subject(ns, "mixed-1", "pod", 1),
        command_subject(ns, "waits-1", "w", 1)))
    assert ended["pool"] == "warm" and "pool" not in in_a_pod and elsewhere["pool"] == "missing"

    def work(command: dict[str, Any], **changes: Any) -> dict[str, Any]:
        return {**PoolWork(command["namespace"], command["execution"], command["uid"], command["task"],
                           command["attempt"], command["nonce"]).dump(), **changes}

    token = _token(kube, runner)
    before = op.metrics()
    kept = _metric(before, "compozy_nats_token_reviews_total", '{source="kept"}')
    asks = {"an ended attempt of its own pool": work(ended), "a pod's attempt": work(in_a_pod),
            "a live attempt of another pool": work(elsewhere),
            "an attempt of another namespace": work(elsewhere, namespace=other)}
    answers = {what: asyncio.run(_as_attempt(server.url, token, w)) for what, w in asks.items()}
    assert all(a is not None and "authorization" in a.lower() for a in answers.values()), answers
    after = op.metrics()
    counted = {r: _metric(after, "compozy_nats_auth_total", f'{{result="{r}"}}') -
               _metric(before, "compozy_nats_auth_total", f'{{result="{r}"}}') for r in REASONS}
    assert counted == {"ended": 1, "wrong_pool": 1, "not_pooled": 1, "wrong_namespace": 1}, counted
    # the runner token's review is kept between its logins (one TokenReview, not one per attempt)
    assert _metric(after, "compozy_nats_token_reviews_total", '{source="kept"}') - kept >= 3

    # the runner's own identity, taken by a hostile tool
    forged = make_event(EventType.TASK_SUCCESS, "x", ns, "waits-1", uid, "w", 1, publisher=Publisher.ATTEMPT,
                        output={"pwned": True})
    pull = json.dumps({"batch": 1, "no_wait": True}).encode()
    tries = {
        "pull from another pool": ("req", f"$JS.API.CONSUMER.MSG.NEXT.COMPOZY_POOLS.{pool_consumer(ns, 'cold')}", pull),
        "pull from another namespace's pool": ("req", f"$JS.API.CONSUMER.MSG.NEXT.COMPOZY_POOLS."
                                                      f"{pool_consumer(other, 'warm')}", pull),
        "a forged state event": ("req", forged.subject, forged.model_dump_json().encode()),
        "a command read": ("req", f"$JS.API.DIRECT.GET.COMPOZY_COMMANDS.{command_subject(ns, 'waits-1', 'w', 1)}", b""),
        "a command read by body": ("req", "$JS.API.DIRECT.GET.COMPOZY_COMMANDS",
                                   json.dumps({"last_by_subj": command_subject(ns, "waits-1", "w", 1)}).encode()),
        "its namespace's commands": ("sub", f"compozy.cmd.{ns}.>", b""),
        "another namespace's stops": ("sub", f"compozy.cmd.{other}.*.task.stop.*.*.*", b""),
        "queue work for its pool": ("pub", f"compozy.pool.{ns}.warm", b"{}"),
        "a log line": ("pub", f"compozy.log.{ns}.waits-1.{uid}.task.w.1.x", b"{}"),
    }
    # a control: its own pool's queue answers it (nothing waiting: a 404 status)
    control = {"pull from its pool": ("req", f"$JS.API.CONSUMER.MSG.NEXT.COMPOZY_POOLS.{pool_consumer(ns, 'warm')}",
                                      pull)}

    async def probe() -> tuple[dict[str, bool], dict[str, bool], bool]:
        kicked = asyncio.Event()
        refused, nc = await _as_runner(server.url, token, ns, name, tries, kicked)
        allowed, control_nc = await _as_runner(server.url, token, ns, name, control)
        await control_nc.close()
        # the runner pod goes: the connection its token opened is closed by the callout (a kick)
        await asyncio.to_thread(kube.delete, f"/api/v1/namespaces/{ns}/pods/{name}", {"gracePeriodSeconds": 0})
        try:
            await asyncio.wait_for(kicked.wait(), 30)
        except TimeoutError:
            pass
        closed = kicked.is_set()
        if not nc.is_closed:
            await nc.close()
        # and the kept review went with the pod: the token logs in no more
        again = await _as_attempt(server.url, token, work(elsewhere))
        return refused, allowed, closed and again is not None

    refused, allowed, closed = asyncio.run(probe())
    print("\nrunner token:", json.dumps(refused, indent=1))
    assert all(refused.values()), refused
    assert allowed == {"pull from its pool": False, "received nothing": True}, allowed
    assert closed, "the runner token's connection was not closed (or it logged in again) when its pod was deleted"
    metrics = op.metrics()
    assert _metric(metrics, "compozy_nats_kicks_total", '{result="kicked"}') >= 1, metrics
    count = _metric(metrics, "compozy_nats_auth_duration_seconds_count")
    total = _metric(metrics, "compozy_nats_auth_duration_seconds_sum")
    print(f"callout answers: {count:.0f}, mean {1000 * total / max(count, 1):.1f} ms")

    w = execution_status(kubectl, ns, "waits-1")
    assert w["tasks"]["w"]["phase"] == "Pending" and "pwned" not in json.dumps(w), w


async def _queue(url: str, namespace: str, name: str) -> tuple[int, int]:
    """The pool consumer's messages (waiting, taken and not acknowledged)."""
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        info = await nc.jetstream().consumer_info(POOL_STREAM, pool_consumer(namespace, name))
        return info.num_pending or 0, info.num_ack_pending or 0
    finally:
        await nc.close()


def test_an_attempt_that_ended_in_the_queue_gets_no_identity_and_its_message_is_dropped(
        callout_cluster: tuple[NatsServer, OperatorProcess], kubectl: Kubectl, kube: Kube,
        tenants: tuple[str, str]) -> None:
    """A run cancelled while its pooled attempt waits in the queue (its pool is created only after):
    the runner's process asks for the attempt's identity and is refused (``ended``), so it neither runs
    the tool nor reports anything; the runner puts the message back a few times, then drops it."""
    server, op = callout_cluster
    ns = tenants[0]
    _apply(kubectl, ns, _workflow("late", [{"id": "l", "tool": "ok"}], [{"id": "ok", "python": PY_OK, "pool": "late"}]),
           execution("late-1", "late"))
    wait_for(lambda: execution_status(kubectl, ns, "late-1").get("tasks", {}).get("l", {}).get("phase") == "Pending",
             60, "the attempt to wait in the queue of pool 'late' (which does not exist yet)")
    kubectl.ok("patch", "wfx", "late-1", "-n", ns, "--type=merge", "-p", '{"spec":{"cancel":true}}')
    cancelled = wait_finished(kubectl, ns, "late-1", timeout=60)
    assert cancelled["phase"] == "Cancelled", cancelled
    before = _metric(op.metrics(), "compozy_nats_auth_total", '{result="ended"}')
    _apply(kubectl, ns, pool("late"))
    wait_for(lambda: runners(kube, ns) or None, 60, "a runner of pool 'late'")
    # taken, refused (each delivery: LOGIN_REFUSALS logins), put back, ..., then dropped
    expected = REFUSED_DELIVERIES * LOGIN_REFUSALS

    def refused() -> float:
        return _metric(op.metrics(), "compozy_nats_auth_total", '{result="ended"}') - before
    wait_for(lambda: refused() >= expected or None, 120, f"{expected} refusals of the attempt's identity")
    wait_for(lambda: asyncio.run(_queue(server.operator_url, ns, "late")) == (0, 0), 30,
             "the refused message to be dropped")
    assert refused() == expected  # no delivery after the last
    after = execution_status(kubectl, ns, "late-1")
    assert after["tasks"]["l"]["phase"] == "Cancelled" and after["tasks"]["l"].get("startedAt") is None, after
    assert after["tasks"]["l"].get("error", {}).get("reason") != "ProcessExited"


# The pool's lifecycle in callout mode, as test_pools runs it in token mode: each report below is made
# under an attempt's own identity (a lost runner's RunnerLost by the next process, after the runner's
# container restarted with the same pod; Cancelled and Terminated by the process; a timeout's stop heard
# by the runner's identity).
LIFECYCLE = [test_pools.test_cancel_kills_the_attempts_process, test_pools.test_a_timed_out_attempt_is_killed,
             test_pools.test_a_lost_runner_fails_its_attempt_which_is_retried,
             test_pools.test_a_stopped_runner_lets_its_attempts_finish]


@pytest.mark.parametrize("case", LIFECYCLE, ids=[c.__name__.removeprefix("test_") for c in LIFECYCLE])
def test_the_pool_lifecycle_holds_in_callout_mode(case: Callable[..., None],
                                                  callout_cluster: tuple[NatsServer, OperatorProcess],
                                                  kubectl: Kubectl, kube: Kube, tenants: tuple[str, str],
                                                  tmp_path: Path) -> None:
    case(operator=callout_cluster[1], kubectl=kubectl, kube=kube, namespace=tenants[0], tmp_path=tmp_path)
    assert _metric(callout_cluster[1].metrics(), "compozy_nats_auth_total", '{result="granted"}') >= 2


def test_a_pooled_agent_in_callout_mode(callout_cluster: tuple[NatsServer, OperatorProcess], kubectl: Kubectl,
                                        kube: Kube, tenants: tuple[str, str], llm: FakeLLM) -> None:
    """test_pool_agents' agent (2 model calls, a tool call, the pool's API key) on a runner whose
    attempts log in through the callout."""
    key = f"sk-callout-{secrets.token_hex(12)}"
    kubectl.ok("create", "secret", "generic", "llm-credentials", "-n", tenants[0], f"--from-literal=api-key={key}")
    test_pool_agents.test_an_agent_runs_on_the_pool_with_the_pools_key(
        operator=callout_cluster[1], kubectl=kubectl, kube=kube, namespace=tenants[0], llm=llm, api_key=key)
    assert _metric(callout_cluster[1].metrics(), "compozy_nats_auth_total", '{result="granted"}') >= 2
