"""Session-wide local cluster and NATS; a fresh namespace per test.

Nothing here is faked: the fixtures start the real kube-apiserver, etcd, controller-manager,
scheduler and nats-server built by hack/testenv/build.sh (built on first use), plus one
process node standing in for the kubelet.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from compozy_operator.testenv import DevEnvironment, Kube


@pytest.fixture(scope="session")
def devenv() -> Iterator[DevEnvironment]:
    env = DevEnvironment.start(nodes=1)
    try:
        yield env
    finally:
        env.stop()


@pytest.fixture(scope="session")
def kubeconfig(devenv: DevEnvironment) -> Path:
    return devenv.kubeconfig


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path) -> Iterator[client.ApiClient]:
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    with client.ApiClient(cfg) as api:
        yield api


@pytest.fixture(scope="session")
def kube(devenv: DevEnvironment) -> Iterator[Kube]:
    k = devenv.kube()
    yield k
    k.close()


@pytest.fixture(scope="session")
def nats_url(devenv: DevEnvironment) -> str:
    return devenv.nats.url


@pytest.fixture(scope="session")
def nats_token(devenv: DevEnvironment) -> str:
    return devenv.nats.token


@pytest.fixture
def namespace(request: pytest.FixtureRequest, devenv: DevEnvironment, kube: Kube) -> Iterator[str]:
    """A new namespace, ready for pods (its default ServiceAccount exists), deleted afterwards."""
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base}-{uuid.uuid4().hex[:5]}"
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    devenv.cluster.wait_default_service_account(name)
    yield name
    kube.delete(f"/api/v1/namespaces/{name}")
