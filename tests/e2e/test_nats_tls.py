"""NATS over TLS with a private CA: the operator and the task pods verify the server against it.

A cluster of its own (the session's cluster-wide operator would also take these executions),
whose nats-server serves TLS with a certificate signed by a CA made for this run only."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from compozy_operator.bus import Bus
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl, apply_crds, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
NS = "tls"


@pytest.fixture(scope="module")
def tls_env() -> Iterator[DevEnvironment]:
    with DevEnvironment.start(nats_tls=True) as env:
        yield env


def connect(env: DevEnvironment, ca: str | None) -> str:
    async def go() -> str:
        bus = Bus(env.nats.url, env.nats.token, "tls-probe", ca)
        try:
            await bus.connect(attempts=1)
        except ConnectionError as e:
            return str(e)
        await bus.close()
        return "connected"
    return asyncio.run(go())


def test_operator_and_task_pods_trust_the_private_ca(tls_env: DevEnvironment) -> None:
    assert tls_env.nats.tls is not None and tls_env.nats.url.startswith("tls://")
    ca_file = tls_env.nats.tls.ca_cert
    assert "CERTIFICATE_VERIFY_FAILED" in connect(tls_env, None)  # the system trust store does not know it
    assert connect(tls_env, ca_file.read_text()) == "connected"

    kubectl = Kubectl(tls_env.bindir, tls_env.kubeconfig)
    apply_crds(kubectl)
    kubectl.ok("create", "namespace", NS)
    tls_env.cluster.wait_default_service_account(NS)
    op = OperatorProcess(tls_env, extra_env={"COMPOZY_NATS_CA_FILE": str(ca_file)})
    op.start()
    try:
        kubectl.ok("apply", "-n", NS, "-f", str(EXAMPLES / "hello-workflow.yaml"), "-f", str(EXAMPLES / "hello-run.yaml"))

        def finished() -> dict | None:
            out = kubectl("get", "wfx", "hello-1", "-n", NS, "-o", "json")
            status = json.loads(out.stdout).get("status") or {} if out.returncode == 0 else {}
            return status if status.get("phase") in ("Succeeded", "Failed") else None

        status = wait_for(finished, 60, "hello-1 to finish over TLS", interval=0.2)
        assert status["phase"] == "Succeeded", status  # task pods reported over TLS
        secret = json.loads(kubectl.ok("get", "secret", "compozy-nats", "-n", NS, "-o", "json"))
        assert base64.b64decode(secret["data"]["ca.crt"]).decode() == ca_file.read_text()
        assert base64.b64decode(secret["data"]["url"]).decode().startswith("tls://")
    finally:
        op.stop()
