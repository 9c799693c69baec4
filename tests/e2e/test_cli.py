"""The ``compozy`` workflow CLI end to end: the installed ``compozy`` program, run as a user runs it
(a subprocess, the local cluster's client-certificate kubeconfig and nothing else), against the
operator on the local cluster."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
import sys
from pathlib import Path
from typing import Any

import pytest

from compozy_operator.cli.logs import API_EXTENSION
from compozy_operator.execution_requests import LABEL_CREATED, LABEL_RESUBMITTED_FROM, LABEL_WORKFLOW, created_value
from compozy_operator.executor import epoch
from compozy_operator.kube import Kube, set_context_extension, write_kubeconfig
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.operator_process import OperatorProcess
from compozy_operator.testenv.pki import write_client_certificate, write_loopback_tls
from tests.helpers import Kubectl, wait_for

from .conftest import execution_status, wait_finished
from .test_workflows import apply, workflow

COMPOZY = Path(sys.executable).with_name("compozy")

PY_FLAKY = ("def run(input, ctx):\n    import os\n    marker = '/tmp/compozy-cli-flaky-' + ctx.namespace\n"
            "    if not os.path.exists(marker):\n        open(marker, 'w').close()\n"
            "        raise RuntimeError('first time fails')\n    os.remove(marker)\n    return {}\n")


@pytest.fixture
def cli(devenv: DevEnvironment, namespace: str):
    def run(*args: str, stdin: str | None = None, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(COMPOZY), *args, "--kubeconfig", str(devenv.kubeconfig), "-n", namespace],
                              input=stdin, capture_output=True, text=True, timeout=timeout)
    return run


@pytest.fixture
def workflows(kubectl: Kubectl, namespace: str) -> None:
    apply(kubectl, namespace,
          workflow("echo", [{"id": "echo", "tool": "ok", "with": {"value": "{{ workflow.input }}"}}],
                   output="{{ tasks.echo.output.echo.value }}"),
          workflow("breaks", [{"id": "first", "tool": "fail", "with": {"why": "disk full"}}]),
          workflow("sleepy", [{"id": "nap", "tool": "slow", "with": {"seconds": 60}}]))


def _json(out: subprocess.CompletedProcess[str]) -> Any:
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_submit_wait_succeeds_with_params_parsed_as_json(operator: OperatorProcess, workflows: None, cli) -> None:
    out = cli("submit", "echo", "-p", "n=3", "-p", "ok=true", "-p", "xs=[1, \"a\"]", "-p", "text=hello world",
              "-l", "team=ml", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    name, phase = out.stdout.split()[:2]
    assert name.startswith("echo-") and phase == "Succeeded"
    expected = {"n": 3, "ok": True, "xs": [1, "a"], "text": "hello world"}
    assert json.loads(out.stdout.splitlines()[1].removeprefix("output: ")) == expected
    obj = _json(cli("get", name, "-o", "json"))
    assert obj["spec"]["input"] == expected
    labels = obj["metadata"]["labels"]
    assert labels.pop(LABEL_CREATED) == created_value(epoch(obj["metadata"]["creationTimestamp"]))
    assert labels == {LABEL_WORKFLOW: "echo", "team": "ml"}
    assert "\x1b[" not in out.stdout + out.stderr  # no colour, no progress off a terminal


def test_submit_wait_exits_1_when_the_run_fails(operator: OperatorProcess, workflows: None, cli) -> None:
    out = cli("submit", "breaks", "--name", "breaks-1", "--wait")
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stdout.startswith("breaks-1 Failed")
    assert "error: task first failed: RuntimeError: the tool broke: disk full" in out.stdout
    tree = cli("get", "breaks-1")
    assert tree.returncode == 0
    row = next(line for line in tree.stdout.splitlines() if line.startswith("first"))
    assert row.split()[:3] == ["first", "Failed", "1"] and "the tool broke: disk full" in row


def test_submit_input_file_and_errors(operator: OperatorProcess, workflows: None, cli, tmp_path: Path) -> None:
    (tmp_path / "in.yaml").write_text("text: from file\nn: 1\n")
    out = cli("submit", "echo", "-f", str(tmp_path / "in.yaml"), "-p", "n=2", "--wait", "-o", "json")
    assert _json(out)["status"]["output"] == {"text": "from file", "n": 2}
    out = cli("submit", "echo", "-f", "-", "--wait", "-o", "json", stdin='{"from": "stdin"}')
    assert _json(out)["status"]["output"] == {"from": "stdin"}
    unknown = cli("submit", "ecko")
    assert unknown.returncode == 1 and "workflow 'ecko' not found" in unknown.stderr
    assert "did you mean echo" in unknown.stderr
    bad = cli("submit", "echo", "-p", "justakey")
    assert bad.returncode == 2 and "-p 'justakey': expected key=value" in bad.stderr
    assert cli("get", "nope").returncode == 1


def test_list_and_get(operator: OperatorProcess, kubectl: Kubectl, workflows: None, cli, namespace: str) -> None:
    assert cli("submit", "echo", "--name", "echo-a", "-p", "x=1", "--wait").returncode == 0
    assert cli("submit", "breaks", "--name", "breaks-a", "--wait").returncode == 1
    table = cli("list")
    assert table.returncode == 0
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[1:]}
    assert rows["echo-a"][1:4] == ["echo", "Succeeded", "1/1"] and rows["breaks-a"][1:3] == ["breaks", "Failed"]
    def names(*args: str) -> list[str]:
        return [o["metadata"]["name"] for o in _json(cli("list", *args, "-o", "json"))["items"]]
    assert names("--phase", "Failed") == ["breaks-a"] and names("--workflow", "echo") == ["echo-a"]
    assert set(names("--phase", "Succeeded,Failed")) == {"breaks-a", "echo-a"} and names("--phase", "Running") == []
    everywhere = cli("list", "-A")
    assert any(line.split()[:2] == [namespace, "echo-a"] for line in everywhere.stdout.splitlines())
    got = _json(cli("get", "echo-a", "-o", "json"))
    assert got["metadata"]["name"] == "echo-a" and got["status"]["phase"] == "Succeeded"
    import yaml
    assert yaml.safe_load(cli("get", "echo-a", "-o", "yaml").stdout)["metadata"]["uid"] == got["metadata"]["uid"]
    text = cli("get", "echo-a").stdout
    assert "Phase:       Succeeded (1/1)" in text and 'Output:      {"x": 1}' in text


def test_watch_on_a_pipe_prints_one_line_per_change(operator: OperatorProcess, workflows: None, cli) -> None:
    out = cli("submit", "echo", "--name", "echo-w", "-p", "x=1", "--watch")
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [line.split(" ", 1)[1] for line in out.stdout.splitlines()]  # without the time
    assert lines[-1] == "echo-w Succeeded 1/1"
    assert "task echo Succeeded attempt 1" in lines
    assert len(lines) == len(set(lines))  # no repeats: a line per change
    again = cli("watch", "echo-w")  # an ended run: its state, then the exit code
    assert again.returncode == 0 and again.stdout.splitlines()[-1].endswith("echo-w Succeeded 1/1")
    scripted = cli("submit", "echo", "-p", "x=2", "--watch", "-o", "json")  # the object alone on stdout
    assert _json(scripted)["status"]["output"] == {"x": 2} and "Succeeded 1/1" in scripted.stderr
    failed = cli("watch", "nope")
    assert failed.returncode == 1 and "not found" in failed.stderr


def test_cancel_and_watch_exit_1(operator: OperatorProcess, kubectl: Kubectl, workflows: None, cli,
                                 namespace: str) -> None:
    assert cli("submit", "sleepy", "--name", "sleepy-1").returncode == 0
    wait_for(lambda: execution_status(kubectl, namespace, "sleepy-1").get("tasks", {}).get("nap", {}).get("phase")
             == "Running", 60, "the task to run")
    out = cli("cancel", "sleepy-1")
    assert out.returncode == 0 and "cancel requested" in out.stdout
    watched = cli("watch", "sleepy-1")
    assert watched.returncode == 1 and watched.stdout.splitlines()[-1].split(" ", 1)[1].startswith("sleepy-1 Cancelled")
    assert wait_finished(kubectl, namespace, "sleepy-1")["phase"] == "Cancelled"
    again = cli("cancel", "sleepy-1")
    assert again.returncode == 1 and "already ended (Cancelled)" in again.stderr


def test_resubmit_overrides_input_and_labels_the_origin(operator: OperatorProcess, workflows: None, cli) -> None:
    assert cli("submit", "echo", "--name", "echo-r", "-p", "a=1", "-p", "b=2", "--wait").returncode == 0
    out = cli("resubmit", "echo-r", "-p", "b=3", "--wait", "-o", "json")
    obj = _json(out)
    assert obj["status"]["output"] == {"a": 1, "b": 3}
    assert obj["metadata"]["labels"][LABEL_RESUBMITTED_FROM] == "echo-r"
    assert obj["metadata"]["labels"][LABEL_WORKFLOW] == "echo" and obj["metadata"]["name"].startswith("echo-")


def test_retry_continues_a_failed_run(operator: OperatorProcess, kubectl: Kubectl, cli, namespace: str) -> None:
    apply(kubectl, namespace, workflow("flaky", [{"id": "ok", "tool": "ok", "with": {}, "onSuccess": {"next": "f"}},
                                                 {"id": "f", "tool": "flaky", "with": {}}],
                                       tools=[{"id": "ok", "python": "def run(i, ctx):\n    return {}\n"},
                                              {"id": "flaky", "python": PY_FLAKY}]))
    assert cli("submit", "flaky", "--name", "flaky-1", "--wait").returncode == 1
    out = cli("retry", "flaky-1", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    tasks = execution_status(kubectl, namespace, "flaky-1")["tasks"]
    assert tasks["ok"]["attempt"] == 1 and tasks["f"]["phase"] == "Succeeded"


def test_signal_is_refused_as_usage(cli) -> None:
    out = cli("signal", "any", "approve", "--data", "{}")
    assert out.returncode == 2 and "no task type waits for signals yet" in out.stderr


def test_logs_with_a_client_certificate_over_plain_http_says_what_to_do(cli) -> None:
    out = cli("logs", "any", "--api-url", "http://127.0.0.1:9")
    assert out.returncode == 1
    assert "client certificate" in out.stderr and "only over HTTPS" in out.stderr
    assert "kubectl create token" in out.stderr


def _user_kubeconfig(devenv: DevEnvironment, path: Path, cert: tuple[Path, Path], api: str, ca: Path) -> Path:
    """A kubeconfig of the local cluster for the user of ``cert``, telling where api.Service is (and its CA)."""
    write_kubeconfig(path, devenv.cluster.server, devenv.cluster.pki.ca_cert,
                     user={"client-certificate": str(cert[0]), "client-key": str(cert[1])})
    set_context_extension(path, API_EXTENSION, {"url": api,
                                                "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode()})
    return path


def test_logs_with_nothing_but_a_client_certificate_kubeconfig(operator: OperatorProcess, kubectl: Kubectl,
                                                               workflows: None, cli, devenv: DevEnvironment,
                                                               kube: Kube, namespace: str, tmp_path: Path) -> None:
    """api.Service over HTTPS trusting the cluster's client CA (COMPOZY_API_CLIENT_CA=cluster, read from
    kube-system/extension-apiserver-authentication): `compozy logs` signs in with the kubeconfig's client
    certificate, as kubectl does; RBAC decides for the certificate's user; a certificate of another CA
    is refused in the handshake. An operator of its own serves it (it watches an empty namespace)."""
    empty = f"empty-{uuid.uuid4().hex[:5]}"
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": empty}})
    tls = write_loopback_tls(tmp_path / "api-tls", "compozy-api")
    op = OperatorProcess(devenv, log_path=devenv.workdir / "logs" / f"operator-{empty}.log", extra_env={
        "COMPOZY_NAMESPACES": empty, "COMPOZY_API_CERT_FILE": str(tls.cert), "COMPOZY_API_KEY_FILE": str(tls.key),
        "COMPOZY_API_CLIENT_CA": "cluster"})
    op.start()
    try:
        api = f"https://127.0.0.1:{op.api_port}"
        assert cli("submit", "echo", "--name", "echo-c", "-p", "x=1", "--wait").returncode == 0
        pki = devenv.cluster.pki
        admin = _user_kubeconfig(devenv, tmp_path / "kubeconfig-admin", (pki.admin_cert, pki.admin_key), api, tls.ca_cert)
        def logs_as(kubeconfig: Path) -> subprocess.CompletedProcess[str]:
            return subprocess.run([str(COMPOZY), "logs", "echo-c", "--kubeconfig", str(kubeconfig), "-n", namespace],
                                  capture_output=True, text=True, timeout=60)

        out = logs_as(admin)
        assert out.returncode == 0, out.stderr
        assert any(" echo[1] info got {'value': {'x': 1}}" in line for line in out.stdout.splitlines()), out.stdout

        nobody = write_client_certificate(tmp_path / "certs", "nobody", "some-team", ca=(pki.ca_cert, pki.ca_key))
        refused = logs_as(_user_kubeconfig(devenv, tmp_path / "kubeconfig-nobody", nobody, api, tls.ca_cert))
        assert refused.returncode == 1
        assert 'User "nobody" cannot get resource "workflowexecutions"' in refused.stderr, refused.stderr
        assert "(HTTP 403)" in refused.stderr
        kubectl.ok("create", "role", "team-reads", "-n", namespace, "--verb=get",
                   "--resource=workflowexecutions.compozy.dev")
        kubectl.ok("create", "rolebinding", "team-reads", "-n", namespace, "--role=team-reads", "--group=some-team")
        allowed = wait_for(lambda: (r := logs_as(tmp_path / "kubeconfig-nobody")).returncode == 0 and r, 20,
                           "the group's RoleBinding to count (decisions are cached 10 s)")
        assert " echo[1] " in allowed.stdout

        forged = write_client_certificate(tmp_path / "forged", "compozy-admin", "system:masters")  # self-signed
        out = logs_as(_user_kubeconfig(devenv, tmp_path / "kubeconfig-forged", forged, api, tls.ca_cert))
        assert out.returncode == 1 and "cannot reach api.Service" in out.stderr and "clusterClientCA" in out.stderr
        assert not [line for line in out.stdout.splitlines() if " echo[1] " in line]
    finally:
        op.stop()
        kube.delete(f"/api/v1/namespaces/{empty}")


def test_logs_without_an_api_url_says_where_to_find_it(cli) -> None:
    out = cli("logs", "any", "--token", "x")
    assert out.returncode == 1 and "--api-url" in out.stderr and "COMPOZY_API_URL" in out.stderr


def _reader_token(kubectl: Kubectl, namespace: str) -> str:
    """A ServiceAccount allowed to read executions (and nothing else), and a token of it."""
    kubectl.ok("create", "serviceaccount", "reader", "-n", namespace)
    kubectl.ok("create", "role", "reader", "-n", namespace, "--verb=get,list,watch",
               "--resource=workflowexecutions.compozy.dev")
    kubectl.ok("create", "rolebinding", "reader", "-n", namespace, "--role=reader",
               f"--serviceaccount={namespace}:reader")
    return kubectl.ok("create", "token", "reader", "-n", namespace).strip()


def test_logs_of_a_finished_run_through_api_service(operator: OperatorProcess, kubectl: Kubectl, workflows: None,
                                                     cli, namespace: str) -> None:
    port = operator.env().get("COMPOZY_API_PORT", "8090")
    token = _reader_token(kubectl, namespace)
    assert cli("submit", "echo", "--name", "echo-l", "-p", "x=1", "--wait").returncode == 0
    out = cli("logs", "echo-l", "--api-url", f"http://127.0.0.1:{port}", "--token", token)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(" echo[1] info got {'value': {'x': 1}}" in line for line in lines), lines  # the tool's ctx.log
    only = cli("logs", "echo-l", "--task", "echo", "--attempt", "1", "-f", "--api-url", f"http://127.0.0.1:{port}",
               "--token", token)
    assert only.returncode == 0 and only.stdout and all(" echo[1] " in line for line in only.stdout.splitlines())


def test_kubectl_compozy_is_the_same_program(operator: OperatorProcess, workflows: None, devenv: DevEnvironment,
                                             cli, namespace: str) -> None:
    assert cli("submit", "echo", "--name", "echo-k", "-p", "x=1", "--wait").returncode == 0
    env = {**os.environ, "PATH": f"{COMPOZY.parent}:{os.environ['PATH']}", "KUBECONFIG": str(devenv.kubeconfig)}
    out = subprocess.run([str(devenv.bindir / "kubectl"), "compozy", "get", "echo-k", "-n", namespace, "-o", "json"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"]["output"] == {"x": 1}
