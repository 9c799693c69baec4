"""helm install in callout mode (the chart's default auth) on the local cluster, for real.

An external callout-mode nats-server (the chart's bundled one cannot run on the process node: its
image is not this project's; tests/testenv/test_nats_callout.py runs the real server with the
chart's rendered configuration instead). As docs/security.md says for an external NATS, the callout
Secret is made first with the server's keys. The operator pod then reads it, logs in as its own
NATS user, answers the server's authorization requests, and every task pod of the example run logs
in with its own ServiceAccount token. A cluster of its own, like test_install.py.
"""

from __future__ import annotations

import base64
import re
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from compozy_operator.nats_auth.keys import secret_manifest
from compozy_operator.testenv import DevEnvironment, Kube
from compozy_operator.testenv.helm import Helm, install, local_values, operator_pods
from compozy_operator.testenv.natsserver import NatsServer
from compozy_operator.testenv.workdir import free_port
from tests.helpers import Kubectl

from .conftest import operator_log, run_example, sets
from .test_rbac import can_i

RELEASE = "callout"
SYSTEM = "compozy-system"
APPS = "apps"
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
SECRET = "callout-keys"
SA = f"system:serviceaccount:{SYSTEM}:{RELEASE}-compozy-operator"


@dataclass
class Installed:
    env: DevEnvironment
    kube: Kube
    kubectl: Kubectl
    nats: NatsServer
    port: int

    def operator_log(self) -> str:
        return operator_log(self.env)


@pytest.fixture(scope="module")
def release() -> Iterator[Installed]:
    env = DevEnvironment.start()
    kube = env.kube()
    server = NatsServer(env.bindir, env.workdir / "callout-nats", callout=True).start()
    assert server.callout is not None
    try:
        for ns in (SYSTEM, APPS):
            kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": ns, "labels": RESTRICTED}})
        kube.create(f"/api/v1/namespaces/{SYSTEM}/secrets", secret_manifest(server.callout.keys, SECRET, SYSTEM))
        port = free_port()
        install(env, Helm(env), RELEASE, SYSTEM, *sets(
            f"nats.external.url={server.url}", "nats.auth.mode=callout", f"nats.auth.callout.secretName={SECRET}",
            "watch.mode=namespaced", f"watch.namespaces={{{APPS}}}", f"operator.httpPort={port}"),
            values=local_values(env))
        yield Installed(env, kube, Kubectl(env.bindir, env.kubeconfig), server, port)
    finally:
        kube.close()
        server.stop()
        env.stop()


def _run(inst: Installed, name: str) -> dict:
    return run_example(inst.kubectl, inst.kube, APPS, name, 90)


def _metric(port: int, name: str, labels: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:  # noqa: S310 - loopback
        text = r.read().decode()
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def test_task_pods_log_in_with_their_own_identity(release: Installed) -> None:
    pod = operator_pods(release.kube, SYSTEM, RELEASE)[0]
    env = {e["name"]: e for e in pod["spec"]["containers"][0]["env"]}
    assert env["COMPOZY_NATS_AUTH"]["value"] == "callout" and "COMPOZY_NATS_TOKEN" not in env
    started = time.monotonic()
    status = _run(release, "hello-1")
    print(f"\nexample workflow through the callout: {time.monotonic() - started:.1f}s")
    assert status["phase"] == "Succeeded", status
    assert status["output"] == {"words": 9, "greeting": "HELLO, WORLD: YOUR TEXT HAS 9 WORDS"}
    granted = _metric(release.port, "compozy_nats_auth_total", '{result="granted"}')
    assert granted >= len(status["tasks"]), f"each task pod logged in through the callout ({granted} grants)"

    # what task pods get: the URL alone (no token, no password)
    data = release.kube.get(f"/api/v1/namespaces/{APPS}/secrets/compozy-nats")["data"]
    assert {k: base64.b64decode(v).decode() for k, v in data.items()} == {"url": release.nats.url}
    keys = release.nats.callout.keys  # type: ignore[union-attr]
    log = release.operator_log()
    assert "Forbidden" not in log and " 403" not in log, "the chart's RBAC must cover every call"
    for secret in (keys.operator_password, keys.callout_password, keys.issuer_seed):
        assert secret not in log, "a NATS secret in the operator's log"


def test_the_operators_rights_in_callout_mode(release: Installed) -> None:
    kubectl = release.kubectl
    assert can_i(kubectl, SA, "create", "tokenreviews.authentication.k8s.io")
    assert can_i(kubectl, SA, "get", f"secrets/{SECRET}", namespace=SYSTEM)
    for verb, resource in (("get", "secrets/another"), ("list", "secrets"), ("watch", "secrets"),
                           ("update", f"secrets/{SECRET}"), ("delete", f"secrets/{SECRET}")):
        assert not can_i(kubectl, SA, verb, resource, namespace=SYSTEM), f"{verb} {resource}"
    assert not can_i(kubectl, SA, "get", f"secrets/{SECRET}", namespace=APPS)
    assert not can_i(kubectl, SA, "create", "serviceaccounts/token", namespace=APPS)
