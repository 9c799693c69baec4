"""COMPOZY_NATS_AUTH=callout: a task pod logs in to NATS with its own projected ServiceAccount token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compozy_operator import task_executor
from compozy_operator.bus import without_credentials
from compozy_operator.pods import task_pod
from compozy_operator.runtime import ToolContext, run_command
from compozy_operator.settings import Settings

EXECUTION = {"metadata": {"name": "hello-1", "namespace": "ns", "uid": "u1"}}


def test_callout_pod_has_a_projected_token_and_no_shared_one() -> None:
    pod = task_pod(Settings(task_image="img:1", nats_auth="callout"), EXECUTION, "count", 2)
    spec = pod["spec"]
    c = spec["containers"][0]
    names = {e["name"] for e in c["env"]}
    assert "COMPOZY_NATS_TOKEN" not in names
    assert not any(e.get("valueFrom", {}).get("secretKeyRef", {}).get("key") == "token" for e in c["env"])
    assert {"name": "COMPOZY_NATS_TOKEN_FILE", "value": "/var/run/secrets/compozy.dev/nats/token"} in c["env"]
    assert spec["automountServiceAccountToken"] is False
    volume = next(v for v in spec["volumes"] if v["name"] == "nats-token")
    assert volume["projected"]["sources"] == [{"serviceAccountToken": {
        "audience": "compozy-nats", "expirationSeconds": 3600, "path": "token"}}]
    assert {"name": "nats-token", "mountPath": "/var/run/secrets/compozy.dev/nats", "readOnly": True} \
        in c["volumeMounts"]


def test_token_mode_pod_is_unchanged() -> None:
    pod = task_pod(Settings(task_image="img:1", nats_auth="token"), EXECUTION, "count", 2)
    c = pod["spec"]["containers"][0]
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["tmp"]
    assert c["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert "COMPOZY_NATS_TOKEN_FILE" not in {e["name"] for e in c["env"]}


def test_secret_url_loses_the_operators_credentials() -> None:
    assert without_credentials("nats://compozy-operator:pw@127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert without_credentials("tls://nats.compozy:4222") == "tls://nats.compozy:4222"


def test_runner_reads_the_token_file_at_each_call_and_hides_it(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    host = tmp_path / "mount"
    host.mkdir()
    (host / "token").write_text("first\n")
    monkeypatch.setenv("COMPOZY_NATS_TOKEN_FILE", "/var/run/secrets/compozy.dev/nats/token")
    monkeypatch.setenv("COMPOZY_PROCESS_NODE_MOUNTS", json.dumps({"/var/run/secrets/compozy.dev/nats": str(host)}))
    login = task_executor.nats_login()
    assert callable(login) and login() == "first"
    (host / "token").write_text("rotated\n")
    assert login() == "rotated"
    monkeypatch.setenv("COMPOZY_NATS_TOKEN_FILE", "/var/run/secrets/compozy.dev/nats/token")  # as if still set
    ctx = ToolContext(1, "t", "e", "ns")
    out = run_command(["python3", "-c", "import json, os; print(json.dumps(dict(os.environ)))"], "env", {}, ctx)
    assert "COMPOZY_NATS_TOKEN_FILE" not in out


def test_token_mode_login_is_the_shared_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COMPOZY_NATS_TOKEN_FILE", raising=False)
    monkeypatch.setenv("COMPOZY_NATS_TOKEN", "shared")
    assert task_executor.nats_login() == "shared"
