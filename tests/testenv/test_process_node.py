"""The process node against the real control plane: scheduling, status, env, deletion, GC."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from compozy_operator.testenv import DevEnvironment, Kube

from tests.helpers import (IMAGE, container_status, create_pod, get_pod, pid_alive, pid_of, pod_manifest, wait_for,
                      wait_phase)


def kubectl(env: DevEnvironment, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(env.bindir / "kubectl"), "--kubeconfig", str(env.kubeconfig), *args],
                          capture_output=True, text=True, timeout=60)


def test_kubectl_sees_a_ready_process_node(devenv: DevEnvironment) -> None:
    out = kubectl(devenv, "get", "nodes", "-o", "json")
    assert out.returncode == 0, out.stderr
    nodes = {n["metadata"]["name"]: n for n in json.loads(out.stdout)["items"]}
    ready = {c["type"]: c["status"] for c in nodes["process-node-1"]["status"]["conditions"]}
    assert ready["Ready"] == "True"
    table = kubectl(devenv, "get", "nodes").stdout
    assert "process-node-1   Ready" in table


def test_rbac_is_enforced(devenv: DevEnvironment, kube: Kube, namespace: str) -> None:
    kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"}})
    kube.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]})
    kube.create(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}]})
    who = f"--as=system:serviceaccount:{namespace}:reader"

    def can(*args: str) -> str:
        return kubectl(devenv, "auth", "can-i", who, *args).stdout.strip()

    assert wait_for(lambda: can("list", "pods", "-n", namespace) == "yes", 10, "the RoleBinding to apply")
    assert can("delete", "pods", "-n", namespace) == "no"
    assert can("list", "pods", "-n", "default") == "no"
    assert can("list", "secrets", "-A") == "no"
    assert kubectl(devenv, "auth", "can-i", "delete", "nodes").stdout.strip() == "yes"  # the admin


def test_deployment_pod_is_scheduled_and_really_runs(devenv: DevEnvironment, kube: Kube, namespace: str) -> None:
    kube.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sleeper"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "sleeper"}}, "template": {
            "metadata": {"labels": {"app": "sleeper"}},
            "spec": {"containers": [{"name": "main", "image": IMAGE,
                                     "command": ["python", "-c", "import time; time.sleep(600)"]}]}}}})

    def running_pod() -> dict | None:
        pods = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app=sleeper")["items"]
        ok = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        return ok[0] if ok else None

    pod = wait_for(running_pod, 30, "a Running pod of the Deployment")
    assert pod["spec"]["nodeName"] == "process-node-1"
    events = kube.get(f"/api/v1/namespaces/{namespace}/events",
                      fieldSelector=f"involvedObject.name={pod['metadata']['name']}")["items"]
    scheduled = [e for e in events if e["reason"] == "Scheduled"]
    assert scheduled and scheduled[0]["source"].get("component", scheduled[0].get("reportingComponent")) \
        == "default-scheduler"
    pid = pid_of(pod)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"import time; time.sleep(600)" in cmdline
    ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert ready["Ready"] == "True" and pod["status"]["podIP"] == "127.0.0.1"


def test_exit_code_and_termination_message(kube: Kube, namespace: str) -> None:
    create_pod(kube, namespace, pod_manifest(
        "exit3", ["sh", "-c", 'echo "it went wrong" > "$COMPOZY_TERMINATION_LOG"; exit 3']))
    create_pod(kube, namespace, pod_manifest(
        "fallback", ["sh", "-c", "echo last words on stderr >&2; exit 7"],
        terminationMessagePolicy="FallbackToLogsOnError"))
    pod = wait_phase(kube, namespace, "exit3", "Failed", "Succeeded")
    term = container_status(pod)["state"]["terminated"]
    assert (pod["status"]["phase"], term["exitCode"], term["reason"]) == ("Failed", 3, "Error")
    assert term["message"].strip() == "it went wrong"
    term = container_status(wait_phase(kube, namespace, "fallback", "Failed"))["state"]["terminated"]
    assert term["exitCode"] == 7 and term["message"].strip() == "last words on stderr"


def test_secret_and_field_refs_reach_the_process(kube: Kube, namespace: str) -> None:
    kube.create(f"/api/v1/namespaces/{namespace}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}})
    env = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
    ]
    create_pod(kube, namespace, pod_manifest(
        "envcheck", ["sh", "-c", 'echo "$TOKEN $POD_NAME $POD_NS" > "$COMPOZY_TERMINATION_LOG"'], env=env))
    pod = wait_phase(kube, namespace, "envcheck", "Succeeded", "Failed")
    assert container_status(pod)["state"]["terminated"]["message"].strip() == f"s3cr3t envcheck {namespace}"


def test_missing_secret_waits_then_starts(kube: Kube, namespace: str) -> None:
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "later", "key": "token"}}}]
    create_pod(kube, namespace, pod_manifest("waiter", ["sh", "-c", 'test "$TOKEN" = ok'], env=env))

    def config_error() -> str | None:
        pod = get_pod(kube, namespace, "waiter")
        waiting = ((pod or {}).get("status", {}).get("containerStatuses") or [{}])[0].get("state", {}).get("waiting")
        return waiting and waiting.get("reason") == "CreateContainerConfigError" and waiting["message"]

    assert wait_for(config_error, 15, "CreateContainerConfigError") == 'secret "later" not found'
    kube.create(f"/api/v1/namespaces/{namespace}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "later"}, "stringData": {"token": "ok"}})
    assert wait_phase(kube, namespace, "waiter", "Succeeded", "Failed")["status"]["phase"] == "Succeeded"


def test_service_account_credentials_work_like_in_cluster_config(kube: Kube, namespace: str) -> None:
    script = (
        "import os\n"
        "from kubernetes import client, config\n"
        "config.load_kube_config()\n"
        "review = client.AuthenticationV1Api().create_self_subject_review({})\n"
        "open(os.environ['COMPOZY_TERMINATION_LOG'], 'w').write(review.status.user_info.username)\n"
    )
    create_pod(kube, namespace, pod_manifest("whoami", [sys.executable, "-c", script],
                                             terminationMessagePolicy="FallbackToLogsOnError"))
    pod = wait_phase(kube, namespace, "whoami", "Succeeded", "Failed", timeout=60)
    term = container_status(pod)["state"]["terminated"]
    assert term["message"] == f"system:serviceaccount:{namespace}:default", term


def test_deleting_a_pod_kills_its_process(kube: Kube, namespace: str) -> None:
    # The second pod ignores SIGTERM, so only the SIGKILL after its grace period ends it.
    create_pod(kube, namespace, pod_manifest("polite", ["sleep", "600"]))
    create_pod(kube, namespace, pod_manifest("stubborn", ["sh", "-c", "trap '' TERM; sleep 600 & wait; sleep 600"]))
    pids = {n: pid_of(wait_phase(kube, namespace, n, "Running")) for n in ("polite", "stubborn")}
    for name in pids:
        kube.delete(f"/api/v1/namespaces/{namespace}/pods/{name}", {"gracePeriodSeconds": 2})
    for name, pid in pids.items():
        wait_for(lambda n=name: get_pod(kube, namespace, n) is None, 20, f"pod {name} to be removed")
        assert not pid_alive(pid), f"process {pid} of pod {name} still runs"


def test_deleting_the_owner_garbage_collects_pods(kube: Kube, namespace: str) -> None:
    kube.create(f"/apis/apps/v1/namespaces/{namespace}/replicasets", {
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "rs"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "rs"}}, "template": {
            "metadata": {"labels": {"app": "rs"}},
            "spec": {"terminationGracePeriodSeconds": 2,
                     "containers": [{"name": "main", "image": IMAGE, "command": ["sleep", "600"]}]}}}})

    def running() -> list[dict] | None:
        pods = kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app=rs")["items"]
        ok = [p for p in pods if (p.get("status") or {}).get("phase") == "Running"]
        return ok if len(ok) == 2 else None

    pids = [pid_of(p) for p in wait_for(running, 30, "two Running pods")]
    kube.delete(f"/apis/apps/v1/namespaces/{namespace}/replicasets/rs", {"propagationPolicy": "Background"})
    wait_for(lambda: not kube.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector="app=rs")["items"], 30,
             "the garbage collector to delete the pods")
    assert not any(pid_alive(p) for p in pids)


def test_foreign_image_fails_with_a_clear_reason(kube: Kube, namespace: str) -> None:
    create_pod(kube, namespace, pod_manifest("nginx", ["nginx"], image="nginx:1.27"))
    pod = wait_phase(kube, namespace, "nginx", "Failed")
    assert pod["status"]["reason"] == "ImageNotRunnable"
    assert "image not runnable on the process node: nginx:1.27" in pod["status"]["message"]
    term = container_status(pod)["state"]["terminated"]
    assert term["reason"] == "ImageNotRunnable"


def test_restart_policy_always_restarts_with_backoff(kube: Kube, namespace: str) -> None:
    create_pod(kube, namespace, pod_manifest("crasher", ["sh", "-c", "exit 1"], restart="Always"))

    def restarted() -> dict | None:
        pod = get_pod(kube, namespace, "crasher")
        statuses = (pod or {}).get("status", {}).get("containerStatuses") or [{}]
        return statuses[0] if statuses[0].get("restartCount", 0) >= 2 else None

    status = wait_for(restarted, 30, "two restarts")
    assert status["lastState"]["terminated"]["exitCode"] == 1
