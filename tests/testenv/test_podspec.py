"""Pure pod-spec logic of the process node (no cluster needed)."""

from __future__ import annotations

import pytest

from compozy_operator.testenv.node import podspec
from compozy_operator.testenv.node.podspec import ConfigError

POD = {
    "metadata": {"name": "p1", "namespace": "ns", "uid": "u-1", "labels": {"app": "x"}},
    "spec": {"nodeName": "n1", "serviceAccountName": "sa1", "containers": []},
    "status": {"podIP": "127.0.0.1"},
}
DATA = {("secret", "ns", "s"): {"k": "secret-value"}, ("configmap", "ns", "c"): {"a": "1", "b": "2"}}


def lookup(kind: str, ns: str, name: str) -> dict[str, str] | None:
    return DATA.get((kind, ns, name))


@pytest.mark.parametrize("image, own", [
    ("compozy/compozy-operator", True),
    ("compozy/compozy-operator:1.2", True),
    ("compozy/compozy-operator@sha256:abc", True),
    ("localhost:5000/compozy/compozy-operator:dev", False),
    ("nginx:1.27", False),
    ("compozy/compozy-operator-evil:1", False),
])
def test_is_own_image(image: str, own: bool) -> None:
    assert podspec.is_own_image(image, ["compozy/compozy-operator"]) is own


def test_registry_port_is_not_a_tag() -> None:
    assert podspec.image_repository("localhost:5000/a/b") == "localhost:5000/a/b"
    assert podspec.image_repository("localhost:5000/a/b:v1") == "localhost:5000/a/b"


def test_expand_like_kubernetes() -> None:
    env = {"A": "x", "B": "y"}
    assert podspec.expand("$(A)-$(B)", env) == "x-y"
    assert podspec.expand("$(MISSING)", env) == "$(MISSING)"
    assert podspec.expand("$$(A)", env) == "$(A)"


def test_container_env_sources_in_order() -> None:
    container = {
        "envFrom": [{"configMapRef": {"name": "c"}, "prefix": "CM_"}],
        "env": [
            {"name": "PLAIN", "value": "v"},
            {"name": "REF", "value": "$(PLAIN)-$(CM_a)"},
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "LABEL", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k", "optional": True}}},
        ],
    }
    env = podspec.container_env(POD, container, {"BASE": "b"}, lookup)
    assert env == {"BASE": "b", "CM_a": "1", "CM_b": "2", "PLAIN": "v", "REF": "v-1", "SECRET": "secret-value",
                   "POD": "p1", "NS": "ns", "LABEL": "x"}


@pytest.mark.parametrize("ref, message", [
    ({"secretKeyRef": {"name": "nope", "key": "k"}}, 'secret "nope" not found'),
    ({"secretKeyRef": {"name": "s", "key": "other"}}, "couldn't find key other in secret ns/s"),
    ({"configMapKeyRef": {"name": "nope", "key": "k"}}, 'configmap "nope" not found'),
    ({"fieldRef": {"fieldPath": "spec.bogus"}}, "unsupported fieldRef 'spec.bogus'"),
])
def test_missing_references_are_config_errors(ref: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        podspec.container_env(POD, {"env": [{"name": "X", "valueFrom": ref}]}, {}, lookup)


def test_argv_uses_entrypoint_without_command() -> None:
    assert podspec.container_argv({"args": ["run", "$(X)"]}, {"X": "1"}, ["compozy"]) == ["compozy", "run", "1"]
    assert podspec.container_argv({"command": ["sh", "-c"], "args": ["exit 3"]}, {}, ["compozy"]) == ["sh", "-c", "exit 3"]
    with pytest.raises(ConfigError, match="no command"):
        podspec.container_argv({}, {}, [])


@pytest.mark.parametrize("policy, code, restart", [
    ("Always", 0, True), ("Always", 1, True), ("OnFailure", 0, False), ("OnFailure", 2, True),
    ("Never", 0, False), ("Never", 1, False),
])
def test_restart_policy(policy: str, code: int, restart: bool) -> None:
    assert podspec.restarts(policy, code) is restart


def test_backoff_doubles_and_caps() -> None:
    assert [podspec.backoff_seconds(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]


def _term(code: int) -> dict:
    return {"terminated": {"exitCode": code}}


@pytest.mark.parametrize("policy, states, phase", [
    ("Never", [], "Pending"),
    ("Never", [{"waiting": {}}], "Pending"),
    ("Never", [{"running": {}}, _term(0)], "Running"),
    ("Never", [_term(0), _term(0)], "Succeeded"),
    ("Never", [_term(0), _term(3)], "Failed"),
    ("OnFailure", [_term(0)], "Succeeded"),
    ("OnFailure", [_term(1)], "Running"),
    ("Always", [_term(0)], "Running"),
])
def test_pod_phase(policy: str, states: list, phase: str) -> None:
    assert podspec.pod_phase(policy, states) == phase


def test_signal_exit_reported_as_shell_would() -> None:
    state = podspec.terminated_state(-9, "t0")
    assert state["exitCode"] == 137 and state["signal"] == 9 and state["reason"] == "Error"


def test_termination_message_file_then_logs_fallback() -> None:
    fallback = {"terminationMessagePolicy": "FallbackToLogsOnError"}
    assert podspec.termination_message({}, "written", "log", 1) == "written"
    assert podspec.termination_message({}, "", "log", 1) == ""
    assert podspec.termination_message(fallback, "", "log", 1) == "log"
    assert podspec.termination_message(fallback, "", "log", 0) == ""
    assert len(podspec.termination_message({}, "x" * 10_000, "", 1)) == podspec.TERMINATION_MESSAGE_LIMIT
