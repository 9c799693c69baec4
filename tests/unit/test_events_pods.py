"""Event envelope and subjects; pod manifests; merge-patch diffs."""

from __future__ import annotations

import pytest

from compozy_operator.events import (EventType, Publisher, attempt_permissions, cancel_subject, claim_subject,
                                     LogSubject, command_subject, event_id, execution_logs, inbox_prefix, log_subject,
                                     parse_log_subject, make_event,
                                     output_chunk_token, output_meta_subject, state_subject, task_token,
                                     untask_token)
from compozy_operator.kube import merge_patch_diff
from compozy_operator.pods import pod_name, task_pod
from compozy_operator.settings import Settings


def test_event_ids_are_deterministic_and_distinct() -> None:
    a = make_event(EventType.TASK_SUCCESS, "x", "ns", "run", "uid", "t", 1, output={"a": 1})
    b = make_event(EventType.TASK_SUCCESS, "y", "ns", "run", "uid", "t", 1, output={"other": 2})
    assert a.id == b.id == event_id("uid", "t", 1, EventType.TASK_SUCCESS)
    ids = {event_id("uid", "t", n, t) for n in (1, 2) for t in (EventType.TASK_SUCCESS, EventType.TASK_FAILED)}
    assert len(ids) == 4
    assert event_id("uid-2", "t", 1, EventType.TASK_SUCCESS) != a.id


def test_envelope_uses_cloudevents_names() -> None:
    e = make_event(EventType.WORKFLOW_STARTED, "compozy/orchestrator", "ns", "run.v2", "uid")
    body = e.model_dump()
    assert set(body) == {"specversion", "id", "source", "type", "time", "subject", "data"}
    assert body["specversion"] == "1.0" and body["type"] == "WorkflowExecutionStarted"
    assert body["subject"] == "compozy.state.ns.run_v2.workflow.WorkflowExecutionStarted"
    assert body["data"] == {"namespace": "ns", "execution": "run.v2", "uid": "uid"}


def test_subjects() -> None:
    assert state_subject("ns", "r", EventType.WORKFLOW_FAILED) == "compozy.state.ns.r.workflow.WorkflowExecutionFailed"
    assert state_subject("ns", "r", EventType.TOOL_FAILED, "t", 2) == "compozy.state.ns.r.task.t.2.ToolExecutionFailed"
    assert (state_subject("ns", "r", EventType.TASK_FAILED, "t", 2, Publisher.ATTEMPT)
            == "compozy.state.ns.r.task.t.2.TaskExecutionFailed")
    assert state_subject("ns", "r", EventType.TASK_FAILED, "t", 2) == "compozy.state.ns.r.operator.t.2.TaskExecutionFailed"
    assert state_subject("ns", "r.v2", None) == "compozy.state.ns.r_v2.>"
    assert command_subject("ns", "r", "count", 2) == "compozy.cmd.ns.r.task.execute.count.2"
    assert claim_subject("ns", "r", "u-1", "each[0]", 1) == "compozy.cmd.ns.r.task.claim.u-1.each_5b0_5d.1"
    assert cancel_subject("ns", "r.v2") == "compozy.cmd.ns.r_v2.workflow.cancel"
    assert log_subject("ns", "r", "u-1", "orchestrator") == "compozy.log.ns.r.u-1.orchestrator"
    assert log_subject("ns", "r", "u-1", "runtime", "t", 3) == "compozy.log.ns.r.u-1.task.t.3.runtime"
    assert execution_logs("ns", "r.v2", "u-1") == "compozy.log.ns.r_v2.u-1.>"
    assert execution_logs("ns", "r", "u-1", "each[0]") == "compozy.log.ns.r.u-1.task.each_5b0_5d.*.*"
    assert execution_logs("ns", "r", "u-1", "t", 2) == "compozy.log.ns.r.u-1.task.t.2.*"


def test_log_subjects_parse_back() -> None:
    assert parse_log_subject(log_subject("ns", "r.v2", "u-1", "orchestrator")) == LogSubject("ns", "r.v2", "u-1",
                                                                                              "orchestrator")
    assert parse_log_subject(log_subject("ns", "r", "u-1", "stdout", "each[3]", 2)) == LogSubject(
        "ns", "r", "u-1", "stdout", "each[3]", 2)
    for bad in ("compozy.log.ns.r.orchestrator", "compozy.log.ns.r.u.task.t.x.stdout", "compozy.log.ns.r.u.job.t.1.x",
                "compozy.log.ns.r.u.task.a_zz.1.x", "compozy.state.ns.r.u.x", "compozy.log.ns..u.x"):
        assert parse_log_subject(bad) is None, bad
    assert inbox_prefix("ns", "r", "t", 1) == "_INBOX_compozy.ns.r.t.1"


@pytest.mark.parametrize("task", ["a", "each-url", "each-url[3]", "x[10]", "tab\there", "dot.ted", "a*b>c", "_5b",
                                  "é", "each-url-5b3-5d", "each_5b3_5d"])
def test_task_tokens_are_one_safe_token_and_reversible(task: str) -> None:
    t = task_token(task)
    assert t and not any(c in t for c in ".*> \t\r\n") and t.isascii()
    assert untask_token(t) == task


def test_task_tokens_never_collide() -> None:
    keys = ["each[3]", "each-3", "each_5b3_5d", "each[3", "each3]", "a", "A", "_", "-"]
    assert len({task_token(k) for k in keys}) == len(keys)
    assert untask_token("each_5B3") is None and untask_token("a_2") is None and untask_token("a.b") is None


def test_an_attempts_permissions_name_only_its_own_subjects() -> None:
    perms = attempt_permissions("ns", "run", "uid-1", "each[3]", 2)
    assert perms == {
        "publish": [
            "compozy.state.ns.run.task.each_5b3_5d.2.*",
            "compozy.log.ns.run.uid-1.task.each_5b3_5d.2.*",
            "compozy.cmd.ns.run.task.claim.uid-1.each_5b3_5d.2",
            "$JS.API.DIRECT.GET.COMPOZY_COMMANDS.compozy.cmd.ns.run.task.execute.each_5b3_5d.2",
            "$JS.API.DIRECT.GET.COMPOZY_COMMANDS.compozy.cmd.ns.run.task.claim.uid-1.each_5b3_5d.2",
            f"$O.COMPOZY_OUTPUTS.C.{output_chunk_token('ns/run/uid-1/each[3]/2')}.*",
            output_meta_subject("ns/run/uid-1/each[3]/2"),
        ],
        "subscribe": ["compozy.cmd.ns.run.workflow.cancel", "_INBOX_compozy.ns.run.each_5b3_5d.2.>"],
    }
    own = make_event(EventType.TOOL_SUCCESS, "x", "ns", "run", "uid-1", "each[3]", 2)
    assert own.subject.startswith("compozy.state.ns.run.task.each_5b3_5d.2.")
    assert output_meta_subject("k") == "$O.COMPOZY_OUTPUTS.M.aw=="


def test_pod_names() -> None:
    assert pod_name("hello-1", "count", 1) == "hello-1-count-1"
    long = pod_name("e" * 240, "task", 3)
    assert len(long) <= 253 and long.endswith("-3") and long != pod_name("e" * 241, "task", 3)


def test_task_pod_is_restricted_owned_and_labelled() -> None:
    execution = {"metadata": {"name": "hello-1", "namespace": "ns", "uid": "u1"}}
    pod = task_pod(Settings(task_image="img:1"), execution, "count", 2)
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "hello-1-count-2"
    assert meta["ownerReferences"][0] | {} == {"apiVersion": "compozy.dev/v1alpha1", "kind": "WorkflowExecution",
                                               "name": "hello-1", "uid": "u1", "controller": True,
                                               "blockOwnerDeletion": True}
    assert meta["labels"]["compozy.dev/task"] == "count" and meta["labels"]["compozy.dev/attempt"] == "2"
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    c = spec["containers"][0]
    assert c["image"] == "img:1" and c["args"] == ["task", "run"]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    token = next(e for e in c["env"] if e["name"] == "COMPOZY_NATS_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "compozy-nats", "key": "token"}
    assert all("value" not in e or "token" not in e["name"].lower() for e in c["env"])
    ca = next(e for e in c["env"] if e["name"] == "COMPOZY_NATS_CA")  # only with a private CA (TLS)
    assert ca["valueFrom"]["secretKeyRef"] == {"name": "compozy-nats", "key": "ca.crt", "optional": True}


def test_merge_patch_diff() -> None:
    old = {"a": 1, "b": {"c": 2, "d": 3}, "e": [1], "gone": True}
    new = {"a": 1, "b": {"c": 2, "d": 4}, "e": [1, 2], "f": None}
    assert merge_patch_diff(old, new) == {"gone": None, "b": {"d": 4}, "e": [1, 2], "f": None}
    assert merge_patch_diff({}, {"x": 1}) == {"x": 1}
    assert merge_patch_diff(old, old) == {}


def test_collection_child_keys_make_valid_names() -> None:
    execution = {"metadata": {"name": "run", "namespace": "ns", "uid": "u1"}}
    pod = task_pod(Settings(task_image="img:1"), execution, "each-url[12]", 1)
    part = pod["metadata"]["labels"]["compozy.dev/task"]
    assert part.startswith("each-url-12-") and part != "each-url-12"
    assert pod["metadata"]["name"] == f"run-{part}-1"
    assert pod_name("run", "each-url[12]", 1) != pod_name("run", "each-url-12", 1)
    assert pod["metadata"]["annotations"]["compozy.dev/task-key"] == "each-url[12]"
    assert next(e for e in pod["spec"]["containers"][0]["env"] if e["name"] == "COMPOZY_TASK")["value"] == "each-url[12]"
