"""api.Service's pure parts: tokens and reviews, error mapping, log lines (the e2e tests call it whole)."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn

from compozy_operator.api_service.auth import (TtlCache, User, access_review, bearer_token, certificate_user,
                                               local_user, reviewed_user)
from compozy_operator.api_service.http import create_app, validation_field
from compozy_operator.api_service.models import ApiError
from compozy_operator.api_service.operations import kube_error, request_field, stored_output_ref
from compozy_operator.api_service.service import Context, trigger_subject
from compozy_operator.api_service.streams import LogLine, attempt_facts, log_line, model_calls, sse, wanted
from compozy_operator.events import Event, EventType, make_event
from compozy_operator.kube import ApiException
from compozy_operator.nats_auth.permissions import attempt_permissions
from compozy_operator.testenv.workdir import free_port


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer   ", "Basic abc", "token abc"])
def test_no_bearer_token_is_a_401(header: str | None) -> None:
    with pytest.raises(ApiError) as e:
        bearer_token(header)
    assert e.value.status == 401 and e.value.reason == "Unauthorized"


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc.def") == "abc.def"
    assert bearer_token("bearer  abc ") == "abc"


def test_reviewed_user_refuses_unauthenticated_and_anonymous() -> None:
    assert reviewed_user({}) is None
    assert reviewed_user({"authenticated": False, "user": {"username": "x"}}) is None
    assert reviewed_user({"authenticated": True, "user": {"username": "system:anonymous"}}) is None
    assert reviewed_user({"authenticated": True, "user": {}}) is None
    user = reviewed_user({"authenticated": True, "user": {"username": "alice", "uid": "u1", "groups": ["g"],
                                                           "extra": {"scopes": ["a", "b"]}}})
    assert user == User("alice", "u1", ("g",), (("scopes", ("a", "b")),))


def test_certificate_user_is_mapped_as_the_api_server_maps_it() -> None:
    subject = ((("countryName", "DE"),), (("organizationName", "team-a"),), (("organizationName", "ops"),),
               (("commonName", "jane"),))
    assert certificate_user(subject) == User("jane", "", ("team-a", "ops", "system:authenticated"))
    assert certificate_user(((("commonName", "kubelet"), ("organizationName", "system:nodes")),)) == \
        User("kubelet", "", ("system:nodes", "system:authenticated"))  # a multi-valued RDN


@pytest.mark.parametrize("subject", [None, (), ((("organizationName", "system:masters"),),),
                                     ((("commonName", ""),),), ((("commonName", "system:anonymous"),),),
                                     ((("commonName", "a"),), (("commonName", "b"),)), ((("commonName",),),)])
def test_certificate_user_refuses_a_subject_without_one_user(subject: object) -> None:
    assert certificate_user(subject) is None


def test_access_review_is_of_the_user_as_authenticated() -> None:
    user = User("alice", "u1", ("g1", "g2"), (("k", ("v",)),))
    review = access_review(user, "create", "ns")
    assert review["spec"] == {"user": "alice", "groups": ["g1", "g2"], "uid": "u1", "extra": {"k": ["v"]},
                              "resourceAttributes": {"namespace": "ns", "verb": "create", "group": "compozy.dev",
                                                     "resource": "workflowexecutions"}}
    assert access_review(user, "get", "ns", "run-1")["spec"]["resourceAttributes"]["name"] == "run-1"


def test_ttl_cache_is_bounded_and_expires() -> None:
    cache: TtlCache[str, int] = TtlCache(ttl=60, size=2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3)
    assert (cache.get("a"), cache.get("b"), cache.get("c")) == (1, None, 3)
    stale: TtlCache[str, int] = TtlCache(ttl=-1, size=2)
    stale.put("a", 1)
    assert stale.get("a") is None


@pytest.mark.parametrize("problem, field", [
    ("spec.input.n: 'three' is not of type 'integer'", "input.n"),
    ("spec.input: nested 100 levels deep", "input"),
    ("spec.timeout: 'soon' is not a duration", "timeout"),
    ("metadata.name: 'X' is not a valid name", "name"),
    ("metadata.labels: Invalid value", "labels"),
    ('admission webhook "x" denied the request: spec.input.a[0]: bad', "input.a[0]"),
    ("workflow.spec.tasks[0].tool: unknown tool", "workflow"),
    ("something else entirely", None),
])
def test_request_field(problem: str, field: str | None) -> None:
    assert request_field(problem) == field


def _api_exception(status: int, body: dict) -> ApiException:
    e = ApiException(status=status, reason="Reason")
    e.body = json.dumps(body)
    return e


def test_kube_errors_become_the_callers_4xx() -> None:
    assert kube_error(_api_exception(404, {}), "Workflow ns/x").status == 404
    conflict = kube_error(_api_exception(409, {"reason": "AlreadyExists", "message": "exists"}), "x")
    assert (conflict.status, conflict.reason) == (409, "AlreadyExists")
    invalid = kube_error(_api_exception(422, {"message": "bad", "details": {"causes": [
        {"field": "metadata.labels"}]}}), "x")
    assert (invalid.status, invalid.field) == (400, "labels")
    assert kube_error(_api_exception(500, {}), "x").status == 503
    assert kube_error(_api_exception(410, {"message": "too old"}), "x").field == "continue"


def test_validation_field() -> None:
    assert validation_field(("body", "labels", "a")) == "labels.a"
    assert validation_field(("query", "limit")) == "limit"
    assert validation_field(("body",)) == "body"


def _log(**data: object) -> bytes:
    return json.dumps({"time": "2026-01-01T00:00:00.000Z", "data": data}).encode()


def test_an_attempts_log_line_is_what_its_subject_says() -> None:
    line = log_line("compozy.log.ns.run.uid-1.task.each_5b2_5d.3.runtime",
                    _log(task="other", attempt=9, level="warning", message="one\ntwo"))
    assert line == LogLine("2026-01-01T00:00:00.000Z", "runtime", "each[2]", 3, "warning", "one\ntwo")
    assert line.text() == "2026-01-01T00:00:00.000Z runtime each[2][3] warning one\\ntwo\n"
    operator = log_line("compozy.log.ns.run.uid-1.orchestrator", _log(task="a", attempt=1, level="info", message="hi"))
    assert operator is not None and operator.text().split(" ", 2)[2] == "a[1] info hi\n"
    plain = log_line("compozy.log.ns.run.uid-1.orchestrator", _log(level="info", message="started"))
    assert plain is not None and plain.text() == "2026-01-01T00:00:00.000Z orchestrator - info started\n"
    for subject, body in (("compozy.log.ns.run.uid-1.orchestrator", b"not json"), ("compozy.log.ns.run.uid-1.orchestrator", b"[]"),
                          ("compozy.log.ns.run.uid-1.task.x.y.runtime", _log()), ("compozy.log.a", _log())):
        assert log_line(subject, body) is None


def test_task_and_attempt_filters() -> None:
    child = LogLine("t", "runtime", "each[2]", 1, "info", "m")
    assert wanted(child, "each", None) and wanted(child, "each[2]", 1) and not wanted(child, "each", 2)
    assert not wanted(child, "eac", None) and wanted(child, None, None)
    assert not wanted(LogLine("t", "orchestrator", None, None, "info", "m"), "each", None)


def test_sse_frame() -> None:
    assert sse(7, "TaskDispatched", '{"a": 1}') == 'id: 7\nevent: TaskDispatched\ndata: {"a": 1}\n\n'


def test_no_task_attempt_may_publish_a_trigger() -> None:
    """Triggers come from in-cluster services with a Kubernetes token, never from a task pod's NATS
    identity (callout mode): its allow list does not reach ``compozy.api.>``."""
    permissions = attempt_permissions("ns", "run", "uid-1", "task", 1)
    assert not permissions.may_publish(trigger_subject("ns"))
    assert not permissions.may_publish(trigger_subject("other"))


def test_access_review_of_workflows_and_of_the_cluster_scope() -> None:
    attributes = access_review(User("a", "", ()), "list", "", resource="workflows")["spec"]["resourceAttributes"]
    assert attributes == {"namespace": "", "verb": "list", "group": "compozy.dev", "resource": "workflows"}


def test_a_local_user_only_on_loopback() -> None:
    assert local_user("", (), "0.0.0.0") is None  # noqa: S104 - the default: no local user
    assert local_user("dev", ("system:masters",), "127.0.0.1") == User("dev", "", ("system:masters",))
    assert local_user("dev", (), "::1") == User("dev", "", ())
    assert local_user("dev", (), "localhost") == User("dev", "", ())
    for host in ("0.0.0.0", "10.0.0.5", "::", "example.com"):  # noqa: S104
        with pytest.raises(ValueError, match="loopback"):
            local_user("dev", (), host)
    with pytest.raises(ValueError, match="anonymous"):
        local_user("system:anonymous", (), "127.0.0.1")


def _run(ns: str, status: dict) -> dict:
    return {"metadata": {"namespace": ns, "name": "r", "uid": "u"}, "status": status}


def test_a_stored_output_ref_must_name_the_runs_own_object() -> None:
    ref = {"bucket": "COMPOZY_OUTPUTS", "key": "ns/r/u/make/1", "size": 9, "digest": "d"}
    assert stored_output_ref(_run("ns", {"tasks": {"make": {"outputRef": ref}}}), "make") == ref
    assert stored_output_ref(_run("ns", {"outputRef": {**ref, "key": "ns/r/u/_workflow/output"}}), None)["key"] \
        == "ns/r/u/_workflow/output"
    for forged in ({**ref, "key": "other/r/u/make/1"}, {**ref, "key": "ns/r/u2/make/1"}, {**ref, "bucket": "X"}):
        with pytest.raises(ApiError) as e:
            stored_output_ref(_run("ns", {"tasks": {"make": {"outputRef": forged}}}), "make")
        assert e.value.status == 409 and e.value.reason == "ForeignOutput"
    for status, task in (({"tasks": {"make": {"output": {}}}}, "make"), ({}, "make"), ({}, None),
                         ({"tasks": {"make": {"outputRef": "x"}}}, "make")):
        with pytest.raises(ApiError) as e:
            stored_output_ref(_run("ns", status), task)
        assert e.value.status == 404


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port, in a thread; its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            thread.join(0.02)
            assert thread.is_alive(), "uvicorn did not start"
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_request_without_a_token_is_the_local_user_when_one_is_set(tmp_path: Path) -> None:
    """No API server is asked: the local user needs no TokenReview, and a header that is not a
    bearer token is refused before one would be made."""
    def ctx(user: User | None) -> Context:
        return Context(operations=None, authorizer=None, streams=None, bus=None,  # type: ignore[arg-type]
                       ready=lambda: (True, "ok"), local_user=user)

    with served(create_app(ctx(User("dev", "", ("system:masters",))), max_body=1 << 16, ui_dir=str(tmp_path))) as base:
        assert requests.get(f"{base}/api/v1/whoami", timeout=10).json() == {"user": "dev", "groups": ["system:masters"],
                                                                                   "via": "local"}
        basic = requests.get(f"{base}/api/v1/whoami", headers={"Authorization": "Basic eDp5"}, timeout=10)
        assert basic.status_code == 401
    with served(create_app(ctx(None), max_body=1 << 16, ui_dir=str(tmp_path))) as base:
        assert requests.get(f"{base}/api/v1/whoami", timeout=10).status_code == 401
        missing = requests.get(f"{base}/ui/", timeout=10)
        assert missing.status_code == 404 and "make ui" in missing.json()["error"]["message"]


def _event(etype: str, uid: str = "u1", **data: Any) -> Event:
    return make_event(EventType(etype), "test", "ns", "run", uid, "t", 1, **data)


def test_attempt_facts_take_the_operators_rendered_input_and_the_attempts_model_calls() -> None:
    calls = [{"model": "m", "inputTokens": 3, "outputTokens": 2, "seconds": 0.5, "finishReason": "stop",
              "toolCalls": ["a"], "text": "not shown"}]
    facts = attempt_facts([_event("TaskDispatched", rendered={"input": {"n": 1}}, podName="p"),
                           _event("TaskDispatched", uid="old", rendered={"input": {"n": 0}}),  # an older run's
                           _event("AgentExecutionSuccess", calls=calls)], "u1")
    assert facts == {"dispatched": True, "rendered": {"input": {"n": 1}}, "renderedRef": None,
                     "modelCalls": [{"model": "m", "inputTokens": 3, "outputTokens": 2, "seconds": 0.5,
                                     "finishReason": "stop", "toolCalls": ["a"]}]}
    assert attempt_facts([], "u1") == {"dispatched": False, "rendered": None, "renderedRef": None, "modelCalls": None}


def test_model_calls_reported_by_an_attempt_are_kept_only_as_far_as_well_formed() -> None:
    hostile = [{"model": 7, "inputTokens": -1, "outputTokens": True, "seconds": "slow", "finishReason": "x" * 999,
                "toolCalls": ["ok", 3, {"a": 1}]}, "junk", None]
    assert model_calls(hostile) == [{"model": None, "inputTokens": None, "outputTokens": None, "seconds": None,
                                     "finishReason": "x" * 200, "toolCalls": ["ok"]}]
    assert model_calls({"not": "a list"}) is None
    assert len(model_calls([{}] * 5000) or []) == 1000
