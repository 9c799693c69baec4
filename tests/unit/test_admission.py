"""The admission webhook's and the Workflow status's pure parts."""

from __future__ import annotations

import asyncio
import json

from compozy_operator import admission
from compozy_operator.resources import crd
from compozy_operator.sandbox import EvalPool
from compozy_operator.settings import Settings
from compozy_operator.workflow_status import desired_status, status_patch

# the start checks in this process (a pool of no workers), as the webhook runs them in a worker
VALIDATE = EvalPool(Settings(eval_workers=0)).validate


def review_workflow(obj: dict) -> list[str]:
    return asyncio.run(admission.review_workflow(obj, VALIDATE))


def review_execution_create(obj: dict, workflow: dict | None, max_bytes: int) -> list[str]:
    return asyncio.run(admission.review_execution_create(obj, workflow, max_bytes, VALIDATE))

T = {"id": "t", "python": "def run(i, c):\n    return {}\n"}
WF = {"metadata": {"name": "w", "namespace": "n", "generation": 3},
      "spec": {"tools": [T], "tasks": [{"id": "a", "tool": "t"}],
               "input": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}}


def _exec(**spec: object) -> dict:
    return {"metadata": {"name": "e", "namespace": "n"}, "spec": spec}


def test_workflow_problems_are_validates() -> None:
    assert review_workflow(WF) == []
    bad = {"spec": {"tools": [T], "tasks": [{"id": "a", "tool": "nope"}]}}
    assert review_workflow(bad) == ["spec.tasks[0] (a).tool: tool 'nope' is not defined in spec.tools"]
    assert review_workflow({"spec": {"tasks": "x"}})[0].startswith("spec.tasks")


def test_execution_input_against_the_referenced_workflow() -> None:
    ref = {"name": "w"}
    assert review_execution_create(_exec(workflowRef=ref, input={"n": 1}), WF, 1000) == []
    assert review_execution_create(_exec(workflowRef=ref, input={"n": "x"}), WF, 1000) == [
        "spec.input.n: 'x' is not of type 'integer'"]
    assert review_execution_create(_exec(workflowRef=ref, input={}), None, 1000) == []  # not found: a warning
    broken = {"spec": {"tools": [T], "tasks": [{"id": "a", "tool": "nope"}]}}
    assert review_execution_create(_exec(workflowRef=ref), broken, 1000) == [
        "workflow.spec.tasks[0] (a).tool: tool 'nope' is not defined in spec.tools"]
    inline = _exec(workflow={"tools": [T], "tasks": [{"id": "a", "tool": "nope"}]})
    assert review_execution_create(inline, None, 1000) == [
        "spec.workflow.tasks[0] (a).tool: tool 'nope' is not defined in spec.tools"]


def test_input_depth_is_counted_without_recursion_and_size_is_bounded() -> None:
    deep: object = 1
    for _ in range(10_000):  # far beyond Python's recursion limit
        deep = [deep]
    assert admission.input_problems(deep, 10**9) == ["spec.input: nested 10000 levels deep; at most 64 are allowed"]
    assert admission.input_problems({"s": "y" * 100}, 50) == [
        "spec.input: 108 bytes of JSON; at most 50 are allowed (pass a reference to large data, such as a URL, "
        "instead of the data)"]
    assert admission.input_problems({"s": "y"}, 50) == []


def test_run_spec_is_immutable_except_cancel() -> None:
    old = _exec(workflowRef={"name": "w"}, input={"n": 1})
    assert admission.review_execution_update(old, _exec(workflowRef={"name": "w"}, input={"n": 1}, cancel=True)) == []
    assert admission.review_execution_update(old, _exec(workflowRef={"name": "w"}, input={"n": 2})) == [
        admission.IMMUTABLE]
    cancelled = _exec(workflowRef={"name": "w"}, input={"n": 1}, cancel=True)
    assert admission.review_execution_update(cancelled, _exec(workflowRef={"name": "w"}, input={"n": 1})) == [
        admission.CANCEL_FINAL]
    assert admission.IMMUTABLE == crd.IMMUTABLE_MESSAGE  # CEL and the webhook say the same


def test_a_runs_ttl_may_change_and_cleanup_fields_are_checked() -> None:
    old = _exec(workflowRef={"name": "w"}, input={"n": 1})
    for ttl in (0, 60):
        new = _exec(workflowRef={"name": "w"}, input={"n": 1}, ttlSecondsAfterFinished=ttl)
        assert admission.review_execution_update(old, new) == []
        assert admission.review_execution_update(new, old) == []
    assert review_execution_create(_exec(workflowRef={"name": "w"}, input={"n": 1}, ttlSecondsAfterFinished=-5),
                                   WF, 1000) == ["spec.ttlSecondsAfterFinished: Input should be greater than or "
                                                 "equal to 0"]
    inline = _exec(workflow={**WF["spec"], "historyLimit": {"succeeded": 2}}, input={"n": 1})
    assert review_execution_create(inline, None, 1000) == [crd.INLINE_HISTORY_MESSAGE]
    wf = {"spec": {**WF["spec"], "historyLimit": {"failed": 2}, "podCleanup": {"policy": "OnPodSuccess",
                                                                               "delay": "30s"}}}
    assert review_workflow(wf) == []
    assert review_workflow({"spec": {**WF["spec"], "podCleanup": {"delay": "2y"}}})[0].startswith(
        "spec.podCleanup.delay: ")


def test_retry_goes_up_by_one_and_clears_cancel_with_it() -> None:
    old = _exec(workflowRef={"name": "w"}, input={"n": 1}, retry=1)
    review = admission.review_execution_update
    assert review(old, _exec(workflowRef={"name": "w"}, input={"n": 1}, retry=2)) == []
    for bad in (0, 3):
        assert review(old, _exec(workflowRef={"name": "w"}, input={"n": 1}, retry=bad)) == [crd.RETRY_UP_MESSAGE]
    assert review(old, _exec(workflowRef={"name": "w"}, input={"n": 2}, retry=2)) == [admission.IMMUTABLE]
    cancelled = _exec(workflowRef={"name": "w"}, input={"n": 1}, retry=1, cancel=True)
    assert review(cancelled, _exec(workflowRef={"name": "w"}, input={"n": 1}, retry=2)) == []
    assert review(cancelled, _exec(workflowRef={"name": "w"}, input={"n": 1}, retry=2, cancel=True)) == [
        crd.RETRY_CANCEL_MESSAGE]


def test_too_deep_to_parse_gets_a_refusal_with_the_request_uid() -> None:
    text = ('{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"abc-1",'
            '"object":{"spec":{"input":{"v":' + "[" * 3000 + "]" * 3000 + ',"s":"[[[{"}}}}}')
    assert admission.text_depth(text) == 3000 + 5
    response = admission.too_deep_response(text)["response"]
    assert response["uid"] == "abc-1" and response["allowed"] is False
    assert response["status"]["message"] == ("the object nests 3003 levels deep, too deep to check (spec.input: "
                                              "at most 64 levels are allowed)")
    json.dumps(response)


def test_refusal_is_bounded() -> None:
    assert admission.refusal(["a", "b"]) == "a; b"
    long = admission.refusal([f"spec.tasks[{i}]: problem " + "x" * 100 for i in range(100)])
    assert len(long) <= admission.MESSAGE_LIMIT and long.endswith("(100 problems in all)")


def test_workflow_status_is_written_only_when_it_changes() -> None:
    st = desired_status(WF, [], "T1")
    assert st == {"observedGeneration": 3, "taskCount": 1, "conditions": [
        {"type": "Ready", "status": "True", "reason": "Valid", "message": "valid: 1 task", "lastTransitionTime": "T1",
         "observedGeneration": 3}]}
    assert status_patch({**WF, "status": st}, [], "T2") is None  # its own write comes back: nothing to do
    bad = status_patch({**WF, "status": st}, ["spec.tasks[0] (a).tool: nope"], "T3")
    assert bad is not None
    cond = bad["status"]["conditions"][0]
    assert (cond["status"], cond["reason"], cond["message"], cond["lastTransitionTime"]) == (
        "False", "InvalidSpec", "spec.tasks[0] (a).tool: nope", "T3")
    newer = {**WF, "metadata": {**WF["metadata"], "generation": 4}, "status": st}
    again = status_patch(newer, [], "T4")  # same verdict, new generation: observedGeneration moves, the time does not
    assert again is not None and again["status"]["observedGeneration"] == 4
    assert again["status"]["conditions"][0]["lastTransitionTime"] == "T1"


def test_a_catastrophic_regex_is_checked_in_a_bounded_worker_not_in_the_operator() -> None:
    """Issue 11.2 at apply: a ReDoS pattern on a hostile input must not stall the webhook's loop."""
    import time

    wf = {"spec": {"tools": [T], "tasks": [{"id": "a", "tool": "t"}],
                   "input": {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}}}}
    pool = EvalPool(Settings(eval_workers=1, eval_timeout=0.5))

    async def check() -> tuple[list[str], float]:
        started = time.monotonic()
        try:
            problems = await admission.review_execution_create(
                _exec(workflowRef={"name": "w"}, input={"s": "a" * 40 + "!"}), wf, 10**6, pool.validate)
        finally:
            await pool.close()
        return problems, time.monotonic() - started

    problems, seconds = asyncio.run(check())
    assert problems == ["spec.input.s: matching the input schema's pattern '^(a+)+$' took longer than 0.5s"]
    print(f"refused in {seconds:.2f}s (2^40 steps unbounded)")
