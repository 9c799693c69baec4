"""The objects behind start/resubmit/retry/cancel requests (pure)."""

from compozy_operator.execution_requests import (LABEL_RESUBMITTED_FROM, LABEL_WORKFLOW, cancel_patch,
                                                 new_execution, resubmission, retry_patch)
from compozy_operator.resources.models import API_VERSION


def test_new_execution_is_labelled_and_named_after_its_workflow():
    body = new_execution("hello", {"n": 1}, labels={"team": "a"}, timeout="5m")
    assert body["apiVersion"] == API_VERSION and body["kind"] == "WorkflowExecution"
    assert body["metadata"] == {"labels": {"team": "a", LABEL_WORKFLOW: "hello"}, "generateName": "hello-"}
    assert body["spec"] == {"workflowRef": {"name": "hello"}, "input": {"n": 1}, "timeout": "5m"}
    named = new_execution("hello", name="run-1", labels={LABEL_WORKFLOW: "forged"})
    assert named["metadata"]["name"] == "run-1" and named["metadata"]["labels"][LABEL_WORKFLOW] == "hello"
    assert "input" not in named["spec"] and len(new_execution("w" * 80)["metadata"]["generateName"]) == 58


def test_resubmission_keeps_what_ran_and_names_its_origin():
    old = {"metadata": {"name": "hello-abc", "resourceVersion": "7", "uid": "u",
                        "labels": {"team": "a", LABEL_WORKFLOW: "hello", "compozy.dev/other": "x"}},
           "spec": {"workflowRef": {"name": "hello"}, "input": {"n": 1}, "timeout": "1m", "cancel": True, "retry": 2},
           "status": {"phase": "Failed"}}
    new = resubmission(old)
    assert new["metadata"] == {"labels": {"team": "a", LABEL_WORKFLOW: "hello", LABEL_RESUBMITTED_FROM: "hello-abc"},
                               "generateName": "hello-"}
    assert new["spec"] == {"workflowRef": {"name": "hello"}, "input": {"n": 1}, "timeout": "1m"}
    assert resubmission(old, {"n": 2})["spec"]["input"] == {"n": 2}
    inline = resubmission({"metadata": {"name": "adhoc"}, "spec": {"workflow": {"tasks": []}}}, name="again")
    assert inline["metadata"] == {"labels": {LABEL_RESUBMITTED_FROM: "adhoc"}, "name": "again"}
    assert inline["spec"] == {"workflow": {"tasks": []}}


def test_retry_and_cancel_patches():
    assert cancel_patch() == {"spec": {"cancel": True}}
    assert retry_patch({"metadata": {"resourceVersion": "9"}, "spec": {}}) == \
        {"metadata": {"resourceVersion": "9"}, "spec": {"retry": 1}}
    assert retry_patch({"metadata": {"resourceVersion": "10"}, "spec": {"retry": 2}})["spec"] == {"retry": 3}
    # a cancelled run is retried with its cancel removed (the CRD refuses a retry that keeps it)
    assert retry_patch({"metadata": {}, "spec": {"retry": 1, "cancel": True}})["spec"] == {"retry": 2, "cancel": None}
