"""The operator as a real process against the local cluster and NATS."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
from nats.js import JetStreamContext

from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.fakellm import FakeLLM
from tests.helpers import SESSION_OPERATORS, Kubectl, apply_crds, wait_for

T = TypeVar("T")


def jetstream(devenv: Any, op: Callable[[JetStreamContext], Awaitable[T]]) -> T:
    """``op`` on a JetStream context of a fresh raw connection to the test NATS."""
    async def run() -> T:
        nc = await nats.connect(devenv.nats.url, token=devenv.nats.token)
        try:
            return await op(nc.jetstream())
        finally:
            await nc.close()

    return asyncio.run(run())

TASK_IMAGE = "compozy/compozy-operator:test"
# the session operator's settings (tests that run an operator of their own use them too)
OPERATOR_ENV = {"COMPOZY_TASK_IMAGE": TASK_IMAGE, "COMPOZY_POD_START_TIMEOUT_SECONDS": "3",
                "COMPOZY_NODE_LOST_SECONDS": "5", "COMPOZY_CONFIG_ERROR_GRACE_SECONDS": "5"}


@pytest.fixture(scope="session")
def kubectl(devenv: DevEnvironment) -> Kubectl:
    k = Kubectl(devenv.bindir, devenv.kubeconfig)
    apply_crds(k)
    return k


@pytest.fixture(scope="session")
def operator(devenv: DevEnvironment, kubectl: Kubectl) -> Iterator[OperatorProcess]:
    op = OperatorProcess(devenv, extra_env=OPERATOR_ENV, webhook=True)  # admission webhook registered (by URL)
    op.start()
    SESSION_OPERATORS.append(op)
    yield op
    SESSION_OPERATORS.remove(op)
    op.stop()


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLM]:
    """The stand-in LLM endpoint (OpenAI and Anthropic protocols) of a test module."""
    server = FakeLLM()
    yield server
    server.close()


@pytest.fixture
def api_key(kubectl: Kubectl, namespace: str) -> str:
    """A random API key in the test namespace's Secret llm-credentials (key api-key)."""
    key = f"sk-test-{secrets.token_hex(12)}"
    kubectl.ok("create", "secret", "generic", "llm-credentials", "-n", namespace, f"--from-literal=api-key={key}")
    return key


@contextlib.contextmanager
def instead_of(operator: OperatorProcess, devenv: DevEnvironment, log_path: Path,
               **env: str) -> Iterator[OperatorProcess]:
    """An operator a test may stop, kill and start, with the session's settings plus ``env``; the
    session's operator is stopped meanwhile and started again after."""
    operator.stop()
    op = OperatorProcess(devenv, extra_env={**OPERATOR_ENV, **env}, log_path=log_path)
    op.start()
    try:
        yield op
    finally:
        op.stop()
        operator.start()


def crashed_at(op: OperatorProcess, point: str) -> None:
    """Wait for ``op`` (armed at failpoint ``point``) to die, and check it died there."""
    assert op.proc is not None
    wait_for(lambda: not op.proc.alive(), 60, f"the operator to crash at failpoint {point}")  # type: ignore[union-attr]
    assert op.log_path is not None and f"failpoint {point} fired" in op.log_path.read_text()


def execution_status(kubectl: Kubectl, namespace: str, name: str) -> dict:
    import json

    out = kubectl("get", "wfx", name, "-n", namespace, "-o", "json")
    return json.loads(out.stdout).get("status") or {} if out.returncode == 0 else {}


def wait_finished(kubectl: Kubectl, namespace: str, name: str, timeout: float = 60) -> dict:
    def done() -> dict | None:
        st = execution_status(kubectl, namespace, name)
        return st if st.get("phase") in ("Succeeded", "Failed", "TimedOut", "Cancelled") else None

    return wait_for(done, timeout, f"execution {namespace}/{name} to finish", interval=0.2)
