"""Hostile workflows on the real cluster: each ends Failed with a message naming the field, and a
canary run started beside it still succeeds (the operator keeps serving; no timing is asserted
here, `hack/bench/hostile.py` measures the canary's latency)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl

from .conftest import wait_finished
from .test_workflows import apply, execution, workflow

OK = "def run(input, ctx):\n    return {'v': input.get('v')}\n"
TOOLS = [{"id": "ok", "python": OK}]
NESTED = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"

# name -> (workflow spec fields, input, what the run's message must contain)
HOSTILE: dict[str, tuple[dict[str, Any], Any, list[str]]] = {
    "nested-loop": ({"tasks": [{"id": "fetch", "tool": "ok", "with": {"url": NESTED}}]}, None,
                    ["tasks.fetch.with.url: the template took longer than"]),
    "redos": ({"input": {"type": "object", "properties": {"name": {"type": "string", "pattern": "^(a+)+$"}}},
               "tasks": [{"id": "t", "tool": "ok"}]}, {"name": "a" * 29 + "!"},
              ["spec.input.name: matching the input schema's pattern '^(a+)+$' took longer than"]),
    "big-collection": ({"tasks": [{"id": "each", "type": "collection", "items": "{{ range(100000) | list }}",
                                   "task": {"id": "f", "tool": "ok", "with": {"v": "{{ item }}"}}}]}, None,
                       ["tasks.each.items: 100000 items, the limit is 10000"]),
    "string-bomb": ({"tasks": [{"id": "t", "tool": "ok", "with": {"v": "{{ 'x' * 10**9 }}"}}]}, None,
                    ["tasks.t.with.v: repeating a str of 1 1000000000 times would be larger than the limit"]),
    "memory-bomb": ({"tasks": [{"id": "t", "tool": "ok", "with": {"v": (
        "{% set ns = namespace(s='x' * 1000000) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s | length }}")}}]}, None,
                    ["tasks.t.with.v: the template needs more memory than allowed"]),
    "missing-task": ({"tasks": [{"id": "count", "tool": "ok", "onSuccess": {"next": "use"}},
                                {"id": "use", "tool": "ok", "with": {"v": "{{ tasks[workflow.input.t].output }}"}}]},
                     {"t": "frist"},  # a name apply cannot check
                     ["tasks.use.with.v: tasks.frist: no task 'frist' (tasks: count, use)"]),
}


def _run(kubectl: Kubectl, namespace: str, name: str, workflow_name: str, value: Any) -> str | None:
    """Start a run; None, or the admission webhook's refusal (it runs the same bounded input check
    in the evaluation pool, so a ReDoS input may be refused at apply, naming the field)."""
    out = kubectl.apply(namespace, execution(name, workflow_name, value))
    if out.returncode != 0:
        assert "denied the request" in out.stderr, out.stderr
        return out.stderr
    return None


def _failed_text(kubectl: Kubectl, namespace: str, name: str, refusal: str | None) -> str:
    """What says why the run did not succeed: the refusal at apply, or the ended run's message."""
    if refusal is not None:
        return refusal
    status = wait_finished(kubectl, namespace, name, timeout=180)
    assert status["phase"] == "Failed", status
    return json.dumps({"message": status.get("message"), "error": status.get("error")})


def _canary(kubectl: Kubectl, namespace: str, name: str) -> None:
    apply(kubectl, namespace, workflow(f"{name}-wf", [{"id": "c", "tool": "ok", "with": {"v": "{{ workflow.input.v }}"}}],
                                       tools=TOOLS),
          execution(name, f"{name}-wf", {"v": 42}))


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_run_fails_naming_the_field_and_a_canary_still_succeeds(
        operator: OperatorProcess, kubectl: Kubectl, namespace: str, case: str) -> None:
    spec, value, messages = HOSTILE[case]
    spec = dict(spec)
    apply(kubectl, namespace, workflow("hostile", spec.pop("tasks"), tools=TOOLS, **spec))
    refusal = _run(kubectl, namespace, "hostile-1", "hostile", value)
    _canary(kubectl, namespace, "canary")
    text = _failed_text(kubectl, namespace, "hostile-1", refusal)
    assert all(m in text for m in messages), text
    canary = wait_finished(kubectl, namespace, "canary", timeout=120)
    assert canary["phase"] == "Succeeded" and canary["tasks"]["c"]["output"] == {"v": 42}, canary
    assert operator.readyz()[0] == 200


def test_many_hostile_runs_at_once_leave_the_operator_serving(operator: OperatorProcess, kubectl: Kubectl,
                                                              namespace: str) -> None:
    """Every hostile kind at once, twice, with canaries started while they are being processed."""
    names = []
    for case, (spec, value, _) in sorted(HOSTILE.items()):
        spec = dict(spec)
        apply(kubectl, namespace, workflow(f"h-{case}", spec.pop("tasks"), tools=TOOLS, **spec))
        for i in (1, 2):
            names.append((f"h-{case}-{i}", _run(kubectl, namespace, f"h-{case}-{i}", f"h-{case}", value)))
    canaries = [f"canary-{i}" for i in range(3)]
    threads = [threading.Thread(target=_canary, args=(kubectl, namespace, c)) for c in canaries]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for name, refusal in names:
        _failed_text(kubectl, namespace, name, refusal)
    for name in canaries:
        status = wait_finished(kubectl, namespace, name, timeout=180)
        assert status["phase"] == "Succeeded", status
    assert operator.readyz()[0] == 200


def test_a_decision_past_its_wall_time_ends_the_run_failed(operator: OperatorProcess, kubectl: Kubectl,
                                                           namespace: str) -> None:
    """No single template is too slow (each filter takes ~0.1 s), but the 10,000 of one decision
    are: the worker stops at COMPOZY_EVAL_RUN_TIMEOUT_SECONDS (10 s) and the run ends Failed."""
    slow = "{{ range(100000) | map('string') | join | length > index }}"
    apply(kubectl, namespace, workflow("slow-all", [
        {"id": "each", "type": "collection", "items": "{{ range(10000) | list }}", "filter": slow,
         "task": {"id": "f", "tool": "ok", "with": {"v": "{{ item }}"}}}], tools=TOOLS),
          execution("slow-all-1", "slow-all"))
    _canary(kubectl, namespace, "canary")
    status = wait_finished(kubectl, namespace, "slow-all-1", timeout=120)
    assert status["phase"] == "Failed", status
    assert status["error"]["reason"] == "EvaluationLimit", status
    assert "evaluating the run took longer than 10s" in status["error"]["message"], status
    assert wait_finished(kubectl, namespace, "canary", timeout=120)["phase"] == "Succeeded"
