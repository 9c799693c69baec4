"""The objects behind start/resubmit/retry/cancel requests (pure)."""

from datetime import datetime, timezone

from compozy_operator.api_service.operations import list_selectors
from compozy_operator.execution_requests import (LABEL_CREATED, LABEL_RESUBMITTED_FROM, LABEL_WORKFLOW, cancel_patch,
                                                 created_after_selector, new_execution, resubmission, retry_patch,
                                                 stamp_created)
from compozy_operator.orchestrator.starter import run_labels_patch
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


def test_created_label_and_its_selector_agree_on_whole_seconds():
    stamped = stamp_created(new_execution("hello", labels={LABEL_CREATED: "1"}), 1796212800.9)
    assert stamped["metadata"]["labels"][LABEL_CREATED] == "1796212800"  # the creator's, not the caller's
    at = datetime(2026, 12, 2, 12, 0, 0, tzinfo=timezone.utc)  # 1796212800
    assert created_after_selector(at) == f"{LABEL_CREATED}>1796212799"  # created in that second or later
    assert created_after_selector(at.replace(microsecond=1)) == f"{LABEL_CREATED}>1796212800"  # from the next


def test_list_filters_are_selectors_and_pending_is_none_of_the_started_phases():
    assert list_selectors(None, None, None, None) == (None, None)
    at = datetime(2026, 12, 2, 12, 0, 0, tzinfo=timezone.utc)
    assert list_selectors("wf", "Failed", "team=a", at) == (
        f"team=a,{LABEL_WORKFLOW}=wf,{LABEL_CREATED}>1796212799", "status.phase=Failed")
    labels, fields = list_selectors(None, "Pending", None, None)
    assert labels is None and fields is not None
    assert sorted(fields.split(",")) == sorted(f"status.phase!={p}" for p in
                                               ("Running", "Succeeded", "Failed", "TimedOut", "Cancelled"))


def test_the_operator_labels_a_run_only_where_its_labels_are_missing_or_wrong():
    meta = {"name": "r", "namespace": "n", "creationTimestamp": "2026-12-02T12:00:00Z"}
    run = {"metadata": meta, "spec": {"workflowRef": {"name": "hello"}}}
    assert run_labels_patch(run) == {LABEL_WORKFLOW: "hello", LABEL_CREATED: "1796212800"}
    labelled = {**run, "metadata": {**meta, "labels": {LABEL_WORKFLOW: "hello", LABEL_CREATED: "1796212800"}}}
    assert run_labels_patch(labelled) == {}  # created by api.Service or the CLI: no write
    forged = {**run, "metadata": {**meta, "labels": {LABEL_WORKFLOW: "hello", LABEL_CREATED: "42"}}}
    assert run_labels_patch(forged) == {LABEL_CREATED: "1796212800"}
    inline = {"metadata": meta, "spec": {"workflow": {"tasks": []}}}
    assert run_labels_patch(inline) == {LABEL_CREATED: "1796212800"}
