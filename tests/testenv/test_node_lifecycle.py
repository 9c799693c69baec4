"""More than one process node; a stopped node goes NotReady; a restarted node neither loses nor
duplicates its pods."""

from __future__ import annotations

from compozy_operator.testenv import DevEnvironment, Kube

from tests.helpers import container_status, create_pod, get_pod, pid_alive, pid_of, pod_manifest, wait_for, wait_phase


def node_ready(kube: Kube, name: str) -> str:
    node = kube.get(f"/api/v1/nodes/{name}")
    return {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]


def test_second_node_runs_pods_and_goes_not_ready_when_stopped(devenv: DevEnvironment, kube: Kube,
                                                              namespace: str) -> None:
    devenv.start_node("process-node-extra")
    try:
        assert node_ready(kube, "process-node-extra") == "True"
        create_pod(kube, namespace, pod_manifest("on-extra", ["sleep", "600"], node="process-node-extra"))
        pod = wait_phase(kube, namespace, "on-extra", "Running")
        assert pod["spec"]["nodeName"] == "process-node-extra"
        pid = pid_of(pod)
    finally:
        devenv.stop_node("process-node-extra")
    assert node_ready(kube, "process-node-extra") in ("False", "Unknown")
    assert not pid_alive(pid)
    assert node_ready(kube, "process-node-1") == "True"
    kube.delete("/api/v1/nodes/process-node-extra")


def test_restarted_node_fails_lost_pods_and_restarts_deployments(devenv: DevEnvironment, kube: Kube,
                                                                namespace: str) -> None:
    name = "process-node-restart"
    devenv.start_node(name)
    try:
        create_pod(kube, namespace, pod_manifest("once", ["sleep", "600"], node=name))
        create_pod(kube, namespace, pod_manifest("always", ["sleep", "600"], node=name, restart="Always"))
        before = {n: pid_of(wait_phase(kube, namespace, n, "Running")) for n in ("once", "always")}
        devenv.stop_node(name)
        assert not any(pid_alive(p) for p in before.values())
        devenv.start_node(name)

        once = wait_phase(kube, namespace, "once", "Failed")
        assert once["status"]["reason"] == "ContainerLost"
        assert "process node restarted" in once["status"]["message"]

        def restarted() -> dict | None:
            pod = get_pod(kube, namespace, "always")
            st = (pod or {}).get("status") or {}
            ok = st.get("phase") == "Running" and "running" in container_status(pod)["state"]
            return pod if ok and container_status(pod)["restartCount"] == 1 else None

        always = wait_for(restarted, 30, "the Always pod to run again with restartCount 1")
        assert pid_of(always) != before["always"] and pid_alive(pid_of(always))
    finally:
        if name in devenv.nodes:
            devenv.stop_node(name)
        kube.delete(f"/api/v1/nodes/{name}")
