"""Reading task pods' status: why one waits, what the user must fix (issue 11.4)."""

from __future__ import annotations

from compozy_operator.orchestrator import pod_state


def pod(waiting: dict | None = None, conditions: list | None = None, env: list | None = None) -> dict:
    statuses = [{"name": "task", "state": {"waiting": waiting}}] if waiting else []
    return {"metadata": {"name": "run-a-1", "namespace": "team"},
            "spec": {"containers": [{"name": "task", "env": env or []}]},
            "status": {"phase": "Pending", "containerStatuses": statuses, "conditions": conditions or []}}


KEY_ENV = [{"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "llm", "key": "api-key"}}},
           {"name": "OTHER", "valueFrom": {"secretKeyRef": {"name": "other", "key": "k"}}}]


def test_a_starting_pod_is_not_news() -> None:
    assert pod_state.waiting(pod({"reason": "ContainerCreating"})) is None
    assert pod_state.waiting(pod()) is None


def test_a_waiting_container_and_an_unschedulable_pod_say_why() -> None:
    assert pod_state.waiting(pod({"reason": "ImagePullBackOff", "message": "back-off"})) == ("ImagePullBackOff",
                                                                                              "back-off")
    unschedulable = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": "0/1 nodes are available: 1 Insufficient cpu."}]
    assert pod_state.waiting(pod(conditions=unschedulable)) == ("Unschedulable",
                                                                "0/1 nodes are available: 1 Insufficient cpu.")


def test_a_missing_secret_names_the_secret_and_the_env_that_needs_it() -> None:
    p = pod(env=KEY_ENV)
    text = pod_state.explain(p, "CreateContainerConfigError", 'secret "llm" not found')
    assert text == ('secret "llm" not found: create the Secret team/llm, needed by env API_KEY '
                    "(secretKeyRef llm/api-key), then retry the run")


def test_a_missing_key_names_the_key() -> None:
    text = pod_state.explain(pod(env=KEY_ENV), "CreateContainerConfigError",
                             "couldn't find key api-key in Secret team/llm")
    assert "create the key 'api-key' of Secret team/llm, needed by env API_KEY (secretKeyRef llm/api-key)" in text
    assert "OTHER" not in text


def test_other_messages_are_kept_as_they_are() -> None:
    assert pod_state.explain(pod(), "ErrImagePull", 'secret "x" not found') == 'secret "x" not found'
    assert pod_state.explain(pod(), "CreateContainerConfigError", "something else") == "something else"


def test_a_failed_pod_gives_its_own_reason_first() -> None:
    evicted = {"metadata": {}, "status": {"phase": "Failed", "reason": "Evicted", "message": "low on memory"}}
    assert pod_state.failure(evicted) == ("Evicted", "low on memory")
    oom = {"metadata": {}, "status": {"phase": "Failed", "containerStatuses": [
        {"state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}}
    assert pod_state.failure(oom) == ("OOMKilled", "the task container exited with code 137 (OOMKilled)")
