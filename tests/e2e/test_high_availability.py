"""Leader election and failover on the real API server: one replica orchestrates, a standby takes over
when it dies (after the Lease's duration) or stops (at once), and a run under way ends once.

The session's cluster-wide operator is stopped meanwhile: it would otherwise run these runs itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from compozy_operator.kube import ApiException, Kube
from compozy_operator.leader_election import LeaderElector
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.natsserver import NatsServer
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl, session_operators_stopped, wait_for

from .conftest import OPERATOR_ENV, wait_finished
from .test_workflows import assert_relay_ran_once, relay_under_way


@pytest.fixture(scope="module", autouse=True)
def alone() -> Iterator[None]:
    with session_operators_stopped():
        yield


def holder(kube: Kube, namespace: str, name: str) -> str:
    """The Lease's holder; "" while it does not exist yet."""
    try:
        lease = kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}")
    except ApiException as e:
        if e.status == 404:
            return ""
        raise
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


async def until(predicate, timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` held."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - started


def test_one_leader_a_crashed_one_is_replaced_after_its_lease_and_a_stopped_one_at_once(kube: Kube,
                                                                                       namespace: str) -> None:
    led: list[str] = []

    def elector(name: str, duration: float) -> LeaderElector:
        return LeaderElector(kube, namespace, "ha", name, duration=duration, renew_deadline=duration - 1, retry=0.3)

    async def lead(name: str) -> None:
        led.append(name)

    async def scenario() -> None:
        a, b = elector("a", 4), elector("b", 4)
        run_a = asyncio.create_task(a.run(lambda: lead("a"), lambda: led.append("a lost")))
        await until(lambda: led == ["a"], 10, "a to lead")
        run_b = asyncio.create_task(b.run(lambda: lead("b"), lambda: led.append("b lost")))
        await asyncio.sleep(2)  # b reads the Lease several times meanwhile
        assert led == ["a"] and holder(kube, namespace, "ha") == "a"
        run_a.cancel()  # a dies without a word: the Lease is no longer renewed
        took = await until(lambda: "b" in led, 15, "b to take over")
        assert took >= 3.5, f"b took the Lease {took:.1f}s after a stopped renewing it, before its 4s had passed"
        assert holder(kube, namespace, "ha") == "b"

        c = elector("c", 30)  # a long Lease: only b's release lets c lead soon
        run_c = asyncio.create_task(c.run(lambda: lead("c"), lambda: led.append("c lost")))
        await asyncio.sleep(1)
        run_b.cancel()  # as the operator stops: renewals first, then the Lease handed back
        await b.release()
        took = await until(lambda: "c" in led, 10, "c to take the released Lease")
        assert took < 10
        lease = kube.get(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/ha")["spec"]
        assert lease["holderIdentity"] == "c" and lease["leaseTransitions"] == 2  # a -> b -> c
        run_c.cancel()
        assert "a lost" not in led and "b lost" not in led

    asyncio.run(scenario())


def test_a_leader_that_cannot_renew_stops_leading(kube: Kube, namespace: str) -> None:
    """Someone else's write to the Lease (here: another holder put in by hand) makes the leader's
    renewals conflict; after its renew deadline it gives up (the operator then exits)."""
    events: list[str] = []

    async def scenario() -> None:
        a = LeaderElector(kube, namespace, "taken", "a", duration=6, renew_deadline=2, retry=0.3)

        async def lead() -> None:
            events.append("lead")

        task = asyncio.create_task(a.run(lead, lambda: events.append("lost")))
        await until(lambda: events == ["lead"], 10, "a to lead")
        path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/taken"
        lease = kube.get(path)
        lease["spec"] |= {"holderIdentity": "intruder", "leaseDurationSeconds": 600}
        kube.request("PUT", path, lease)
        await until(lambda: "lost" in events, 15, "a to stop leading")
        await task
        assert not a.leading and holder(kube, namespace, "taken") == "intruder"

    asyncio.run(scenario())


def test_the_standby_takes_over_a_killed_leader_and_the_run_ends_once(devenv: DevEnvironment, kube: Kube,
                                                                       kubectl: Kubectl, namespace: str,
                                                                       tmp_path: Path) -> None:
    """Two operator processes on one Lease (and a NATS of their own); the leader is killed (SIGKILL)
    while a task runs; the standby takes the Lease, takes the run up, and it ends Succeeded with every
    task run exactly once."""
    nats = NatsServer(devenv.bindir, tmp_path / "nats").start()
    env = {**OPERATOR_ENV, "COMPOZY_NAMESPACES": namespace, "COMPOZY_NATS_URL": nats.url,
           "COMPOZY_NATS_TOKEN": nats.token, "COMPOZY_POD_NAMESPACE": namespace, "COMPOZY_LEADER_ELECTION": "true",
           "COMPOZY_LEADER_LEASE": "operator", "COMPOZY_LEADER_LEASE_SECONDS": "6",
           "COMPOZY_LEADER_RENEW_DEADLINE_SECONDS": "4", "COMPOZY_LEADER_RETRY_SECONDS": "0.5"}
    ops = {name: OperatorProcess(devenv, log_path=tmp_path / f"operator-{name}.log",
                                 extra_env={**env, "COMPOZY_POD_NAME": f"op-{name}"}) for name in ("a", "b")}
    try:
        ops["a"].start()
        wait_for(lambda: holder(kube, namespace, "operator").startswith("op-a_"), 30, "op-a to lead")
        ops["b"].start()
        assert "standby" in ops["b"].readyz()[1]
        run = relay_under_way(kubectl, namespace, "relay")
        ops["a"].kill()
        assert_relay_ran_once(wait_finished(kubectl, namespace, run, 120))
        assert holder(kube, namespace, "operator").startswith("op-b_")
        assert "compozy_leader 1.0" in ops["b"].metrics()
        assert "took up" in (tmp_path / "operator-b.log").read_text()
    finally:
        for op in ops.values():
            op.stop()
        nats.stop()
