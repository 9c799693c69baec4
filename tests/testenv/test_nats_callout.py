"""The NATS auth callout (issue 12) against the real nats-server (callout mode) and API server.

A task pod object (owned by a real WorkflowExecution, kept unscheduled: the object is what the
callout checks) gets a ServiceAccount token bound to it with audience ``compozy-nats``
(TokenRequest, as a projected volume would), connects with it, and the real callout service
answers the server after TokenReview and a look at the pod. The server enforces the grant: the
attempt's own subjects work (through the runner's own Bus calls, and the real runner process),
everything else is refused by the server itself; tokens that are not a live task pod's are refused
at connect."""

from __future__ import annotations

import asyncio
import contextlib
import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY

from compozy_operator.resources.models import API_VERSION
from compozy_operator.bus import Bus
from compozy_operator.events import (COMMAND_STREAM, STATE_CONSUMER, STATE_STREAM, EventType, Publisher, cancel_subject,
                                     claim_subject, command_subject, event_id, inbox_prefix, log_subject, make_event,
                                     output_key, state_subject)
from compozy_operator.kube import ApiException, Kube
from compozy_operator.nats_auth.callout import CalloutConfig, CalloutService
from compozy_operator.nats_auth.keys import SYSTEM_USER, load_or_create
from compozy_operator.nats_auth.permissions import API_INBOX, STATE_INBOX
from compozy_operator.state_manager import consumer_config
from compozy_operator.pods import task_pod
from compozy_operator.settings import Settings
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.helm import chart_dir
from compozy_operator.testenv.natsserver import NatsServer
from compozy_operator.testenv.node.volumes import service_account_token
from compozy_operator.testenv.workdir import free_port
from tests.helpers import Kubectl, apply_crds, wait_for

AUDIENCE = "compozy-nats"
TASK = "probe"
UNSCHEDULABLE = {"compozy.dev/test-never-scheduled": "true"}  # the pod object is enough: no node runs it


def chart_nats_conf(devenv: DevEnvironment) -> str:
    """The nats.conf the Helm chart renders for its bundled server with the default values."""
    out = subprocess.run([str(devenv.bindir / "helm"), "template", "compozy", str(chart_dir()), "-n", "compozy-system",
                          "--show-only", "templates/nats.yaml"], capture_output=True, text=True, check=True)
    config_map = next(d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "ConfigMap")
    return config_map["data"]["nats.conf"]


@pytest.fixture(scope="module", params=["testenv", "chart"])
def callout_nats(devenv: DevEnvironment, tmp_path_factory: pytest.TempPathFactory,
                 request: pytest.FixtureRequest) -> Iterator[NatsServer]:
    """A callout-mode nats-server: with this project's test configuration, and with the one the
    Helm chart renders (the same tests prove both)."""
    apply_crds(Kubectl(devenv.bindir, devenv.kubeconfig))
    conf = chart_nats_conf(devenv) if request.param == "chart" else None
    server = NatsServer(devenv.bindir, tmp_path_factory.mktemp("callout") / "nats", callout=True,
                        chart_conf=conf).start()
    try:
        async def streams() -> None:
            bus = await _operator(server)
            await bus.ensure_streams()
            await bus.close()

        asyncio.run(streams())
        yield server
    finally:
        server.stop()


async def _operator(server: NatsServer) -> Bus:
    """The operator's connection: a configured user with full rights (it skips the callout)."""
    bus = Bus(server.operator_url, None, "operator")
    await bus.connect(attempts=3)
    return bus


@asynccontextmanager
async def _callout(server: NatsServer, kube: Kube) -> AsyncIterator[CalloutService]:
    auth = server.callout
    assert auth is not None
    service = await CalloutService(CalloutConfig(server.url, auth.issuer_seed, auth.account, user=auth.callout_user,
                                                 password=auth.callout_password, system_user=SYSTEM_USER,
                                                 system_password=auth.keys.system_password), kube).start()
    try:
        yield service
    finally:
        await service.stop()


def _execution(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    """A WorkflowExecution to own the pod (cancelled and naming no Workflow: an operator running in
    the same session starts no task of it)."""
    return kube.create(f"/apis/{API_VERSION}/namespaces/{namespace}/workflowexecutions", {
        "apiVersion": API_VERSION, "kind": "WorkflowExecution", "metadata": {"name": name},
        "spec": {"workflowRef": {"name": f"absent-{uuid.uuid4().hex[:6]}"}, "cancel": True}})


def _task_pod(kube: Kube, execution: dict[str, Any], task: str = TASK, attempt: int = 1) -> dict[str, Any]:
    """The pod the operator would create for the attempt (kept unscheduled)."""
    pod = task_pod(Settings(), execution, task, attempt, nonce=f"nonce-{task}-{attempt}")
    pod["spec"]["nodeSelector"] = UNSCHEDULABLE
    return kube.create(f"/api/v1/namespaces/{execution['metadata']['namespace']}/pods", pod)


def _plain_pod(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return kube.create(f"/api/v1/namespaces/{namespace}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeSelector": UNSCHEDULABLE, "containers": [{"name": "c", "image": "compozy/none"}]}})


def _token(kube: Kube, pod: dict[str, Any], audience: str = AUDIENCE) -> str:
    return service_account_token(kube, pod, audience, 600)


def _resigned(token: str, signing_key: Path, expires_in: int) -> str:
    """``token`` as the API server would have issued it 15 minutes ago, expiring ``expires_in``
    seconds from now (negative: expired): the same header (key id) and claims, signed with the
    cluster's service-account key."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header, claims, _ = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    now = int(time.time())
    body.update(iat=now - 900, nbf=now - 900, exp=now + expires_in)
    signing_input = f"{header}.{b64(json.dumps(body).encode())}"
    key = serialization.load_pem_private_key(signing_key.read_bytes(), None)
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())  # type: ignore[union-attr, call-arg, arg-type]
    return f"{signing_input}.{b64(signature)}"


def _refusals(reason: str) -> float:
    return REGISTRY.get_sample_value("compozy_nats_auth_total", {"result": reason}) or 0.0


class Probe:
    """A raw connection that records what the server refused it (``-ERR`` permission violations)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Client | None = None

    async def connect(self, url: str, token: str | None, prefix: str = "_INBOX") -> Probe:
        async def on_error(e: Exception) -> None:
            self.errors.append(str(e))

        self.nc = await nats.connect(url, token=token, inbox_prefix=prefix, allow_reconnect=False,
                                     connect_timeout=5, error_cb=on_error)
        return self

    async def requests_refused(self, *subjects: str) -> dict[str, bool]:
        """Whether the server refused a request on each of ``subjects`` (and nothing answered it)."""
        assert self.nc is not None
        out = {}
        for subject in subjects:
            try:
                await self.nc.request(subject, b"{}", timeout=1)
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                pass
            out[subject] = await self.refused(subject)
        return out

    async def refused(self, what: str) -> bool:
        """Whether the server has reported a permissions violation naming ``what``."""
        assert self.nc is not None
        await self.nc.flush(timeout=5)
        for _ in range(20):
            if any("permissions violation" in e.lower() and what.lower() in e.lower() for e in self.errors):
                return True
            await asyncio.sleep(0.05)
        return False


async def _stored(op: Bus, stream: str, subject: str) -> bytes:
    """The last message stored on ``subject`` (a core publish is stored a moment after it is sent)."""
    assert op.js is not None
    for _ in range(50):
        try:
            return (await op.js.get_last_msg(stream, subject)).data
        except NotFoundError:
            await asyncio.sleep(0.1)
    raise AssertionError(f"nothing stored on {subject}")


async def _connect_refused(url: str, token: str | None) -> str:
    """The error of a connection the server does not authorize (it never connects)."""
    try:
        nc = await nats.connect(url, token=token, allow_reconnect=False, connect_timeout=5, max_reconnect_attempts=0)
    except Exception as e:  # noqa: BLE001 - what nats-py raises for a refused CONNECT
        return f"{type(e).__name__}: {e}"
    await nc.close()
    raise AssertionError("the server authorized a connection it should have refused")


def test_a_task_pod_gets_exactly_its_attempts_subjects(callout_nats: NatsServer, kube: Kube, namespace: str,
                                                       devenv: DevEnvironment) -> None:
    execution = _execution(kube, namespace, "run-a")
    uid = execution["metadata"]["uid"]
    pod = _task_pod(kube, execution)
    token = _token(kube, pod)
    own_command = command_subject(namespace, "run-a", TASK, 1)
    foreign_command = command_subject(namespace, "run-b", TASK, 1)
    victim_command = command_subject("victim", "run-v", TASK, 1)
    prefix = inbox_prefix(namespace, "run-a", TASK, 1)

    async def scenario() -> dict[str, Any]:
        out: dict[str, Any] = {}
        op = await _operator(callout_nats)
        for subject, body in ((own_command, {"mine": True}), (foreign_command, {"other": "run"}),
                              (victim_command, {"DB_PASSWORD": "victim's"})):
            await op.publish_command(subject, body, uuid.uuid4().hex)
        async with _callout(callout_nats, kube):
            # the runner's own calls, as the runner's Bus makes them (token = the pod's token)
            bus = Bus(callout_nats.url, token, "task-run-a-probe-1", inbox_prefix=prefix)
            await bus.connect(attempts=1)
            out["command"] = await bus.get_command(own_command)
            out["claim"] = await bus.claim(claim_subject(namespace, "run-a", uid, TASK, 1), pod["metadata"]["uid"])
            event = make_event(EventType.TASK_STARTED, "compozy/task-executor", namespace, "run-a", uid, TASK, 1,
                               publisher=Publisher.ATTEMPT, podName=pod["metadata"]["name"])
            out["event_seq"] = await bus.publish_event(event)
            await bus.emit_log(namespace, "run-a", uid, "runtime", "info", "hello", Publisher.ATTEMPT, task=TASK,
                               attempt=1)
            value = {"blob": "x" * 300_000}  # three chunks
            ref = await bus.put_output(output_key(namespace, "run-a", uid, TASK, 1), json.dumps(value).encode())
            cancelled = asyncio.Event()
            assert bus.nc is not None

            async def on_cancel(_msg: Any) -> None:
                cancelled.set()

            await bus.nc.subscribe(cancel_subject(namespace, "run-a"), cb=on_cancel)
            await bus.nc.flush()
            for _ in range(10):  # core NATS: at most once (seen lost once under a loaded CI); ask again
                await op.nc.publish(cancel_subject(namespace, "run-a"), b"{}")  # type: ignore[union-attr]
                await op.nc.flush()  # type: ignore[union-attr]
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(cancelled.wait(), 1)
                    break
            assert cancelled.is_set(), "the attempt's connection never received its execution's cancel"
            await bus.close()
            # ... and the operator sees all of it
            assert op.js is not None
            out["stored_event"] = (await op.js.get_last_msg(STATE_STREAM, event.subject)).seq
            out["log"] = await _stored(op, "COMPOZY_LOGS", log_subject(namespace, "run-a", uid, "runtime", TASK, 1))
            out["output"] = await op.get_output(ref) == value

            # everything else: refused by the server itself
            c = await Probe().connect(callout_nats.url, token, prefix)
            assert c.nc is not None
            js = c.nc.jetstream(timeout=1)
            forged = make_event(EventType.TASK_SUCCESS, "x", namespace, "run-b", "uid-b", TASK, 1,
                                publisher=Publisher.ATTEMPT)
            workflow = make_event(EventType.WORKFLOW_SUCCESS, "x", namespace, "run-a", uid)
            probes = {
                "another execution's state": (forged.subject, STATE_STREAM),
                "its workflow's success": (workflow.subject, STATE_STREAM),
                "its own command (forged)": (own_command, COMMAND_STREAM),
            }
            out["publishes"] = {}
            for what, (subject, stream) in probes.items():
                try:
                    await js.publish(subject, b"{}", stream=stream)
                    out["publishes"][what] = "stored"
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    out["publishes"][what] = "no answer"
                out[f"violation: {what}"] = await c.refused(subject)
            for what, subject in (("foreign command", foreign_command), ("victim command", victim_command)):
                try:
                    await js.get_last_msg(COMMAND_STREAM, subject, direct=True)
                    out[what] = "read"
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    out[what] = "no answer"
                out[f"violation: {what}"] = await c.refused(f"DIRECT.GET.{COMMAND_STREAM}.{subject}")
            try:
                await c.nc.request("$JS.API.STREAM.DELETE.COMPOZY_STATE", b"", timeout=1)
                out["delete"] = "answered"
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                out["delete"] = "no answer"
            out["violation: delete"] = await c.refused("$JS.API.STREAM.DELETE.COMPOZY_STATE")
            seen: list[str] = []

            async def spy(msg: Any) -> None:
                seen.append(msg.subject)

            for subject in ("compozy.>", "_INBOX.>", "compozy.cmd.victim.>"):
                await c.nc.subscribe(subject, cb=spy)
                out[f"violation: sub {subject}"] = await c.refused(f'Subscription to "{subject}"')
            await op.nc.publish("compozy.cmd.victim.run-v.workflow.cancel", b"{}")  # type: ignore[union-attr]
            await op.nc.publish(f"compozy.state.{namespace}.run-a.workflow.WorkflowExecutionStarted", b"{}")  # type: ignore[union-attr]
            await asyncio.sleep(0.3)
            out["spied"] = seen
            await c.nc.close()
        out["stream_kept"] = (await op.js.stream_info(STATE_STREAM)).config.name
        try:
            await op.js.get_last_msg(STATE_STREAM, forged.subject)
            out["forged_stored"] = True
        except NotFoundError:
            out["forged_stored"] = False
        await op.close()
        return out

    out = asyncio.run(scenario())
    assert out["command"] == (own_command, {"mine": True})
    assert out["claim"] is None  # claimed: it is this pod's
    assert out["stored_event"] == out["event_seq"]
    assert b'"hello"' in out["log"]
    assert out["output"] is True, "the operator did not read back the output"
    assert out["publishes"] == dict.fromkeys(out["publishes"], "no answer"), out["publishes"]
    assert out["foreign command"] == out["victim command"] == "no answer"
    assert out["delete"] == "no answer" and out["stream_kept"] == STATE_STREAM
    violations = {k: v for k, v in out.items() if k.startswith("violation")}
    assert all(violations.values()), violations
    assert out["spied"] == []
    assert out["forged_stored"] is False


def test_the_real_runner_runs_its_attempt_through_the_callout(callout_nats: NatsServer, kube: Kube, namespace: str,
                                                              tmp_path: Path) -> None:
    """``compozy task run`` with the pod's token as its NATS token: command, claim, events, logs and
    a large output, all through its callout identity, with no permission violation."""
    execution = _execution(kube, namespace, "run-r")
    meta = execution["metadata"]
    pod = _task_pod(kube, execution)
    token = _token(kube, pod)
    tool = ("def run(input, ctx):\n    ctx.log.info('big output')\n    return {'blob': 'x' * 200_000}\n")

    async def scenario() -> tuple[int, list[str], str]:
        op = await _operator(callout_nats)
        command = {"namespace": namespace, "execution": "run-r", "uid": meta["uid"], "task": TASK, "attempt": 1,
                   "nonce": f"nonce-{TASK}-1", "tool": {"id": "big", "python": tool}, "input": {},
                   "outputInlineLimit": 1024}
        await op.publish_command(command_subject(namespace, "run-r", TASK, 1), command,
                                 event_id(meta["uid"], TASK, 1, "TaskExecute", command["nonce"]))
        async with _callout(callout_nats, kube):
            env = {**os.environ, "COMPOZY_NAMESPACE": namespace, "COMPOZY_EXECUTION": "run-r",
                   "COMPOZY_EXECUTION_UID": meta["uid"], "COMPOZY_TASK": TASK, "COMPOZY_ATTEMPT": "1",
                   "POD_NAME": pod["metadata"]["name"], "POD_UID": pod["metadata"]["uid"],
                   "COMPOZY_COMMAND_NONCE": f"nonce-{TASK}-1", "COMPOZY_NATS_URL": callout_nats.url,
                   "COMPOZY_NATS_TOKEN": token, "COMPOZY_TERMINATION_LOG": str(tmp_path / "termination")}
            log_path = tmp_path / "runner.log"
            with log_path.open("wb") as log:
                proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "compozy_operator.cli", "task", "run",
                                                            env=env, stdout=log, stderr=subprocess.STDOUT)
                code = await asyncio.wait_for(proc.wait(), 90)
        events = [e.type for _, e in await op.replay(f"compozy.state.{namespace}.run-r.>")]
        await op.close()
        return code, events, log_path.read_text()

    code, events, log = asyncio.run(scenario())
    assert code == 0, log
    assert "ermission" not in log, log
    assert events == ["TaskExecutionStarted", "ToolExecutionStarted", "ToolExecutionSuccess", "TaskExecutionSuccess"]


def test_tokens_that_are_not_a_live_task_pods_are_refused(callout_nats: NatsServer, kube: Kube, namespace: str,
                                                          devenv: DevEnvironment) -> None:
    execution = _execution(kube, namespace, "run-a")
    pod = _task_pod(kube, execution)
    wrong_audience = _token(kube, pod, audience="https://kubernetes.default.svc")
    plain = _plain_pod(kube, namespace, "not-a-task")
    plain_token = _token(kube, plain)
    doomed = _task_pod(kube, execution, attempt=2)
    doomed_token = _token(kube, doomed)
    kube.delete(f"/api/v1/namespaces/{namespace}/pods/{doomed['metadata']['name']}", {"gracePeriodSeconds": 0})

    def gone() -> bool:
        try:
            kube.get(f"/api/v1/namespaces/{namespace}/pods/{doomed['metadata']['name']}")
        except ApiException as e:
            return e.status == 404
        return False

    wait_for(gone, 30, "the deleted pod to be gone")
    cases = {
        "no token": (None, "no_token"),
        "not a token": ("not-a-token", "unauthenticated"),
        "another audience": (wrong_audience, "unauthenticated"),
        "a pod that is no task pod": (plain_token, "not_a_task_pod"),
        "a deleted pod's token": (doomed_token, "unauthenticated"),
        "an expired token of a live task pod": (_resigned(_token(kube, pod), devenv.cluster.pki.sa_key, -300), "unauthenticated"),
        "the operator's password as a token": (callout_nats.callout.operator_password, "unauthenticated"),  # type: ignore[union-attr]
    }

    async def scenario() -> dict[str, tuple[str, float]]:
        out = {}
        async with _callout(callout_nats, kube):
            for what, (token, reason) in cases.items():
                before = _refusals(reason)
                error = await _connect_refused(callout_nats.url, token)
                out[what] = (error, _refusals(reason) - before)
        return out

    out = asyncio.run(scenario())
    for what, (error, counted) in out.items():
        assert "uthorization" in error, f"{what}: {error}"
        assert counted == 1, f"{what}: counted {counted} under {cases[what][1]}"

    async def control() -> None:  # the same re-signing with a future expiry is accepted: only exp differs
        async with _callout(callout_nats, kube):
            c = await Probe().connect(callout_nats.url, _resigned(_token(kube, pod), devenv.cluster.pki.sa_key, 300))
            assert c.nc is not None and c.nc.is_connected
            await c.nc.close()

    asyncio.run(control())


def test_another_namespaces_task_pod_gets_only_its_own(callout_nats: NatsServer, kube: Kube, namespace: str,
                                                        devenv: DevEnvironment) -> None:
    """A task pod of tenant B is granted B's attempt, never A's: A's command stays unreadable."""
    other = f"{namespace[:50]}-b"
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    try:
        devenv.cluster.wait_default_service_account(other)
        mine = _execution(kube, other, "run-a")  # the same execution name as the victim's
        token = _token(kube, _task_pod(kube, mine))
        victim = command_subject(namespace, "run-a", TASK, 1)

        async def scenario() -> tuple[Any, Any, bool]:
            op = await _operator(callout_nats)
            await op.publish_command(victim, {"DB_PASSWORD": "victim's"}, uuid.uuid4().hex)
            await op.publish_command(command_subject(other, "run-a", TASK, 1), {"mine": True}, uuid.uuid4().hex)
            async with _callout(callout_nats, kube):
                c = await Probe().connect(callout_nats.url, token, inbox_prefix(other, "run-a", TASK, 1))
                assert c.nc is not None
                js = c.nc.jetstream(timeout=1)
                own = (await js.get_last_msg(COMMAND_STREAM, command_subject(other, "run-a", TASK, 1), direct=True)).data
                try:
                    stolen: Any = (await js.get_last_msg(COMMAND_STREAM, victim, direct=True)).data
                except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                    stolen = None
                refused = await c.refused(victim)
                await c.nc.close()
            await op.close()
            return own, stolen, refused

        own, stolen, refused = asyncio.run(scenario())
        assert own == b'{"mine": true}'
        assert stolen is None and refused
    finally:
        kube.delete(f"/api/v1/namespaces/{other}")


def test_the_callout_fails_closed_when_the_api_server_is_unreachable(callout_nats: NatsServer, kube: Kube,
                                                                     namespace: str, devenv: DevEnvironment,
                                                                     tmp_path: Path) -> None:
    token = _token(kube, _task_pod(kube, _execution(kube, namespace, "run-a")))
    config = yaml.safe_load(devenv.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"  # nothing listens there
    (tmp_path / "kubeconfig").write_text(yaml.safe_dump(config))
    unreachable = Kube.from_kubeconfig(tmp_path / "kubeconfig")

    async def scenario() -> tuple[str, float]:
        before = _refusals("error")
        async with _callout(callout_nats, unreachable):
            error = await _connect_refused(callout_nats.url, token)
        return error, _refusals("error") - before

    try:
        error, counted = asyncio.run(scenario())
    finally:
        unreachable.close()
    assert "uthorization" in error and counted == 1


def test_the_operator_makes_the_callout_secret_once(kube: Kube, namespace: str) -> None:
    """At first start the operator creates the callout Secret; later starts (and a second replica
    racing it) read the same keys; a Secret with a broken key is named, never replaced."""
    first = load_or_create(kube, namespace, "keys")
    assert load_or_create(kube, namespace, "keys") == first
    stored = kube.get(f"/api/v1/namespaces/{namespace}/secrets/keys")
    assert stored["metadata"]["labels"]["app.kubernetes.io/component"] == "nats-auth"
    with pytest.raises(ApiException) as e:
        load_or_create(kube, namespace, "absent", create=False)
    assert e.value.status == 404
    kube.create(f"/api/v1/namespaces/{namespace}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "broken"}, "stringData": {"issuer-seed": "x"}})
    with pytest.raises(ValueError, match=f"Secret {namespace}/broken lacks operator-password, state-password, callout-password, system-password, api-password"):
        load_or_create(kube, namespace, "broken")


def test_the_state_managers_user_may_only_read_through_its_consumer(callout_nats: NatsServer) -> None:
    """The state manager's own NATS user (docs/security.md): it creates and reads its durable
    consumer of the state stream and acknowledges, through the same Bus calls as StateManager; it
    cannot publish an event or a command, read a command, subscribe to events, or delete, purge or
    read the streams otherwise (the server refuses each)."""
    auth = callout_nats.callout
    assert auth is not None
    url = callout_nats.url_for(auth.state_user, auth.state_password)
    subject = state_subject("ns-a", "run-s", EventType.WORKFLOW_STARTED)
    command = command_subject("ns-a", "run-s", TASK, 1)

    async def scenario() -> tuple[list[str], dict[str, bool]]:
        op = await _operator(callout_nats)
        await op.publish_event(make_event(EventType.WORKFLOW_STARTED, "operator", "ns-a", "run-s", "uid-s"))
        state = Bus(url, None, "state", inbox_prefix=STATE_INBOX)
        await state.connect(attempts=3)
        sub = await state.durable_pull(STATE_STREAM, consumer_config())
        seen: list[str] = []
        while subject not in seen:
            for m in await sub.fetch(50, timeout=5):
                seen.append(m.subject)
                await m.ack()
        assert await state.consumer_position(STATE_STREAM, STATE_CONSUMER) is not None
        await state.close()

        probe = await Probe().connect(url, None, STATE_INBOX)
        assert probe.nc is not None
        refused = {}
        for what in (subject, command):
            await probe.nc.publish(what, b"{}")
            refused[f"publish {what}"] = await probe.refused(what)
        await probe.nc.subscribe("compozy.>")
        refused["subscribe compozy.>"] = await probe.refused("compozy.>")
        refused.update(await probe.requests_refused(
            f"$JS.API.STREAM.DELETE.{STATE_STREAM}", f"$JS.API.STREAM.PURGE.{STATE_STREAM}",
            f"$JS.API.DIRECT.GET.{COMMAND_STREAM}.{command}", f"$JS.API.CONSUMER.CREATE.{STATE_STREAM}.spy",
            f"$JS.API.STREAM.MSG.GET.{STATE_STREAM}", f"$JS.API.CONSUMER.DELETE.{STATE_STREAM}.{STATE_CONSUMER}"))
        await probe.nc.close()
        await op.close()
        return seen, refused

    seen, refused = asyncio.run(scenario())
    assert subject in seen
    assert all(refused.values()), refused


def test_a_pods_connections_are_closed_when_it_ends(callout_nats: NatsServer, kube: Kube, namespace: str) -> None:
    """A token taken out of a pod stops working with the pod: the connections granted to it are
    kicked through the system account (not left until the JWT's expiry); another pod's stay up."""
    execution = _execution(kube, namespace, "run-k")
    ending, other = _task_pod(kube, execution), _task_pod(kube, execution, attempt=2)

    async def scenario() -> tuple[bool, bool, bool, float]:
        async with _callout(callout_nats, kube) as service:
            stolen = await Probe().connect(callout_nats.url, _token(kube, ending))
            own = await Probe().connect(callout_nats.url, _token(kube, other))
            assert stolen.nc is not None and own.nc is not None
            before = REGISTRY.get_sample_value("compozy_nats_kicks_total", {"result": "kicked"}) or 0.0
            await service.end_pod(ending["metadata"]["uid"])
            for _ in range(50):
                if stolen.nc.is_closed:
                    break
                await asyncio.sleep(0.1)
            kicked = (REGISTRY.get_sample_value("compozy_nats_kicks_total", {"result": "kicked"}) or 0.0) - before
            result = stolen.nc.is_closed, own.nc.is_connected, ending["metadata"]["uid"] not in service.connections
            await own.nc.close()
            return (*result, kicked)

    closed, other_up, forgotten, kicked = asyncio.run(scenario())
    assert closed, "the ended pod's connection is still open"
    assert other_up and forgotten and kicked == 1


async def _request(nc: Any, subject: str, tries: int = 5) -> bytes:
    """A request, asked again after "no responders": once, under heavy load (a full suite beside
    other test runs), the answering subscription was not yet seen by the server after its flush."""
    for _ in range(tries - 1):
        try:
            return (await nc.request(subject, b"{}", timeout=5)).data
        except nats.errors.NoRespondersError:
            await asyncio.sleep(0.3)
    return (await nc.request(subject, b"{}", timeout=5)).data


def test_api_services_user_reads_streams_and_answers_triggers_only(callout_nats: NatsServer) -> None:
    """api.Service's own NATS user (docs/security.md): its real Streams replay a run's state events
    and log lines through ephemeral consumers, it writes its request lines and answers the NATS
    trigger; it cannot publish an event or a command, read a command, touch the state manager's
    consumer (read, change or delete it), delete a stream or subscribe to events."""
    from compozy_operator.api_service.streams import Streams
    auth = callout_nats.callout
    assert auth is not None
    url = callout_nats.url_for(auth.api_user, auth.keys.api_password)
    ns, run, uid = "ns-p", "run-p", "uid-p"
    command = command_subject(ns, run, TASK, 1)

    async def state() -> tuple[str, str]:
        return uid, "Succeeded"

    async def scenario() -> tuple[list[str], list[str], bytes, dict[str, bool]]:
        op = await _operator(callout_nats)
        for etype in (EventType.WORKFLOW_STARTED, EventType.WORKFLOW_SUCCESS):
            await op.publish_event(make_event(etype, "operator", ns, run, uid))
        await op.emit_log(ns, run, uid, "orchestrator", "info", "started")
        api = Bus(url, None, "api", inbox_prefix=API_INBOX)
        await api.connect(attempts=3)
        await api.emit_log(ns, run, uid, "api", "info", "a request")
        streams = Streams(api, 10)
        events = [e async for e in await streams.events(ns, run, uid, state)]
        await asyncio.sleep(0.5)  # the api line is stored
        lines = [line async for line in await streams.logs(ns, run, uid, state, task=None, attempt=None, follow=False)]
        assert api.nc is not None

        async def answer(msg: Any) -> None:
            await msg.respond(b'{"name": "x"}')

        await api.nc.subscribe(f"compozy.api.{ns}.workflow.trigger", queue="compozy-api", cb=answer)
        await api.nc.flush()
        assert op.nc is not None
        reply = await _request(op.nc, f"compozy.api.{ns}.workflow.trigger")
        await api.close()

        probe = await Probe().connect(url, None, API_INBOX)
        assert probe.nc is not None
        refused = {}
        for what in (state_subject(ns, run, EventType.WORKFLOW_FAILED), command):
            await probe.nc.publish(what, b"{}")
            refused[f"publish {what}"] = await probe.refused(what)
        await probe.nc.subscribe("compozy.>")
        refused["subscribe compozy.>"] = await probe.refused("compozy.>")
        refused.update(await probe.requests_refused(
            f"$JS.API.CONSUMER.MSG.NEXT.{STATE_STREAM}.{STATE_CONSUMER}",
            f"$JS.API.CONSUMER.CREATE.{STATE_STREAM}.{STATE_CONSUMER}",
            f"$JS.API.CONSUMER.DELETE.{STATE_STREAM}.{STATE_CONSUMER}",
            f"$JS.API.STREAM.DELETE.{STATE_STREAM}", f"$JS.API.DIRECT.GET.{COMMAND_STREAM}.{command}"))
        await probe.nc.close()
        await op.close()
        return events, lines, reply, refused

    events, lines, reply, refused = asyncio.run(scenario())
    assert [e.split("\n")[1] for e in events if e.startswith("id:")] == \
        ["event: WorkflowExecutionStarted", "event: WorkflowExecutionSuccess"]
    assert [line.split(" ", 1)[1] for line in lines] == ["orchestrator - info started\n", "api - info a request\n"]
    assert reply == b'{"name": "x"}'
    assert all(refused.values()), refused
