"""helm install -> operator Ready (a pod on the process node) -> workflow Succeeded -> helm upgrade
-> helm uninstall, under the restricted Pod Security Standard, with NATS token auth.

These tests get a cluster of their own: the session cluster may have a cluster-wide operator of
the e2e tests running, which would also reconcile the executions here. The tests of this module
run in order (install, run, upgrade, uninstall).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import nats
import pytest

from compozy_operator.testenv import DevEnvironment, Kube
from compozy_operator.testenv.helm import Helm, install, operator_pods, put_token_secret, wait_operator_ready
from compozy_operator.testenv.workdir import free_port
from tests.helpers import Kubectl, wait_for

from .conftest import CHART, operator_log, run_example, sets

RELEASE = "compozy"
SYSTEM = "compozy-system"   # the operator's namespace
APPS = "apps"               # the namespace it watches (namespaced mode)
RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted"}
FULLNAME = f"{RELEASE}-operator"  # the chart's <release>-compozy-operator, shortened since the name contains it


@dataclass
class Installed:
    env: DevEnvironment
    helm: Helm
    kube: Kube
    kubectl: Kubectl
    port: int
    install_seconds: float
    api_port: int

    def operator_log(self) -> str:
        return operator_log(self.env)


@pytest.fixture(scope="module")
def release() -> Iterator[Installed]:
    env = DevEnvironment.start()
    kube = env.kube()
    try:
        for ns in (SYSTEM, APPS):
            kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": ns, "labels": RESTRICTED}})
        helm, port, api_port = Helm(env), free_port(), free_port()
        started = time.monotonic()
        install(env, helm, RELEASE, SYSTEM, *sets("fullnameOverride=" + FULLNAME, "watch.mode=namespaced",
                                                  f"watch.namespaces={{{APPS}}}", f"operator.httpPort={port}",
                                                  f"api.port={api_port}"))
        yield Installed(env, helm, kube, Kubectl(env.bindir, env.kubeconfig), port, time.monotonic() - started,
                        api_port)
    finally:
        kube.close()
        env.stop()


def _run(inst: Installed, name: str) -> dict:
    return run_example(inst.kubectl, inst.kube, APPS, name)


def test_install_then_the_example_workflow_succeeds(release: Installed) -> None:
    pod = operator_pods(release.kube, SYSTEM, RELEASE)[0]
    assert pod["spec"]["nodeName"] == "process-node-1" and pod["spec"]["serviceAccountName"] == FULLNAME
    print(f"\nhelm install -> operator Ready: {release.install_seconds:.1f}s")
    t0 = time.monotonic()
    status = _run(release, "hello-1")
    print(f"example workflow: {time.monotonic() - t0:.1f}s")
    assert status["phase"] == "Succeeded", status
    assert status["output"] == {"words": 9, "greeting": "HELLO, WORLD: YOUR TEXT HAS 9 WORDS"}
    log = release.operator_log()
    assert "Forbidden" not in log and " 403" not in log, "the chart's RBAC must cover every call"


def test_restricted_pod_security_admits_operator_and_task_pods(release: Installed) -> None:
    labels = release.kube.get(f"/api/v1/namespaces/{APPS}")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # the operator pod (restricted namespace) runs; the task pods of hello-1 were admitted and ran
    status = release.kube.get(f"/apis/compozy.dev/v1alpha1/namespaces/{APPS}/workflowexecutions/hello-1")["status"]
    assert all(t["phase"] == "Succeeded" and t["podName"] for t in status["tasks"].values()), status["tasks"]
    # ... while the apiserver does enforce the profile: a pod without the securityContext is refused
    loose = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "loose"},
             "spec": {"containers": [{"name": "c", "image": "compozy/compozy-operator:dev", "args": ["--help"]}]}}
    out = release.kubectl("apply", "-n", APPS, "-f", "-", stdin=json.dumps(loose))
    assert out.returncode != 0 and 'violates PodSecurity "restricted:latest"' in out.stderr, out.stderr


def test_the_charts_operator_serves_the_api(release: Installed) -> None:
    """api.Service with the chart's RBAC (namespaced mode): TokenReview, SubjectAccessReview and the
    create all succeed for a caller allowed to create runs in the watched namespace."""
    release.kubectl.ok("create", "serviceaccount", "ci", "-n", APPS)
    release.kubectl.ok("create", "role", "ci", "-n", APPS, "--verb=create,get",
                       "--resource=workflowexecutions.compozy.dev")
    release.kubectl.ok("create", "rolebinding", "ci", "-n", APPS, "--role=ci", f"--serviceaccount={APPS}:ci")
    token = release.kubectl.ok("create", "token", "ci", "-n", APPS).strip()
    body = json.dumps({"input": {"name": "api", "text": "one two"}, "name": "via-api"}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{release.api_port}/api/v1/namespaces/{APPS}/workflows/hello/"
                                     "executions", data=body, method="POST", headers={
                                         "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as r:  # noqa: S310
        assert r.status == 201 and json.loads(r.read())["name"] == "via-api"
    status = wait_for(lambda: (s := release.kube.get(f"/apis/compozy.dev/v1alpha1/namespaces/{APPS}/workflowexecutions/"
                                                     "via-api").get("status") or {}).get("phase") == "Succeeded" and s,
                      60, "the run started through the API to succeed")
    assert status["output"]["words"] == 2
    assert "Forbidden" not in release.operator_log()


def _readyz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:  # noqa: S310
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def test_nats_refuses_a_client_without_the_token_and_accepts_the_charts(release: Installed) -> None:
    # the Secret the operator keeps for task pods in the watched namespace carries the chart's token
    data = release.kube.get(f"/api/v1/namespaces/{APPS}/secrets/compozy-nats")["data"]
    url, token = (base64.b64decode(data[k]).decode() for k in ("url", "token"))
    assert url == release.env.nats.url

    async def connect(token: str | None) -> list[str]:
        nc = await nats.connect(url, token=token, connect_timeout=3, max_reconnect_attempts=0, allow_reconnect=False)
        try:
            return [s.config.name async for s in _streams(nc)]
        finally:
            await nc.close()

    with pytest.raises(Exception, match="Authorization Violation|no servers available"):
        asyncio.run(connect(None))
    assert "COMPOZY_STATE" in asyncio.run(connect(token))
    assert _readyz(release.port) == (200, "ready")


async def _streams(nc: nats.NATS):  # type: ignore[no-untyped-def]
    for info in await nc.jetstream().streams_info():
        yield info


def test_an_operator_with_a_wrong_token_is_not_ready(release: Installed) -> None:
    ns, port = "wrong-token", free_port()
    release.kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    put_token_secret(release.kube, ns, "not-the-token", name="bad-token")
    release.helm.ok("install", "wrong", CHART,
                    "-n", ns, *sets("image.repository=compozy/compozy-operator", "image.tag=dev", "nats.mode=external",
                                    f"nats.external.url={release.env.nats.url}", "nats.auth.existingSecret=bad-token",
                                    "watch.mode=namespaced", f"operator.httpPort={port}",
                                    f"api.port={free_port()}"))
    try:
        _, why = wait_for(lambda: (r := _readyz(port))[0] == 503 and "Authorization" in r[1] and r, 60,
                          "the operator to report the refused token")
        assert "NATS at" in why and "Authorization Violation" in why, why
    finally:
        release.helm("uninstall", "wrong", "-n", ns, "--wait")


def test_upgrade_with_a_changed_value_rolls_the_operator(release: Installed) -> None:
    before = wait_operator_ready(release.kube, SYSTEM, RELEASE)
    release.helm.ok("upgrade", RELEASE, CHART,
                    "-n", SYSTEM, "--reuse-values", *sets("operator.statusDeferSeconds=1"), "--wait", "--timeout", "120s")
    after = wait_operator_ready(release.kube, SYSTEM, RELEASE)
    assert after["metadata"]["uid"] != before["metadata"]["uid"]
    env = {e["name"]: e.get("value") for e in after["spec"]["containers"][0]["env"]}
    assert env["COMPOZY_STATUS_DEFER_SECONDS"] == "1"
    assert [p["metadata"]["uid"] for p in operator_pods(release.kube, SYSTEM, RELEASE)] == [after["metadata"]["uid"]], \
        "Recreate: the old operator is gone"
    assert _run(release, "hello-2")["phase"] == "Succeeded"


def test_uninstall_removes_the_operator_and_keeps_crds_and_user_resources(release: Installed) -> None:
    release.helm.ok("uninstall", RELEASE, "-n", SYSTEM, "--wait")
    wait_for(lambda: not operator_pods(release.kube, SYSTEM, RELEASE), 30, "the operator pod to be gone")
    k = release.kubectl
    for obj in (f"deployment/{FULLNAME}", f"serviceaccount/{FULLNAME}", f"service/{FULLNAME}"):
        assert k("get", "-n", SYSTEM, obj).returncode != 0, f"{obj} left behind"
    assert k("get", "-n", APPS, f"role/{FULLNAME}").returncode != 0
    assert k("get", f"clusterrole/{SYSTEM}-{FULLNAME}").returncode != 0
    k.ok("get", "crd", "workflows.compozy.dev", "workflowexecutions.compozy.dev")
    names = k.ok("get", "wfx", "-n", APPS, "-o", "name").split()
    assert names == ["workflowexecution.compozy.dev/hello-1", "workflowexecution.compozy.dev/hello-2",
                     "workflowexecution.compozy.dev/via-api"]
    k.ok("get", "czwf", "hello", "-n", APPS)
