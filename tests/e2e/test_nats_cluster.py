"""A JetStream cluster of three nats-servers with the streams kept in three copies
(COMPOZY_STREAM_REPLICAS=3, the chart's nats.streams.replicas): a NATS node killed while a run goes
on loses nothing, and the run ends once.

The session's cluster-wide operator is stopped meanwhile (it would run this namespace's runs)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from compozy_operator.events import COMMAND_STREAM, LOG_STREAM, OUTPUT_BUCKET, STATE_STREAM
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.natsserver import NatsCluster
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl, session_operators_stopped

from .conftest import OPERATOR_ENV, wait_finished
from .test_workflows import assert_relay_ran_once, relay_under_way

STREAMS = (STATE_STREAM, COMMAND_STREAM, LOG_STREAM, f"OBJ_{OUTPUT_BUCKET}")


@pytest.fixture(scope="module", autouse=True)
def alone() -> Iterator[None]:
    with session_operators_stopped():
        yield


def streams(cluster: NatsCluster) -> dict[str, tuple[int, str, int]]:
    """Each stream's (configured replicas, leader, replicas seen current besides the leader)."""
    async def ask() -> dict[str, tuple[int, str, int]]:
        nc = await nats.connect(cluster.url, token=cluster.token)
        try:
            js = nc.jetstream()
            out = {}
            for name in STREAMS:
                info = await js.stream_info(name)
                peers = (info.cluster.replicas or []) if info.cluster else []
                out[name] = (info.config.num_replicas or 1, info.cluster.leader if info.cluster else "",
                             sum(1 for p in peers if p.current))
            return out
        finally:
            await nc.close()
    return asyncio.run(ask())


def test_a_lost_nats_node_loses_nothing_with_three_copies(devenv: DevEnvironment, kubectl: Kubectl, namespace: str,
                                                         tmp_path: Path) -> None:
    cluster = NatsCluster(devenv.bindir, tmp_path / "nats").start()
    op = OperatorProcess(devenv, log_path=tmp_path / "operator.log", extra_env={
        **OPERATOR_ENV, "COMPOZY_NAMESPACES": namespace, "COMPOZY_NATS_URL": cluster.url,
        "COMPOZY_NATS_TOKEN": cluster.token, "COMPOZY_STREAM_REPLICAS": "3"})
    try:
        op.start()
        before = streams(cluster)
        assert all(replicas == 3 for replicas, _, _ in before.values()), before
        run = relay_under_way(kubectl, namespace, "steady", seconds=4)
        # the node leading the state stream, unless it is the one clients were given (new task pods
        # connect there); else another: a replica of every stream is lost either way
        leader = before[STATE_STREAM][1]
        victim = next(n for n in cluster.nodes[1:] if n.name == leader) if leader != "n0" else cluster.nodes[2]
        victim.stop()
        assert_relay_ran_once(wait_finished(kubectl, namespace, run, 120))
        after = streams(cluster)
        assert all(leader != victim.name for _, leader, _ in after.values()), after
        jsz = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{cluster.nodes[0].monitor_port}/jsz",  # noqa: S310
                                                 timeout=5).read())
        assert jsz["meta_cluster"]["cluster_size"] == 3
    finally:
        op.stop()
        cluster.stop()
