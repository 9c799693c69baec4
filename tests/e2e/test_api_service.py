"""api.Service end to end (issue 13): the HTTP API and the NATS trigger of the session operator,
called with real ServiceAccount tokens (TokenRequest), authorized by the real API server's RBAC.

Every endpoint of ARCHITECTURE.md §8 is called, with its refusals: no token (401), a token of a
ServiceAccount without the verb (403), another namespace (403), bad input (400 naming the field),
a missing Workflow or run (404), a conflict (409).
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import nats
import pytest
import requests

from compozy_operator.api_service.service import STATUS_HEADER, trigger_subject
from compozy_operator.execution_requests import LABEL_CREATED, LABEL_RESUBMITTED_FROM, LABEL_WORKFLOW, created_value
from compozy_operator.executor import epoch
from compozy_operator.kube import Kube
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.operator_process import OperatorProcess
from compozy_operator.testenv.pki import write_loopback_tls
from tests.helpers import Kubectl, wait_for

from .conftest import execution_status, wait_finished
from .test_workflows import apply, workflow

ALL_VERBS = ["get", "list", "create", "patch"]
LOG_LINE = re.compile(r"^(\S+) (\S+) (\S+) (\S+) (.*)$")
SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def service_account_token(kube: Kube, namespace: str, name: str, verbs: list[str],
                          role_namespace: str | None = None) -> str:
    """A token of a new ServiceAccount in ``namespace`` granted ``verbs`` on workflowexecutions in
    ``role_namespace`` (default: its own)."""
    where = role_namespace or namespace
    kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts",
                {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
    if verbs:
        rbac = "/apis/rbac.authorization.k8s.io/v1"
        kube.create(f"{rbac}/namespaces/{where}/roles", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": name},
            "rules": [{"apiGroups": ["compozy.dev"], "resources": ["workflowexecutions"], "verbs": verbs}]})
        kube.create(f"{rbac}/namespaces/{where}/rolebindings", {
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}]})
    review = kube.create(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                         {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                          "spec": {"expirationSeconds": 3600}})
    return review["status"]["token"]


class Api:
    """A caller of the API with one token."""

    def __init__(self, base: str, token: str | None) -> None:
        self.base, self.token = base, token

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def __call__(self, method: str, path: str, body: Any = None, **kw: Any) -> requests.Response:
        if body is not None:
            kw["json"] = body
        return requests.request(method, f"{self.base}/api/v1{path}", headers=self.headers(), timeout=60, **kw)

    def stream(self, path: str, **params: Any) -> requests.Response:
        return requests.get(f"{self.base}/api/v1{path}", headers=self.headers(), params=params, stream=True,
                            timeout=120)


def error_of(resp: requests.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json"), resp.headers
    error = resp.json()["error"]
    assert error["reason"] and error["message"], error
    return error


def sse_events(resp: requests.Response) -> list[dict[str, Any]]:
    """Every SSE event until the server closes the stream."""
    events, current = [], {}
    for raw in resp.iter_lines(decode_unicode=True):
        if raw == "":
            if "data" in current:
                events.append(current)
            current = {}
        elif not raw.startswith(":"):
            key, _, value = raw.partition(": ")
            current[key] = value
    return [{"id": int(e["id"]), "event": e["event"], "data": json.loads(e["data"])} for e in events]


@pytest.fixture
def setup(operator: OperatorProcess, kubectl: Kubectl, kube: Kube, namespace: str) -> Iterator[dict[str, Any]]:
    """A namespace with Workflows `ok` (one logging task), `slow`, `long`, `fails` and `typed` (input schema),
    and a caller allowed every verb of the API there."""
    apply(kubectl, namespace,
          workflow("ok", [{"id": "echo", "tool": "ok", "with": {"v": "{{ workflow.input }}"}}]),
          workflow("slow", [{"id": "nap", "tool": "slow", "with": {"seconds": 2}, "onSuccess": {"next": "echo"}},
                            {"id": "echo", "tool": "ok", "with": {"v": 1}}]),
          workflow("fails", [{"id": "broken", "tool": "fail", "with": {"why": "on purpose"}}]),
          workflow("long", [{"id": "nap", "tool": "slow", "with": {"seconds": 30}}]),
          workflow("typed", [{"id": "echo", "tool": "ok", "with": {"n": "{{ workflow.input.n }}"}}], input=SCHEMA))
    token = service_account_token(kube, namespace, "alice", ALL_VERBS)
    yield {"namespace": namespace, "api": Api(operator.api_url, token), "base": operator.api_url}


def trigger(api: Api, namespace: str, wf: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    resp = api("POST", f"/namespaces/{namespace}/workflows/{wf}/executions", body or {})
    assert resp.status_code == 201, resp.text
    return resp.json()


def test_trigger_get_list_and_logs_after_the_pods_are_gone(setup: dict[str, Any], kubectl: Kubectl,
                                                           kube: Kube) -> None:
    ns, api = setup["namespace"], setup["api"]
    created = trigger(api, ns, "ok", {"input": {"hello": "world"}, "labels": {"team": "a"}})
    assert created["namespace"] == ns and created["phase"] == "Pending" and created["name"].startswith("ok-")
    name = created["name"]
    status = wait_finished(kubectl, ns, name)
    assert status["phase"] == "Succeeded", status

    obj = api("GET", f"/namespaces/{ns}/executions/{name}").json()
    assert obj["metadata"]["uid"] == created["uid"]
    assert obj["metadata"]["labels"] == {"team": "a", LABEL_WORKFLOW: "ok",
                                         LABEL_CREATED: created_value(epoch(obj["metadata"]["creationTimestamp"]))}
    assert obj["status"]["phase"] == "Succeeded" and obj["spec"]["input"] == {"hello": "world"}

    # the task pods are gone (deleted once finished, and here deleted again for certain): the logs stay
    kubectl.ok("delete", "pods", "--all", "-n", ns, "--wait=true")
    assert kube.get(f"/api/v1/namespaces/{ns}/pods")["items"] == []
    text = api("GET", f"/namespaces/{ns}/executions/{name}/logs").text
    lines = [LOG_LINE.match(line) for line in text.splitlines()]
    assert lines and all(lines), text
    parsed = [m.groups() for m in lines if m]
    assert any(c == "runtime" and w == "echo[1]" and lvl == "info" and "got {'v': {'hello': 'world'}}" in msg
               for _, c, w, lvl, msg in parsed), text
    assert any(c == "orchestrator" and w == "-" and "started workflow ok" in msg for _, c, w, _, msg in parsed), text
    assert any(c == "orchestrator" and w == "echo[1]" and "dispatched task echo" in msg
               for _, c, w, _, msg in parsed), text
    only = api("GET", f"/namespaces/{ns}/executions/{name}/logs", params={"task": "echo", "attempt": 1}).text
    assert only and all(line.split()[2] == "echo[1]" for line in only.splitlines()), only
    assert api("GET", f"/namespaces/{ns}/executions/{name}/logs", params={"task": "echo", "attempt": 2}).text == ""

    other = trigger(api, ns, "fails")
    wait_finished(kubectl, ns, other["name"])
    names = {i["metadata"]["name"] for i in api("GET", f"/namespaces/{ns}/executions").json()["items"]}
    assert names == {name, other["name"]}
    by_wf = api("GET", f"/namespaces/{ns}/executions", params={"workflow": "ok"}).json()
    assert [i["metadata"]["name"] for i in by_wf["items"]] == [name] and by_wf["items"][0]["kind"] == "WorkflowExecution"
    failed = api("GET", f"/namespaces/{ns}/executions", params={"phase": "Failed"}).json()
    assert [i["metadata"]["name"] for i in failed["items"]] == [other["name"]]
    labelled = api("GET", f"/namespaces/{ns}/executions", params={"labelSelector": "team=a"}).json()
    assert [i["metadata"]["name"] for i in labelled["items"]] == [name]
    first = api("GET", f"/namespaces/{ns}/executions", params={"limit": 1}).json()
    assert len(first["items"]) == 1 and first["continue"]
    second = api("GET", f"/namespaces/{ns}/executions", params={"limit": 1, "continue": first["continue"]}).json()
    assert len(second["items"]) == 1 and "continue" not in second
    assert {first["items"][0]["metadata"]["name"], second["items"][0]["metadata"]["name"]} == names
    error_of(api("GET", f"/namespaces/{ns}/executions", params={"labelSelector": "a b c"}), 400)
    error_of(api("GET", f"/namespaces/{ns}/executions/nope"), 404)
    error_of(api("GET", f"/namespaces/{ns}/executions/nope/logs"), 404)

    # each request is a LogEmitted line of the run it is about (component api)
    api_lines = [p for p in (m.groups() for m in map(LOG_LINE.match, api("GET", f"/namespaces/{ns}/executions/{name}"
                                                                        "/logs").text.splitlines()) if m)
                 if p[1] == "api"]
    who = f"system:serviceaccount:{ns}:alice"
    assert any(f"{who} POST /api/v1/namespaces/{ns}/workflows/ok/executions -> 201" in p[4] for p in api_lines)
    assert any(f"{who} GET /api/v1/namespaces/{ns}/executions/{name}/logs -> 200" in p[4] for p in api_lines)


def test_bad_input_is_a_400_naming_the_field(setup: dict[str, Any]) -> None:
    ns, api = setup["namespace"], setup["api"]
    path = f"/namespaces/{ns}/workflows/typed/executions"
    cases = [({"input": {"n": "three"}}, "input.n"), ({"input": {}}, "input"), ({"name": "Not_A_Name"}, "name"),
             ({"input": {"n": 1}, "timeout": "soon"}, "timeout"), ({"input": {"n": 1}, "colour": "red"}, "colour"),
             ({"input": {"n": 1}, "labels": {"a": 1}}, "labels.a"),
             ({"input": {"n": 1}, "labels": {"bad key!": "x"}}, "labels")]
    for body, field in cases:
        error = error_of(api("POST", path, body), 400)
        assert error["field"] == field, (body, error)
        assert error["reason"] == "Invalid"
    deep: Any = 1
    for _ in range(100):
        deep = [deep]
    assert error_of(api("POST", path, {"input": {"n": 1, "x": deep}}), 400)["field"] == "input"
    raw = requests.post(f"{setup['base']}/api/v1{path}", data=b"{not json", headers={
        **api.headers(), "Content-Type": "application/json"}, timeout=30)
    assert error_of(raw, 400)["field"] == "body"
    assert error_of(api("POST", f"/namespaces/{ns}/workflows/missing/executions", {}), 404)["reason"] == "NotFound"
    assert error_of(api("POST", "/namespaces/BAD_NS/workflows/ok/executions", {}), 400)["field"] == "namespace"
    assert error_of(api("GET", f"/namespaces/{ns}/executions", params={"limit": 0}), 400)["field"] == "limit"
    assert error_of(api("GET", f"/namespaces/{ns}/executions", params={"phase": "Done"}), 400)["field"] == "phase"
    for depth in (10_000, 100_000):  # past the parser's recursion limit, and within it
        text = "[" * depth + "]" * depth
        raw = requests.post(f"{setup['base']}/api/v1{path}", data=f'{{"input": {{"n": 1, "x": {text}}}}}',
                            headers={**api.headers(), "Content-Type": "application/json"}, timeout=30)
        assert error_of(raw, 400)["field" if depth == 10_000 else "reason"] in ("input", "BadRequest"), raw.text
    big = b'{"input": {"n": 1, "x": "' + b"x" * (3 << 20) + b'"}}'
    for body in (big, iter([big[i:i + 65536] for i in range(0, len(big), 65536)])):  # with a length, chunked
        raw = requests.post(f"{setup['base']}/api/v1{path}", data=body,
                            headers={**api.headers(), "Content-Type": "application/json"}, timeout=30)
        assert error_of(raw, 413)["reason"] == "RequestEntityTooLarge"
    error_of(api("GET", "/nowhere"), 404)
    error_of(api("DELETE", f"/namespaces/{ns}/executions"), 405)
    assert trigger(api, ns, "typed", {"input": {"n": 1}, "name": "typed-by-name"})["name"] == "typed-by-name"
    assert error_of(api("POST", path, {"input": {"n": 1}, "name": "typed-by-name"}), 409)["reason"] == "AlreadyExists"


def test_who_may_do_what(setup: dict[str, Any], kube: Kube, devenv: DevEnvironment) -> None:
    ns, alice, base = setup["namespace"], setup["api"], setup["base"]
    trigger_path = f"/namespaces/{ns}/workflows/ok/executions"
    run = trigger(alice, ns, "ok")["name"]

    anonymous = Api(base, None)
    assert error_of(anonymous("POST", trigger_path, {}), 401)["reason"] == "Unauthorized"
    assert anonymous("GET", f"/namespaces/{ns}/executions").headers["www-authenticate"] == "Bearer"
    error_of(Api(base, "not-a-token")("GET", f"/namespaces/{ns}/executions"), 401)
    error_of(requests.get(f"{base}/api/v1/namespaces/{ns}/executions", headers={"Authorization": "Basic eDp5"},
                          timeout=30), 401)

    reader = Api(base, service_account_token(kube, ns, "reader", ["get", "list"]))
    error = error_of(reader("POST", trigger_path, {}), 403)
    assert error["reason"] == "Forbidden" and f"system:serviceaccount:{ns}:reader" in error["message"]
    assert "create" in error["message"]
    assert reader("GET", f"/namespaces/{ns}/executions/{run}").status_code == 200
    for verb_path in ("cancel", "retry"):
        error_of(reader("POST", f"/namespaces/{ns}/executions/{run}/{verb_path}"), 403)
    error_of(reader("POST", f"/namespaces/{ns}/executions/{run}/resubmit"), 403)
    nobody = Api(base, service_account_token(kube, ns, "nobody", []))
    for method, path in (("GET", f"/namespaces/{ns}/executions"), ("GET", f"/namespaces/{ns}/executions/{run}"),
                         ("GET", f"/namespaces/{ns}/executions/{run}/events"),
                         ("GET", f"/namespaces/{ns}/executions/{run}/logs")):
        error_of(nobody(method, path), 403)

    other = f"other-{uuid.uuid4().hex[:5]}"
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": other}})
    try:
        # alice may do everything in her namespace, nothing in another
        error_of(alice("POST", f"/namespaces/{other}/workflows/ok/executions", {}), 403)
        error_of(alice("GET", f"/namespaces/{other}/executions"), 403)

        async def nats_trigger(token: str | None, namespace: str, body: Any) -> tuple[int, dict[str, Any]]:
            nc = await nats.connect(devenv.nats.url, token=devenv.nats.token)
            try:
                headers = {"Authorization": f"Bearer {token}"} if token else None
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                reply = await nc.request(trigger_subject(namespace), data, timeout=30, headers=headers)
                return int((reply.headers or {})[STATUS_HEADER]), json.loads(reply.data)
            finally:
                await nc.close()

        status, body = asyncio.run(nats_trigger(reader.token, ns, {"workflow": "ok", "input": {"a": 1}}))
        assert status == 403 and body["error"]["reason"] == "Forbidden", body
        status, body = asyncio.run(nats_trigger(None, ns, {"workflow": "ok"}))
        assert status == 401, body
        status, body = asyncio.run(nats_trigger(alice.token, other, {"workflow": "ok"}))
        assert status == 403, body
        status, body = asyncio.run(nats_trigger(alice.token, ns, {"workflow": "ok", "input": 1, "extra": 2}))
        assert status == 400 and body["error"]["field"] == "extra", body
        status, body = asyncio.run(nats_trigger(alice.token, ns, b"[not json"))
        assert status == 400, body
        status, body = asyncio.run(nats_trigger(alice.token, ns, {"workflow": "missing"}))
        assert status == 404, body
        status, body = asyncio.run(nats_trigger(alice.token, ns, {"workflow": "ok", "input": {"via": "nats"}}))
        assert status == 201 and set(body) == {"name", "namespace", "uid", "phase"}, body
        made = alice("GET", f"/namespaces/{ns}/executions/{body['name']}").json()
        assert made["metadata"]["uid"] == body["uid"] and made["spec"]["input"] == {"via": "nats"}
    finally:
        kube.delete(f"/api/v1/namespaces/{other}")


def test_cancel_retry_resubmit_signal(setup: dict[str, Any], kubectl: Kubectl) -> None:
    ns, api = setup["namespace"], setup["api"]
    slow = trigger(api, ns, "slow")["name"]
    wait_for(lambda: execution_status(kubectl, ns, slow).get("phase") == "Running" or None, 30, "running")
    error_of(api("POST", f"/namespaces/{ns}/executions/{slow}/retry"), 409)  # not ended
    resp = api("POST", f"/namespaces/{ns}/executions/{slow}/cancel")
    assert resp.status_code == 202 and resp.json()["name"] == slow, resp.text
    assert wait_finished(kubectl, ns, slow)["phase"] == "Cancelled"
    assert error_of(api("POST", f"/namespaces/{ns}/executions/{slow}/cancel"), 409)["reason"] == "AlreadyEnded"
    error_of(api("POST", f"/namespaces/{ns}/executions/nope/cancel"), 404)

    first = trigger(api, ns, "typed", {"input": {"n": 1}, "labels": {"team": "b"}})["name"]
    wait_finished(kubectl, ns, first)
    again = api("POST", f"/namespaces/{ns}/executions/{first}/resubmit")
    assert again.status_code == 201, again.text
    changed = api("POST", f"/namespaces/{ns}/executions/{first}/resubmit", {"input": {"n": 2}})
    assert changed.status_code == 201, changed.text
    for made, n in ((again.json(), 1), (changed.json(), 2)):
        obj = api("GET", f"/namespaces/{ns}/executions/{made['name']}").json()
        labels = obj["metadata"]["labels"]
        assert labels.pop(LABEL_CREATED).isdigit()
        assert labels == {"team": "b", LABEL_WORKFLOW: "typed", LABEL_RESUBMITTED_FROM: first}
        assert obj["spec"]["input"] == {"n": n}
        assert wait_finished(kubectl, ns, made["name"])["phase"] == "Succeeded"
    error = error_of(api("POST", f"/namespaces/{ns}/executions/{first}/resubmit", {"input": {"n": "x"}}), 400)
    assert error["field"] == "input.n"

    assert error_of(api("POST", f"/namespaces/{ns}/executions/{first}/retry"), 409)["reason"] == "NothingToRetry"
    error = error_of(api("POST", f"/namespaces/{ns}/executions/{first}/signals/approve", {"data": {"ok": True}}), 409)
    assert error["reason"] == "NoWaitingTask"
    error_of(api("POST", f"/namespaces/{ns}/executions/nope/signals/approve", {}), 404)


def test_retry_continues_a_failed_run(setup: dict[str, Any], kubectl: Kubectl) -> None:
    ns, api = setup["namespace"], setup["api"]
    name = trigger(api, ns, "fails")["name"]
    assert wait_finished(kubectl, ns, name)["phase"] == "Failed"
    resp = api("POST", f"/namespaces/{ns}/executions/{name}/retry")
    assert resp.status_code == 202, resp.text
    obj = api("GET", f"/namespaces/{ns}/executions/{name}").json()
    assert obj["spec"].get("retry") == 1, obj["spec"]
    wait_for(lambda: (execution_status(kubectl, ns, name).get("tasks", {}).get("broken", {}).get("attempt") or 0) > 1
             or None, 30, "a second attempt of the failed task")


def test_events_replayed_then_live_then_closed(setup: dict[str, Any], kubectl: Kubectl) -> None:
    ns, api = setup["namespace"], setup["api"]
    created = trigger(api, ns, "slow", {"name": "again"})
    live = sse_events(api.stream(f"/namespaces/{ns}/executions/again/events"))  # open while it runs; ends by itself
    assert execution_status(kubectl, ns, "again")["phase"] == "Succeeded"
    types = [e["event"] for e in live]
    assert types[0] == "WorkflowExecutionStarted" and types[-1] == "WorkflowExecutionSuccess", types
    assert {"TaskDispatched", "TaskExecutionStarted", "TaskExecutionSuccess"} <= set(types), types
    assert all(e["data"]["data"]["uid"] == created["uid"] and e["data"]["type"] == e["event"] for e in live)
    assert [e["id"] for e in live] == sorted(e["id"] for e in live)
    replay = sse_events(api.stream(f"/namespaces/{ns}/executions/again/events"))
    assert [(e["id"], e["event"]) for e in replay] == [(e["id"], e["event"]) for e in live]
    # a reconnecting EventSource sends the last id it saw: it gets the rest only
    resumed = sse_events(requests.get(f"{api.base}/api/v1/namespaces/{ns}/executions/again/events", stream=True,
                                      headers={**api.headers(), "Last-Event-ID": str(live[2]["id"])}, timeout=60))
    assert [e["id"] for e in resumed] == [e["id"] for e in live[3:]]

    # the same name again, a new run: none of the old run's events
    kubectl.ok("delete", "wfx", "again", "-n", ns, "--wait=true")
    renewed = trigger(api, ns, "fails", {"name": "again"})
    events = sse_events(api.stream(f"/namespaces/{ns}/executions/again/events"))
    assert events and all(e["data"]["data"]["uid"] == renewed["uid"] for e in events), events
    assert events[-1]["event"] == "WorkflowExecutionFailed"
    logs = api("GET", f"/namespaces/{ns}/executions/again/logs").text
    assert "tool broke" in logs and "dispatched task nap" not in logs, logs


def test_logs_follow_until_the_run_ends(setup: dict[str, Any], kubectl: Kubectl) -> None:
    ns, api = setup["namespace"], setup["api"]
    name = trigger(api, ns, "slow")["name"]
    resp = api.stream(f"/namespaces/{ns}/executions/{name}/logs", follow="true")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    lines = list(resp.iter_lines(decode_unicode=True))  # returns once the run has ended
    assert execution_status(kubectl, ns, name)["phase"] == "Succeeded"
    text = "\n".join(lines)
    assert "dispatched task nap attempt 1" in text and "dispatched task echo attempt 1" in text, text
    assert any(line.split()[1:3] == ["runtime", "echo[1]"] for line in lines), text
    only = list(api.stream(f"/namespaces/{ns}/executions/{name}/logs", follow="true", task="nap")
                .iter_lines(decode_unicode=True))
    assert only and all(line.split()[2] == "nap[1]" for line in only), only


def test_a_client_that_goes_away_leaves_no_consumer(setup: dict[str, Any], devenv: DevEnvironment,
                                                    kubectl: Kubectl) -> None:
    """Followers of a run disconnect while it goes on: the consumers of their streams (push
    consumers on the run's subjects) are removed at once, not when the run ends."""
    ns, api = setup["namespace"], setup["api"]
    name = trigger(api, ns, "long")["name"]

    async def consumers() -> list[str]:
        nc = await nats.connect(devenv.nats.url, token=devenv.nats.token)
        try:
            js = nc.jetstream()
            return [c.config.filter_subject or "" for stream in ("COMPOZY_LOGS", "COMPOZY_STATE")
                    for c in await js.consumers_info(stream)
                    if c.config.deliver_subject and f".{name}." in (c.config.filter_subject or "")]
        finally:
            await nc.close()

    logs = api.stream(f"/namespaces/{ns}/executions/{name}/logs", follow="true")
    events = api.stream(f"/namespaces/{ns}/executions/{name}/events")
    assert logs.status_code == 200 and events.status_code == 200
    wait_for(lambda: len(asyncio.run(consumers())) == 2 or None, 10, "the streams' consumers")
    logs.close()
    events.close()
    wait_for(lambda: asyncio.run(consumers()) == [] or None, 10, "the consumers to be removed")
    phase = execution_status(kubectl, ns, name).get("phase") or "Pending"
    assert phase in ("Pending", "Running"), f"the run must outlast this ({phase})"
    assert api("POST", f"/namespaces/{ns}/executions/{name}/cancel").status_code == 202


def test_https_and_the_stream_limit(setup: dict[str, Any], devenv: DevEnvironment, kube: Kube) -> None:
    """An operator of its own (watching an empty namespace: the session operator runs the runs) with
    COMPOZY_API_CERT_FILE/KEY_FILE, serving HTTPS only, and COMPOZY_API_MAX_STREAMS=1: a second
    stream is refused with 429 until the first one's client goes away."""
    ns, alice = setup["namespace"], setup["api"]
    empty = f"empty-{uuid.uuid4().hex[:5]}"
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": empty}})
    tls = write_loopback_tls(devenv.workdir / f"api-tls-{empty}", "compozy-api")
    op = OperatorProcess(devenv, log_path=devenv.workdir / "logs" / f"operator-{empty}.log", extra_env={
        "COMPOZY_NAMESPACES": empty, "COMPOZY_API_CERT_FILE": str(tls.cert), "COMPOZY_API_KEY_FILE": str(tls.key),
        "COMPOZY_API_MAX_STREAMS": "1"})
    op.start()
    try:
        https = Api(f"https://127.0.0.1:{op.api_port}", alice.token)
        resp = requests.get(f"{https.base}/api/v1/namespaces/{ns}/executions", headers=https.headers(),
                            verify=str(tls.ca_cert), timeout=30)
        assert resp.status_code == 200, resp.text
        with pytest.raises(requests.exceptions.SSLError):  # its CA is not the system's
            requests.get(f"{https.base}/api/v1/namespaces/{ns}/executions", headers=https.headers(), timeout=30)
        with pytest.raises(requests.exceptions.ConnectionError):  # no plain HTTP
            requests.get(f"http://127.0.0.1:{op.api_port}/healthz", timeout=30)

        name = trigger(alice, ns, "long")["name"]
        logs = f"{https.base}/api/v1/namespaces/{ns}/executions/{name}/logs"

        def follow() -> requests.Response:
            return requests.get(logs, params={"follow": "true"}, headers=https.headers(), stream=True,
                                verify=str(tls.ca_cert), timeout=60)

        first = follow()
        assert first.status_code == 200, first.text
        assert error_of(follow(), 429)["reason"] == "TooManyStreams"
        first.close()
        again = wait_for(lambda: (r := follow()).status_code == 200 and r, 10, "a stream once the first is gone")
        again.close()
        assert alice("POST", f"/namespaces/{ns}/executions/{name}/cancel").status_code == 202
    finally:
        op.stop()
        kube.delete(f"/api/v1/namespaces/{empty}")


def test_health_metrics_and_openapi(setup: dict[str, Any]) -> None:
    ns, api, base = setup["namespace"], setup["api"], setup["base"]
    assert requests.get(f"{base}/healthz", timeout=10).text == "ok"
    assert requests.get(f"{base}/readyz", timeout=10).status_code == 200
    api("GET", f"/namespaces/{ns}/executions")
    metrics = requests.get(f"{base}/metrics", timeout=10).text
    assert re.search(r'compozy_api_requests_total\{code="200",route="/api/v1/namespaces/\{namespace\}/executions"\}'
                     r" [1-9]", metrics), metrics
    doc = requests.get(f"{base}/openapi.json", timeout=10).json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert set(doc["paths"]) == {
        "/api/v1/namespaces/{namespace}/workflows/{workflow}/executions", "/api/v1/namespaces/{namespace}/executions",
        "/api/v1/namespaces/{namespace}/executions/{name}", "/api/v1/namespaces/{namespace}/executions/{name}/cancel",
        "/api/v1/namespaces/{namespace}/executions/{name}/retry",
        "/api/v1/namespaces/{namespace}/executions/{name}/resubmit",
        "/api/v1/namespaces/{namespace}/executions/{name}/signals/{signal}",
        "/api/v1/namespaces/{namespace}/executions/{name}/events",
        "/api/v1/namespaces/{namespace}/executions/{name}/logs",
        # for the web UI (docs/ui.md; test_api_ui_endpoints)
        "/api/v1/whoami", "/api/v1/namespaces", "/api/v1/namespaces/{namespace}/access", "/api/v1/executions",
        "/api/v1/namespaces/{namespace}/workflows", "/api/v1/namespaces/{namespace}/workflows/{workflow}",
        "/api/v1/namespaces/{namespace}/executions/{name}/output",
        "/api/v1/namespaces/{namespace}/executions/{name}/attempt",
        # OIDC sign-in (docs/ui.md; test_ui_oidc)
        "/oauth2/config", "/oauth2/login", "/oauth2/callback", "/oauth2/logout"}
    assert not any("422" in op["responses"] for path in doc["paths"].values() for op in path.values())
