"""api.Service's calls for the web UI (docs/ui.md, docs/api.md): who am I, which namespaces may I
read, what may I do here, runs of every namespace, Workflows, and outputs stored in the object
store. Real ServiceAccount tokens and real RBAC, as in test_api_service."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from compozy_operator.execution_requests import LABEL_CREATED, created_value
from compozy_operator.executor import epoch
from compozy_operator.kube import Kube
from compozy_operator.resources.models import GROUP, VERSION
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.fakellm import FakeLLM, openai_reply
from tests.helpers import Kubectl, wait_for

from .conftest import wait_finished
from . import test_api_service
from .test_agents import SCHEMA as SUMMARY, agent, agent_workflow, go
from .test_api_service import ALL_VERBS, Api, error_of, service_account_token, trigger
from .test_ui import grant_workflows
from .test_workflows import apply, workflow

setup = test_api_service.setup  # the fixture: Workflows ok, slow, long, fails, typed and alice
EXECUTIONS = f"/apis/{GROUP}/{VERSION}"
PY_BIG = "def run(input, ctx):\n    return {'blob': 'x' * input['n']}\n"


def test_whoami_names_the_caller_and_needs_a_token(setup: dict[str, Any]) -> None:
    api, ns = setup["api"], setup["namespace"]
    me = api("GET", "/whoami").json()
    assert me["user"] == f"system:serviceaccount:{ns}:alice" and me["via"] == "token"
    assert "system:serviceaccounts" in me["groups"]
    assert error_of(Api(setup["base"], None)("GET", "/whoami"), 401)["reason"] == "Unauthorized"


def test_namespaces_are_those_the_caller_may_list_runs_in(setup: dict[str, Any], kube: Kube, kubectl: Kubectl,
                                                           namespace: str) -> None:
    api = setup["api"]
    answer = api("GET", "/namespaces").json()
    assert answer == {"items": [{"name": namespace}], "allNamespaces": False}  # not the other tests' namespaces
    nobody = Api(setup["base"], service_account_token(kube, namespace, "nobody", []))
    assert nobody("GET", "/namespaces").json() == {"items": [], "allNamespaces": False}
    error = error_of(api("GET", "/executions"), 403)
    assert "at the cluster scope" in error["message"], error


def test_runs_of_every_namespace_page_by_page_for_a_cluster_wide_reader(setup: dict[str, Any], kube: Kube,
                                                                         kubectl: Kubectl) -> None:
    ns = setup["namespace"]
    for _ in range(3):
        trigger(setup["api"], ns, "ok")
    token = service_account_token(kube, ns, "auditor", [])
    kubectl.ok("create", "clusterrole", f"{ns}-read", "--verb=get,list", "--resource=workflowexecutions.compozy.dev")
    kubectl.ok("create", "clusterrolebinding", f"{ns}-read", f"--clusterrole={ns}-read",
               f"--serviceaccount={ns}:auditor")
    try:
        auditor = Api(setup["base"], token)
        listed = auditor("GET", "/namespaces").json()
        assert listed["allNamespaces"] is True and {"name": ns} in listed["items"]
        names, cont = [], None
        while True:
            page = auditor("GET", "/executions", params={"limit": 2, "labelSelector": "compozy.dev/workflow=ok",
                                                         **({"continue": cont} if cont else {})}).json()
            assert len(page["items"]) <= 2
            names += [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in page["items"]]
            cont = page.get("continue")
            if not cont:
                break
        mine = [n for n in names if n[0] == ns]
        assert len(mine) == 3 and len(set(names)) == len(names), names
        assert all(i["kind"] == "WorkflowExecution" for i in auditor("GET", "/executions").json()["items"])
    finally:
        kubectl("delete", "clusterrolebinding,clusterrole", f"{ns}-read")


def test_access_answers_what_the_caller_may_do_here(setup: dict[str, Any], kube: Kube) -> None:
    ns = setup["namespace"]
    alice = setup["api"]("GET", f"/namespaces/{ns}/access").json()
    assert alice["user"] == f"system:serviceaccount:{ns}:alice"
    assert alice["resources"] == {"workflowexecutions": dict.fromkeys(("get", "list", "create", "patch"), True),
                                  "workflows": {"get": False, "list": False}}
    reader = Api(setup["base"], service_account_token(kube, ns, "reader", ["get", "list"]))
    grant_workflows(kube, ns, "reader")
    answer = reader("GET", f"/namespaces/{ns}/access").json()["resources"]
    assert answer["workflowexecutions"] == {"get": True, "list": True, "create": False, "patch": False}
    assert answer["workflows"] == {"get": True, "list": True}
    elsewhere = reader("GET", "/namespaces/kube-system/access").json()["resources"]
    assert not any(v for verbs in elsewhere.values() for v in verbs.values())


def test_workflows_list_and_get_with_their_validation_status(setup: dict[str, Any], kube: Kube) -> None:
    ns, api = setup["namespace"], setup["api"]
    runs_only = Api(setup["base"], service_account_token(kube, ns, "runs-only", ALL_VERBS))
    error = error_of(runs_only("GET", f"/namespaces/{ns}/workflows"), 403)  # Workflows are RBAC's own resource
    assert '"workflows"' in error["message"], error
    assert error_of(runs_only("GET", f"/namespaces/{ns}/workflows/typed"), 403)["reason"] == "Forbidden"
    grant_workflows(kube, ns, "alice")
    listed = api("GET", f"/namespaces/{ns}/workflows", params={"limit": 2}).json()
    assert len(listed["items"]) == 2 and listed["continue"]
    rest = api("GET", f"/namespaces/{ns}/workflows", params={"continue": listed["continue"]}).json()
    names = {i["metadata"]["name"] for i in listed["items"] + rest["items"]}
    assert names == {"ok", "slow", "long", "fails", "typed"}
    typed = api("GET", f"/namespaces/{ns}/workflows/typed").json()
    assert typed["kind"] == "Workflow" and typed["spec"]["input"]["required"] == ["n"]
    assert error_of(api("GET", f"/namespaces/{ns}/workflows/nope"), 404)["reason"] == "NotFound"
    assert error_of(api("GET", f"/namespaces/{ns}/workflows/Bad_Name"), 400)["field"] == "workflow"


def test_a_stored_output_is_fetched_on_demand(setup: dict[str, Any], kubectl: Kubectl) -> None:
    ns, api = setup["namespace"], setup["api"]
    apply(kubectl, ns, workflow("big", [{"id": "make", "tool": "big", "with": {"n": 40_000},
                                         "onSuccess": {"next": "small"}},
                                        {"id": "small", "tool": "ok", "with": {"v": 1}}],
                                tools=[{"id": "big", "python": PY_BIG}, {"id": "ok", "python": "def run(i, c):\n"
                                                                                      "    return {'v': 1}\n"}]))
    run = trigger(api, ns, "big")["name"]
    status = wait_finished(kubectl, ns, run)
    assert status["phase"] == "Succeeded" and "outputRef" in status["tasks"]["make"], status["tasks"]["make"]
    stored = api("GET", f"/namespaces/{ns}/executions/{run}/output", params={"task": "make"})
    assert stored.status_code == 200 and stored.json() == {"blob": "x" * 40_000}
    small = error_of(api("GET", f"/namespaces/{ns}/executions/{run}/output", params={"task": "small"}), 404)
    assert small["field"] == "task" and "in the status itself" in small["message"]
    assert error_of(api("GET", f"/namespaces/{ns}/executions/{run}/output", params={"task": "nope"}), 404)["field"] == "task"
    assert error_of(api("GET", f"/namespaces/{ns}/executions/{run}/output"), 404)["reason"] == "NotFound"


def test_a_forged_output_ref_is_not_followed(setup: dict[str, Any], kubectl: Kubectl, kube: Kube) -> None:
    """A status's outputRef came from a task attempt's event: one naming another run's object is refused."""
    ns, api = setup["namespace"], setup["api"]
    run = trigger(api, ns, "ok")["name"]
    wait_finished(kubectl, ns, run)
    kube.request("PATCH", f"/apis/compozy.dev/v1alpha1/namespaces/{ns}/workflowexecutions/{run}/status",
                 {"status": {"tasks": {"echo": {"phase": "Succeeded", "outputRef": {
                     "bucket": "COMPOZY_OUTPUTS", "key": "other-ns/other/uid/echo/1", "size": 1, "digest": "x"}}}}},
                 content_type="application/merge-patch+json")
    error = error_of(api("GET", f"/namespaces/{ns}/executions/{run}/output", params={"task": "echo"}), 409)
    assert error["reason"] == "ForeignOutput"


def test_the_ui_is_served_without_a_token_with_its_security_headers(operator: OperatorProcess) -> None:
    import requests

    home = requests.get(f"{operator.api_url}/", allow_redirects=False, timeout=10)
    assert home.status_code == 307 and home.headers["location"] == "/ui/"
    page = requests.get(f"{operator.api_url}/ui/", timeout=10)
    assert page.status_code == 200 and '<div id="root">' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-cache"
    asset = page.text.split('src="', 1)[1].split('"', 1)[0]
    js = requests.get(f"{operator.api_url}{asset}", timeout=10)
    assert js.status_code == 200 and "immutable" in js.headers["cache-control"]
    assert "/api/v1" in js.text
    assert 'src="http' not in page.text and 'href="http' not in page.text, "no CDN: every asset is served here"


def _names(page: dict[str, Any]) -> list[str]:
    return [i["metadata"]["name"] for i in page["items"]]


def _all_pages(api: Api, path: str, **params: Any) -> list[list[str]]:
    pages, cont = [], None
    while True:
        page = api("GET", path, params={**params, **({"continue": cont} if cont else {})}).json()
        pages.append(_names(page))
        if not (cont := page.get("continue")):
            return pages


def test_phase_and_created_after_are_applied_by_the_api_server_before_the_page_is_cut(
        setup: dict[str, Any], kubectl: Kubectl, kube: Kube) -> None:
    """Runs r-0 .. r-5 alternate Succeeded and Failed (the API server lists by name), so a page of two
    filtered after it was cut would hold one Failed run; selected before, it holds two."""
    ns, api = setup["namespace"], setup["api"]
    path, runs = f"/namespaces/{ns}/executions", f"{EXECUTIONS}/namespaces/{ns}/workflowexecutions"
    for i in range(6):
        if i == 3:  # the second half is created at least a second later (creation times have whole seconds)
            first = epoch(kube.get(f"{runs}/r-2")["metadata"]["creationTimestamp"])
            wait_for(lambda: time.time() >= first + 1.05 or None, 5, "the next second")
        trigger(api, ns, "fails" if i % 2 else "ok", {"name": f"r-{i}", "labels": {LABEL_CREATED: "1"}})
    names = [f"r-{i}" for i in range(6)]
    for name in names:
        wait_finished(kubectl, ns, name)
    assert _all_pages(api, path, phase="Failed", limit=2) == [["r-1", "r-3"], ["r-5"]]
    assert _all_pages(api, path, phase="Succeeded", limit=2) == [["r-0", "r-2"], ["r-4"]]
    assert _all_pages(api, path, phase="Running", limit=2) == [[]]
    assert _all_pages(api, path, phase="Pending", limit=2) == [[]]  # every run here was started

    # the label is the creation second exactly, whatever the creator sent
    stored = {n: kube.get(f"{runs}/{n}")["metadata"] for n in names}
    for meta in stored.values():
        assert meta["labels"][LABEL_CREATED] == created_value(epoch(meta["creationTimestamp"])), meta
    second = datetime.fromisoformat(stored["r-3"]["creationTimestamp"].replace("Z", "+00:00"))
    later = sorted(n for n, m in stored.items() if epoch(m["creationTimestamp"]) >= second.timestamp())
    assert {"r-3", "r-4", "r-5"} <= set(later) and "r-0" not in later
    pages = _all_pages(api, path, createdAfter=second.isoformat(), limit=2)
    assert [n for page in pages for n in page] == later and all(len(p) == 2 for p in pages[:-1]), pages
    failed_later = _all_pages(api, path, createdAfter=second.isoformat(), phase="Failed", limit=1)
    assert [n for page in failed_later for n in page] == [n for n in later if n in ("r-1", "r-3", "r-5")]
    moment = (second + timedelta(milliseconds=1)).isoformat()  # within r-3's second: from the next one on
    assert "r-3" not in [n for page in _all_pages(api, path, createdAfter=moment) for n in page]
    error = error_of(api("GET", path, params={"createdAfter": "yesterday"}), 400)
    assert error["field"] == "createdAfter", error
    assert error_of(api("GET", path, params={"createdAfter": "2026-01-01T00:00:00"}), 400)["field"] == "createdAfter"

    # a run applied with kubectl, with a forged label, is labelled by the operator when it starts
    kubectl.ok("apply", "-n", ns, "-f", "-", stdin=json.dumps({
        "apiVersion": "compozy.dev/v1alpha1", "kind": "WorkflowExecution",
        "metadata": {"name": "by-kubectl", "labels": {LABEL_CREATED: "42"}}, "spec": {"workflowRef": {"name": "ok"}}}))
    wait_finished(kubectl, ns, "by-kubectl")
    meta = kube.get(f"{runs}/by-kubectl")["metadata"]
    assert meta["labels"][LABEL_CREATED] == created_value(epoch(meta["creationTimestamp"])), meta
    assert meta["labels"]["compozy.dev/workflow"] == "ok"


PY_SECRET = ("import os\ndef run(input, ctx):\n"
             "    return {'has_secret': bool(os.environ.get('TOKEN')), 'words': len(input['text'].split())}\n")


def test_an_attempts_rendered_input_is_what_it_received_and_never_a_secret(setup: dict[str, Any], kubectl: Kubectl,
                                                                            kube: Kube) -> None:
    """The rendered `with` of each attempt, from the operator's TaskDispatched: inline when small,
    in the object store (fetched on demand) when larger than the outputs' inline limit. The tool's
    Secret reaches its pod's environment (the tool sees it) and nothing that api.Service answers."""
    ns, api = setup["namespace"], setup["api"]
    secret = f"s3cr3t-{uuid.uuid4().hex}"
    kubectl.ok("create", "secret", "generic", "tool-token", "-n", ns, f"--from-literal=token={secret}")
    tools = [{"id": "secret", "python": PY_SECRET,
              "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tool-token", "key": "token"}}}]}]
    apply(kubectl, ns, workflow("render", [
        {"id": "count", "tool": "secret", "with": {"text": "{{ workflow.input.text }}", "n": "{{ workflow.input.n }}",
                                                    "style": "{{ env.STYLE }}"}}], tools=tools, env={"STYLE": "terse"}))
    small = trigger(api, ns, "render", {"input": {"text": "a b c", "n": 3}})["name"]
    large_text = "word " * 5000  # 25,000 bytes: more than the 16 KiB inline limit
    large = trigger(api, ns, "render", {"input": {"text": large_text, "n": 1}})["name"]
    for run in (small, large):
        status = wait_finished(kubectl, ns, run)
        assert status["phase"] == "Succeeded" and status["tasks"]["count"]["output"]["has_secret"] is True, status

    path = f"/namespaces/{ns}/executions/{small}/attempt"
    detail = api("GET", path, params={"task": "count"}).json()
    assert detail == {"task": "count", "attempt": 1, "dispatched": True, "renderedSize": None, "modelCalls": None,
                      "rendered": {"input": {"text": "a b c", "n": 3, "style": "terse"}}}
    assert api("GET", path, params={"task": "count", "attempt": 1}).json() == detail

    path = f"/namespaces/{ns}/executions/{large}/attempt"
    apart = api("GET", path, params={"task": "count"}).json()
    assert apart["rendered"] is None and apart["renderedSize"] > 16384, apart
    fetched = api("GET", path, params={"task": "count", "stored": "true"}).json()
    assert fetched["rendered"] == {"input": {"text": large_text, "n": 1, "style": "terse"}}

    for run in (small, large):
        answers = [api("GET", f"/namespaces/{ns}/executions/{run}/attempt", params={"task": "count", "stored": "true"}),
                   api.stream(f"/namespaces/{ns}/executions/{run}/events")]
        assert all(a.status_code == 200 and secret not in a.text for a in answers)
    error = error_of(api("GET", path, params={"task": "nope"}), 404)
    assert error["field"] == "task", error
    assert api("GET", path, params={"task": "count", "attempt": 7}).json()["dispatched"] is False
    assert error_of(api("GET", path), 400)["field"] == "task"
    reader = Api(setup["base"], service_account_token(kube, ns, "lister", ["list"]))
    assert error_of(reader("GET", path, params={"task": "count"}), 403)["reason"] == "Forbidden"


def test_an_agent_attempts_model_calls_and_rendered_prompt(setup: dict[str, Any], kubectl: Kubectl) -> None:
    """Each model call as the agent's pod reported it with its end: model, tokens, time, finish reason
    and the tools asked for (the stand-in LLM endpoint answers with the real wire protocol)."""
    ns, api = setup["namespace"], setup["api"]
    key = f"sk-test-{uuid.uuid4().hex}"
    kubectl.ok("create", "secret", "generic", "llm-credentials", "-n", ns, f"--from-literal=api-key={key}")
    llm = FakeLLM()
    try:
        llm.add(openai_reply(tool_calls=[("word-count", {"text": "one two three"})], prompt_tokens=21,
                             completion_tokens=5),
                openai_reply('{"summary": "three words"}', prompt_tokens=40, completion_tokens=9))
        wf = agent_workflow("agentic", [agent("writer", "gpt-x", llm.url, go(SUMMARY), tools=["word-count"])],
                            [{"id": "sum", "agent": "writer", "action": "go", "with": {"text": "{{ workflow.input.t }}"}}])
        apply(kubectl, ns, wf)
        run = trigger(api, ns, "agentic", {"input": {"t": "one two three"}})["name"]
        assert wait_finished(kubectl, ns, run, 90)["phase"] == "Succeeded"
    finally:
        llm.close()
    answer = api("GET", f"/namespaces/{ns}/executions/{run}/attempt", params={"task": "sum"})
    assert key not in answer.text
    detail = answer.json()
    assert detail["rendered"] == {"input": {"text": "one two three"}, "prompt": "Handle: one two three",
                                  "instructions": "Be brief."}
    calls = detail["modelCalls"]
    assert [(c["model"], c["inputTokens"], c["outputTokens"], c["finishReason"], c["toolCalls"]) for c in calls] == [
        ("fake", 21, 5, "tool_calls", ["word-count"]), ("fake", 40, 9, "stop", [])]
    assert all(isinstance(c["seconds"], float) and c["seconds"] >= 0 for c in calls), calls
