"""api.Service fuzzed from its own OpenAPI document (schemathesis): valid and invalid requests to
every operation, with a caller allowed every verb in every namespace. No answer may be a 5xx, and
every refusal is a JSON error body naming its reason.

Half of the cases aim at what exists (the test's namespace, a Workflow, an ended run), so they get
past the 404s into validation, the NATS streams and the patches. The Workflow's input must equal a
constant no generator guesses, and the run's Workflow does not exist: the fuzzer starts no pods.
"""

from __future__ import annotations

import json
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis import strategies as st

from compozy_operator.kube import Kube
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl

from .conftest import wait_finished
from .test_api_service import service_account_token
from .test_workflows import apply, execution, workflow

EXAMPLES = 15  # per operation and generation mode: 21 operations x 2 modes x 15, about 40 s here
SECRET = {"type": "object", "properties": {"key": {"const": "not-guessable-7f3a"}}, "required": ["key"]}


def test_no_request_gets_a_5xx_and_every_refusal_is_a_json_error(operator: OperatorProcess, kubectl: Kubectl,
                                                                  kube: Kube, namespace: str) -> None:
    apply(kubectl, namespace, workflow("typed", [{"id": "echo", "tool": "ok", "with": {"v": 1}}], input=SECRET),
          execution("target", "never-created"))
    assert wait_finished(kubectl, namespace, "target")["phase"] == "Failed"
    token = service_account_token(kube, namespace, "fuzzer", [])
    kubectl.ok("create", "clusterrole", f"{namespace}-fuzz", "--verb=get,list,create,patch",
               "--resource=workflowexecutions.compozy.dev")
    kubectl.ok("create", "clusterrolebinding", f"{namespace}-fuzz", f"--clusterrole={namespace}-fuzz",
               f"--serviceaccount={namespace}:fuzzer")
    try:
        fuzz(operator.api_url, token, {"namespace": namespace, "workflow": "typed", "name": "target"})
    finally:
        kubectl("delete", "clusterrolebinding,clusterrole", f"{namespace}-fuzz")


def fuzz(base: str, token: str, real: dict[str, str]) -> None:
    doc = requests.get(f"{base}/openapi.json", timeout=10).json()
    schema = schemathesis.openapi.from_dict(doc)
    headers = {"Authorization": f"Bearer {token}"}
    seen: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            @settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode), aim=st.booleans())
            def check(case: schemathesis.Case, aim: bool) -> None:
                if aim and case.path_parameters:
                    case.path_parameters.update({k: v for k, v in real.items() if k in case.path_parameters})
                resp = case.call(base_url=base, headers=headers, timeout=30)
                seen.setdefault(operation.label, set()).add(resp.status_code)
                where = f"{case.method} {case.formatted_path} {case.query} {case.body!r:.300}"
                assert resp.status_code < 500, f"{where}: {resp.status_code} {resp.text[:500]}"
                if resp.status_code >= 400:
                    assert_error_body(resp, where)

            try:
                check()
            except Unsatisfiable:  # an operation that takes nothing has no invalid request to be made
                takes = [len(p) for p in (operation.path_parameters, operation.query, operation.headers,
                                          operation.cookies, operation.body)]
                assert mode is schemathesis.GenerationMode.NEGATIVE and not any(takes), (operation.label, takes)
    # the cases reached past authorization and lookups into every kind of answer
    codes = set().union(*seen.values())
    assert {200, 202, 400, 404, 409} <= codes, seen
    assert any(c in (201, 400) for c in seen["POST /api/v1/namespaces/{namespace}/workflows/{workflow}/executions"])


def assert_error_body(resp: Any, where: str) -> None:
    content_type = (resp.headers.get("content-type") or [""])[0]  # schemathesis: lists of values
    assert content_type.startswith("application/json"), f"{where}: {resp.headers}"
    body = json.loads(resp.text)
    error = body.get("error") if isinstance(body, dict) else None
    assert isinstance(error, dict) and set(error) <= {"reason", "message", "field"}, f"{where}: {body}"
    assert isinstance(error.get("reason"), str) and isinstance(error.get("message"), str), f"{where}: {body}"
