"""Tenant isolation end to end (issue 12), with per-attempt NATS identities switched on.

A callout-mode nats-server of this test's own, an operator process with ``COMPOZY_NATS_AUTH=callout``
(its own Bus as the configured operator user, the auth callout service as a supervised loop), and
real task pods on the process node, each logging in to NATS with its own projected ServiceAccount
token. A victim run in namespace ``victim`` succeeds through the callout; meanwhile a hostile
python tool in namespace ``attacker``, from its real task pod, takes its pod's NATS token (the file
is readable by the tool: docs/security.md) and tries the attacks of issue 12 on the victim run. The
NATS server refuses each; the victim's status and output are untouched; the attacker's own run
succeeds. Its token is refused once its pod has ended.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest

from compozy_operator.kube import Kube
from compozy_operator.nats_auth.keys import secret_manifest
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.natsserver import NatsServer
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl, wait_for

from .conftest import OPERATOR_ENV, execution_status, wait_finished
from .test_workflows import PY_SLOW, apply, execution, workflow
from tests.testenv.test_nats_callout import _execution, _plain_pod, _resigned, _task_pod, _token

# The hostile tool. It runs in the runner's process (a python tool), so it can import what the runner
# imports (compozy_operator, nats-py) and read the pod's files. Every attack uses its pod's own NATS
# identity (a permission violation leaves the connection up); each result is True when the server refused.
HOSTILE = r'''
import asyncio, json, os

TOKEN_PATH = "/var/run/secrets/compozy.dev/nats/token"


def host_path(path):
    # the process node runs containers as host processes: where the mount really is
    mounts = json.loads(os.environ.get("COMPOZY_PROCESS_NODE_MOUNTS") or "{}")
    for mount, host in mounts.items():
        if path.startswith(mount.rstrip("/") + "/"):
            return host + path[len(mount.rstrip("/")):]
    return path


def run(input, ctx):
    return asyncio.run(attack(input, ctx))


async def attack(input, ctx):
    import nats
    from compozy_operator import events
    from compozy_operator.events import EventType, Publisher
    url = os.environ["COMPOZY_NATS_URL"]
    out = {"env": {k: k in os.environ for k in ("COMPOZY_NATS_TOKEN", "COMPOZY_NATS_TOKEN_FILE")}}
    try:
        token = open(host_path(TOKEN_PATH)).read().strip()
    except OSError as e:
        return {**out, "token_readable": str(e)}
    out["token"] = token
    refused = {}
    tries = [("connect_without_token", None), ("connect_with_bogus_token", "not-a-token")]
    tries += [(f"connect with {what}", token) for what, token in (input.get("stolen") or {}).items()]
    for name, secret in tries:
        try:
            nc = await nats.connect(url, token=secret, allow_reconnect=False, connect_timeout=5,
                                    max_reconnect_attempts=0)
        except Exception:
            refused[name] = True
        else:
            refused[name] = False
            await nc.close()

    errors = []

    async def on_error(e):
        errors.append(str(e).lower())

    prefix = events.inbox_prefix(ctx.namespace, ctx.execution, ctx.task, ctx.attempt)
    nc = await nats.connect(url, token=token, allow_reconnect=False, connect_timeout=5, error_cb=on_error,
                            inbox_prefix=prefix)

    async def was_refused(what):
        await nc.flush(timeout=5)
        for _ in range(40):
            if any("permissions violation" in e and f'"{what.lower()}"' in e for e in errors):
                return True
            await asyncio.sleep(0.05)
        return False

    async def request(subject, body=b""):
        try:
            await nc.request(subject, body, timeout=2)
            answered = True
        except Exception:
            answered = False
        return await was_refused(subject) and not answered

    ns, ex, uid = input["victim"], input["execution"], input.get("uid", "unknown")
    got = []

    async def collect(msg):
        got.append(msg.subject)

    for subject in ("compozy.>", f"compozy.state.{ns}.>", f"compozy.log.{ns}.>", "_INBOX.>", ">"):
        await nc.subscribe(subject, cb=collect)
        refused[f"subscribe {subject}"] = await was_refused(subject)
    refused["direct get of the victim's command"] = await request(
        f"$JS.API.DIRECT.GET.COMPOZY_COMMANDS.{events.command_subject(ns, ex, 'a', 1)}")
    refused["direct get by body"] = await request(
        "$JS.API.DIRECT.GET.COMPOZY_COMMANDS",
        json.dumps({"last_by_subj": events.command_subject(ns, ex, "a", 1)}).encode())
    forged = {
        "WorkflowExecutionSuccess": (events.state_subject(ns, ex, EventType.WORKFLOW_SUCCESS),
                                     events.make_event(EventType.WORKFLOW_SUCCESS, "x", ns, ex, uid,
                                                       output={"pwned": True})),
        "TaskExecutionSuccess": (events.state_subject(ns, ex, EventType.TASK_SUCCESS, "a", 1, Publisher.ATTEMPT),
                                 events.make_event(EventType.TASK_SUCCESS, "x", ns, ex, uid, "a", 1,
                                                   publisher=Publisher.ATTEMPT, output={"pwned": True})),
    }
    for name, (subject, event) in forged.items():
        refused[f"publish {name}"] = await request(subject, event.model_dump_json().encode())
    for name, subject in (("cancel", events.cancel_subject(ns, ex)),
                          ("command", events.command_subject(ns, ex, "a", 2)),
                          ("log", events.log_subject(ns, ex, uid, "orchestrator"))):
        await nc.publish(subject, b'{"pwned": true}')
        refused[f"publish victim {name}"] = await was_refused(subject)
    for subject in ("$JS.API.STREAM.DELETE.COMPOZY_STATE", "$JS.API.STREAM.DELETE.COMPOZY_COMMANDS",
                    "$JS.API.STREAM.PURGE.COMPOZY_STATE", "$JS.API.CONSUMER.DELETE.COMPOZY_STATE.compozy-state-manager",
                    "$JS.API.STREAM.NAMES", "$JS.API.STREAM.INFO.COMPOZY_COMMANDS", "$JS.API.INFO",
                    "$JS.API.STREAM.MSG.GET.COMPOZY_COMMANDS"):
        refused[subject] = await request(subject, b"{}")
    await asyncio.sleep(0.5)
    refused["received nothing"] = not got
    # a control: the same connection may do what its attempt may (so the refusals are the server's)
    mine = await nc.request(f"$JS.API.DIRECT.GET.COMPOZY_COMMANDS.{events.command_subject(ctx.namespace, ctx.execution, ctx.task, ctx.attempt)}", b"", timeout=5)
    out["own command readable"] = json.loads(mine.data).get("task") == ctx.task
    await nc.close()
    out["refused"] = refused
    return out
'''
ENV_TOOL = ["python3", "-c", "import json, os; print(json.dumps({'env': dict(os.environ)}))"]
ENV_PY = "import os\ndef run(input, ctx):\n    return {'env': dict(os.environ), 'proc': open('/proc/self/environ', 'rb').read().decode(errors='replace')}\n"


@pytest.fixture
def callout_cluster(operator: OperatorProcess, devenv: DevEnvironment, kubectl: Kubectl, kube: Kube,
                    tmp_path: Path) -> Iterator[tuple[NatsServer, OperatorProcess]]:
    """A callout-mode NATS and an operator in callout mode against it (the session's is stopped
    meanwhile, and started again after)."""
    server = NatsServer(devenv.bindir, tmp_path / "nats", callout=True).start()
    auth = server.callout
    assert auth is not None
    operator.stop()
    secret = f"callout-keys-{uuid.uuid4().hex[:6]}"  # as the chart's operator reads it (nats_auth/keys.py)
    kube.create("/api/v1/namespaces/default/secrets", secret_manifest(auth.keys, secret, "default"))
    env = {**OPERATOR_ENV, "COMPOZY_NATS_AUTH": "callout", "COMPOZY_NATS_URL": server.url, "COMPOZY_NATS_TOKEN": "",
           "COMPOZY_NATS_CALLOUT_SECRET": secret, "COMPOZY_POD_NAMESPACE": "default"}
    op = OperatorProcess(devenv, extra_env=env, log_path=tmp_path / "operator.log")
    try:
        op.start()
        yield server, op
    finally:
        op.stop()
        server.stop()
        kube.delete(f"/api/v1/namespaces/default/secrets/{secret}")
        operator.start()


def _namespace(kube: Kube, devenv: DevEnvironment, base: str) -> str:
    name = f"{base}-{int(time.time() * 1000) % 10**8}"
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    devenv.cluster.wait_default_service_account(name)
    return name


@pytest.fixture
def tenants(kube: Kube, devenv: DevEnvironment) -> Iterator[tuple[str, str]]:
    names = (_namespace(kube, devenv, "victim"), _namespace(kube, devenv, "attacker"))
    yield names
    for name in names:
        kube.delete(f"/api/v1/namespaces/{name}")


def _metric(text: str, name: str, labels: str = "") -> float:
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


async def _refused(url: str, token: str) -> str | None:
    """The error of a refused connection, or None when the server let it in."""
    try:
        nc = await nats.connect(url, token=token, allow_reconnect=False, connect_timeout=5, max_reconnect_attempts=0)
    except Exception as e:  # noqa: BLE001 - what nats-py raises for a refused CONNECT
        return f"{type(e).__name__}: {e}"
    await nc.close()
    return None


def _stolen_tokens(kube: Kube, devenv: DevEnvironment, namespace: str) -> dict[str, str]:
    """Tokens of the victim's namespace the hostile tool is handed, as if it had stolen them: each is
    a real token the API server issued (or its exact copy re-signed with the cluster's key), and each
    must be refused from inside the attacker's pod."""
    owner = _execution(kube, namespace, f"stolen-{uuid.uuid4().hex[:5]}")
    live = _task_pod(kube, owner, attempt=1)
    deleted = _task_pod(kube, owner, attempt=2)
    deleted_token = _token(kube, deleted)
    kube.delete(f"/api/v1/namespaces/{namespace}/pods/{deleted['metadata']['name']}", {"gracePeriodSeconds": 0})
    return {"an expired token of a live task pod": _resigned(_token(kube, live), devenv.cluster.pki.sa_key, -300),
            "a deleted task pod's token": deleted_token,
            "a token of a pod that is no task pod": _token(kube, _plain_pod(kube, namespace, "plain")),
            "a task pod's token for another audience": _token(kube, live, audience="https://kubernetes.default.svc")}


def test_a_hostile_tool_in_a_real_task_pod_can_touch_no_other_tenant(
        callout_cluster: tuple[NatsServer, OperatorProcess], kubectl: Kubectl, kube: Kube, devenv: DevEnvironment,
        tenants: tuple[str, str]) -> None:
    server, op = callout_cluster
    victim, attacker = tenants
    apply(kubectl, victim, workflow("payroll", [{"id": "a", "tool": "slow", "with": {"seconds": 8}}],
                                    tools=[{"id": "slow", "python": PY_SLOW}], output={"a": "{{ tasks.a.output }}"}),
          execution("payroll-1", "payroll"))
    wait_for(lambda: execution_status(kubectl, victim, "payroll-1").get("tasks", {}).get("a", {}).get("startedAt"),
             60, "the victim's task to start (its pod logged in through the callout)")
    uid = kubectl.ok("get", "wfx", "payroll-1", "-n", victim, "-o", "jsonpath={.metadata.uid}")
    stolen = _stolen_tokens(kube, devenv, victim)
    apply(kubectl, attacker, workflow("probe", [{"id": "h", "tool": "hostile",
                                                 "with": {"victim": victim, "execution": "payroll-1", "uid": uid,
                                                          "stolen": stolen}}],
                                      tools=[{"id": "hostile", "python": HOSTILE}], output={"h": "{{ tasks.h.output }}"}),
          execution("probe-1", "probe"))
    probe = wait_finished(kubectl, attacker, "probe-1", timeout=90)
    assert probe["phase"] == "Succeeded", probe
    result = probe["tasks"]["h"]["output"]
    print("\nattacks:", json.dumps(result.get("refused"), indent=1))
    assert result["env"] == {"COMPOZY_NATS_TOKEN": False, "COMPOZY_NATS_TOKEN_FILE": False}
    assert result["own command readable"] is True  # the identity works for what is its own
    assert result["refused"] and all(result["refused"].values()), result["refused"]
    assert {f"connect with {what}" for what in stolen} <= set(result["refused"]), "every stolen token was tried"

    status = wait_finished(kubectl, victim, "payroll-1", timeout=60)
    assert status["phase"] == "Succeeded", status
    assert status["output"] == {"a": {"slept": 8}}
    assert status["tasks"]["a"]["output"] == {"slept": 8} and status["tasks"]["a"]["attempt"] == 1
    assert "pwned" not in json.dumps(status)

    # the attacker's token once its pod has ended (and been deleted): refused
    wait_for(lambda: all((p.get("status") or {}).get("phase") in ("Succeeded", "Failed")
                         for p in kube.get(f"/api/v1/namespaces/{attacker}/pods")["items"]), 60,
             "the attacker's pod to end")
    error = asyncio.run(_refused(server.url, result["token"]))
    assert error is not None and "authorization" in error.lower(), error

    # the pod watch tells the callout each ended pod (as its event arrives): their connections are
    # closed (or already were)
    def kicks() -> str | None:
        text = op.metrics()
        ended = sum(_metric(text, "compozy_nats_kicks_total", f'{{result="{r}"}}') for r in ("kicked", "gone"))
        return text if ended >= 2 else None

    metrics = wait_for(kicks, 30, "the ended pods' connections to be closed")
    granted = _metric(metrics, "compozy_nats_auth_total", '{result="granted"}')
    assert granted >= 3  # the victim's pod, the attacker's runner and the tool's own connection
    assert _metric(metrics, "compozy_nats_kicks_total", '{result="error"}') == 0
    count = _metric(metrics, "compozy_nats_auth_duration_seconds_count")
    total = _metric(metrics, "compozy_nats_auth_duration_seconds_sum")
    print(f"callout answers: {count:.0f}, mean {1000 * total / max(count, 1):.1f} ms; "
          f"victim task started {status['tasks']['a'].get('startedAt')}")


def test_no_nats_token_in_a_callout_task_pod(callout_cluster: tuple[NatsServer, OperatorProcess],
                                             kubectl: Kubectl, kube: Kube, tenants: tuple[str, str]) -> None:
    """The pod spec, the namespace's NATS Secret, the runner's (and a python tool's) environment and a
    command tool's: no shared token, no operator credentials, no NATS token value anywhere."""
    server, _ = callout_cluster
    namespace = tenants[0]
    auth = server.callout
    assert auth is not None
    apply(kubectl, namespace, workflow("env", [{"id": "py", "tool": "py", "onSuccess": {"next": "cmd"}},
                                               {"id": "cmd", "tool": "cmd"}],
                                       tools=[{"id": "py", "python": ENV_PY}, {"id": "cmd", "command": ENV_TOOL}],
                                       output={"py": "{{ tasks.py.output }}", "cmd": "{{ tasks.cmd.output }}"}),
          execution("env-1", "env"))
    pod = wait_for(lambda: next(iter(kube.get(f"/api/v1/namespaces/{namespace}/pods").get("items") or []), None),
                   60, "a task pod")
    status = wait_finished(kubectl, namespace, "env-1", timeout=90)
    assert status["phase"] == "Succeeded", status

    container = pod["spec"]["containers"][0]
    assert "COMPOZY_NATS_TOKEN" not in {e["name"] for e in container["env"]}
    assert all(e.get("valueFrom", {}).get("secretKeyRef", {}).get("key") != "token" for e in container["env"])
    assert pod["spec"]["automountServiceAccountToken"] is False
    secret = kube.get(f"/api/v1/namespaces/{namespace}/secrets/compozy-nats")
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(data) == {"url"} and data["url"] == server.url

    py, cmd = status["output"]["py"], status["output"]["cmd"]
    for text in (json.dumps(py["env"]), py["proc"], json.dumps(cmd["env"])):
        assert auth.operator_password not in text and auth.callout_password not in text
        assert auth.state_password not in text
        assert auth.issuer_seed not in text
        assert "eyJ" not in text  # no JWT (a ServiceAccount token) in any environment
    assert "COMPOZY_NATS_TOKEN" not in py["env"] and "COMPOZY_NATS_TOKEN_FILE" not in py["env"]
    assert "COMPOZY_NATS_TOKEN" not in cmd["env"] and "COMPOZY_NATS_TOKEN_FILE" not in cmd["env"]
