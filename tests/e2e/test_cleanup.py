"""Cleanup end to end (docs/cleanup.md): ended runs deleted by ttlSecondsAfterFinished (also across an
operator restart) and by their Workflow's historyLimit, taking their stored outputs, log lines and
state events with them; finished task pods deleted as podCleanup says; Kubernetes Events aggregated."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from compozy_operator.events import LOG_STREAM, OUTPUT_BUCKET, STATE_STREAM, execution_logs, output_prefix, \
    state_subject
from compozy_operator.executor import epoch
from compozy_operator.kube import Kube
from compozy_operator.monitoring import event_name
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl, wait_for

from .conftest import crashed_at, execution_status, instead_of, jetstream, wait_finished
from .test_workflows import apply, execution, metric, workflow

PREFIX = "/apis/compozy.dev/v1alpha1/namespaces"
# its output (20 KiB) is larger than the inline limit: it goes to the object store
BIG = {"id": "big", "python": "def run(input, ctx):\n    ctx.log.info('making it')\n    return {'blob': 'x' * 20000}\n"}
MAYBE = {"id": "maybe", "python": "import time\ndef run(input, ctx):\n    time.sleep(input.get('seconds', 0))\n"
                                   "    if input['fail']:\n        raise RuntimeError('asked to')\n    return {}\n"}
SLOW = {"id": "slow", "python": "import time\ndef run(input, ctx):\n    time.sleep(input['seconds'])\n    return {}\n"}


def stored_count(devenv: DevEnvironment, stream: str, subject: str) -> int:
    """How many messages ``stream`` holds under ``subject`` (a wildcard)."""
    async def count(js: Any) -> int:
        sub = await js.pull_subscribe(subject, stream=stream, config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30))
        try:
            return int((await sub.consumer_info()).num_pending)
        finally:
            await sub.unsubscribe()
    return int(jetstream(devenv, count))


def stored_outputs(devenv: DevEnvironment, prefix: str) -> list[str]:
    async def names(js: Any) -> list[str]:
        try:
            infos = await (await js.object_store(OUTPUT_BUCKET)).list(ignore_deletes=True)
        except NotFoundError:
            return []
        return [i.name for i in infos if i.name.startswith(prefix)]
    return list(jetstream(devenv, names))


def leftovers(devenv: DevEnvironment, namespace: str, name: str, uid: str) -> dict[str, int]:
    """What the run ``uid`` has in NATS: stored outputs, log lines, state events."""
    return {"outputs": len(stored_outputs(devenv, output_prefix(namespace, name, uid))),
            "logs": stored_count(devenv, LOG_STREAM, execution_logs(namespace, name, uid)),
            "state": stored_count(devenv, STATE_STREAM, state_subject(namespace, name, None))}


def _get(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    items = kube.get(f"{PREFIX}/{namespace}/workflowexecutions", fieldSelector=f"metadata.name={name}")["items"]
    return items[0] if items else None


def _gone(kube: Kube, namespace: str, name: str) -> bool:
    return _get(kube, namespace, name) is None


def _runs(kube: Kube, namespace: str) -> set[str]:
    return {o["metadata"]["name"] for o in kube.get(f"{PREFIX}/{namespace}/workflowexecutions")["items"]}


def _pods(kube: Kube, namespace: str) -> set[str]:
    return {p["metadata"]["name"] for p in kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"]}


def _with_ttl(name: str, workflow_name: str, ttl: int | None, input: Any = None) -> dict[str, Any]:
    ex = execution(name, workflow_name, input)
    if ttl is not None:
        ex["spec"]["ttlSecondsAfterFinished"] = ttl
    return ex


def _finished_and_stored(kubectl: Kubectl, devenv: DevEnvironment, namespace: str, name: str) -> tuple[str, dict]:
    """Wait for the run to succeed with everything it leaves in NATS stored; its uid and that."""
    assert wait_finished(kubectl, namespace, name)["phase"] == "Succeeded"
    uid = json.loads(kubectl.ok("get", "wfx", name, "-n", namespace, "-o", "json"))["metadata"]["uid"]
    stored = wait_for(lambda: (got := leftovers(devenv, namespace, name, uid)) and all(got.values()) and got, 20,
                      f"{name}'s outputs, lines and events in NATS")
    return uid, stored


def test_a_run_is_deleted_ttl_seconds_after_it_ended_with_what_it_stored(
        operator: OperatorProcess, kubectl: Kubectl, kube: Kube, devenv: DevEnvironment, namespace: str) -> None:
    """The run's own TTL wins over its Workflow's; a sibling with the Workflow's long TTL stays, with
    everything it stored."""
    apply(kubectl, namespace, workflow("short", [{"id": "b", "tool": "big", "with": {}}], tools=[BIG],
                                       ttlSecondsAfterFinished=3600),
          _with_ttl("short-1", "short", 2), _with_ttl("short-kept", "short", None))
    uid, _ = _finished_and_stored(kubectl, devenv, namespace, "short-1")
    kept_uid, kept = _finished_and_stored(kubectl, devenv, namespace, "short-kept")
    wait_for(lambda: _gone(kube, namespace, "short-1"), 30, "short-1 to be deleted by its TTL")
    wait_for(lambda: leftovers(devenv, namespace, "short-1", uid) == {"outputs": 0, "logs": 0, "state": 0}, 20,
             "short-1's outputs, log lines and state events to be purged")
    assert not _gone(kube, namespace, "short-kept")
    assert 'compozy_executions_deleted_total{reason="ttl"}' in operator.metrics()
    assert execution_status(kubectl, namespace, "short-kept")["snapshot"]["ttlSecondsAfterFinished"] == 3600
    assert leftovers(devenv, namespace, "short-kept", kept_uid) == kept


def state_events_of(devenv: DevEnvironment, namespace: str, name: str) -> list[tuple[str, str]]:
    """(uid, type) of every state event stored under the execution name, in stream order."""
    async def read(js: Any) -> list[tuple[str, str]]:
        sub = await js.pull_subscribe(state_subject(namespace, name, None), stream=STATE_STREAM, config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE, inactive_threshold=30))
        out: list[tuple[str, str]] = []
        try:
            while (pending := (await sub.consumer_info()).num_pending) > 0:
                out += [(body["data"]["uid"], body["type"]) for m in await sub.fetch(min(pending, 256), 5)
                        if (body := json.loads(m.data))]
        finally:
            await sub.unsubscribe()
        return out
    return list(jetstream(devenv, read))


def test_purging_a_deleted_runs_state_events_spares_a_new_run_of_the_same_name(
        operator: OperatorProcess, kubectl: Kubectl, kube: Kube, devenv: DevEnvironment, namespace: str) -> None:
    """State subjects name the execution, not the run: the purge stops at the deleted run's last
    event, or leaves them all when the new run has published since."""
    apply(kubectl, namespace, workflow("twice", [{"id": "b", "tool": "big", "with": {}}], tools=[BIG]),
          execution("twice-1", "twice"))
    old, _ = _finished_and_stored(kubectl, devenv, namespace, "twice-1")
    kubectl.ok("delete", "wfx", "twice-1", "-n", namespace, "--wait=true")
    apply(kubectl, namespace, execution("twice-1", "twice"))  # at once: it races the purge
    wait_finished(kubectl, namespace, "twice-1")
    new = json.loads(kubectl.ok("get", "wfx", "twice-1", "-n", namespace, "-o", "json"))["metadata"]["uid"]
    wait_for(lambda: leftovers(devenv, namespace, "twice-1", old)["logs"] == 0, 20, "the old run's purge")
    mine = [t for uid, t in state_events_of(devenv, namespace, "twice-1") if uid == new]
    assert "WorkflowExecutionStarted" in mine and "WorkflowExecutionSuccess" in mine, mine
    # and when the new one goes, nothing is left under the name but what the old one may have left
    kubectl.ok("delete", "wfx", "twice-1", "-n", namespace)
    wait_for(lambda: not [u for u, _ in state_events_of(devenv, namespace, "twice-1") if u == new], 20,
             "the new run's state events to be purged with it")


@pytest.fixture
def own_operator(operator: OperatorProcess, devenv: DevEnvironment, tmp_path: Path) -> Iterator[OperatorProcess]:
    """An operator this test may kill and start (the session's is stopped meanwhile); ended runs'
    pods stay until their run goes (pod cleanup Never), so a restart has pods to find."""
    with instead_of(operator, devenv, tmp_path / "operator.log", COMPOZY_POD_CLEANUP="Never") as op:
        yield op


def test_a_run_that_expires_while_no_operator_runs_is_deleted_after_the_restart(
        own_operator: OperatorProcess, kubectl: Kubectl, kube: Kube, devenv: DevEnvironment, namespace: str) -> None:
    """Level-triggered: the operator that set the timer is killed before it fires; the next one finds
    the expired run in its first list and deletes it, with what it stored (and its pods)."""
    apply(kubectl, namespace, workflow("expires", [{"id": "b", "tool": "big", "with": {}}], tools=[BIG]),
          _with_ttl("expires-1", "expires", 3))
    uid, _ = _finished_and_stored(kubectl, devenv, namespace, "expires-1")
    own_operator.kill()
    finished = epoch(execution_status(kubectl, namespace, "expires-1")["finishedAt"])
    time.sleep(max(0.0, finished + 3 - time.time()) + 0.5)  # expired while no operator runs
    assert not _gone(kube, namespace, "expires-1") and _pods(kube, namespace) == {"expires-1-b-1"}
    own_operator.start()
    wait_for(lambda: _gone(kube, namespace, "expires-1"), 30, "the expired run to be deleted after the restart")
    wait_for(lambda: leftovers(devenv, namespace, "expires-1", uid) == {"outputs": 0, "logs": 0, "state": 0}, 20,
             "its outputs, log lines and state events to be purged")
    # the garbage collector's work (owner references): a fresh cluster's watches the CRD after its
    # discovery resync (every 30 s)
    wait_for(lambda: not _pods(kube, namespace), 90, "its pods to go with it")


def test_history_limits_keep_the_newest_runs_of_each_outcome(operator: OperatorProcess, kubectl: Kubectl,
                                                             kube: Kube, namespace: str) -> None:
    """Each run's end prunes its Workflow's history; lowering the limit prunes at once; another
    Workflow's runs and a run in flight are neither deleted nor counted."""
    apply(kubectl, namespace,
          workflow("kept", [{"id": "m", "tool": "maybe", "with": {"fail": "{{ workflow.input.fail }}",
                                                                 "seconds": "{{ workflow.input.seconds }}"}}],
                   tools=[MAYBE], historyLimit={"succeeded": 2, "failed": 1},
                   input={"type": "object", "properties": {"fail": {"type": "boolean"},
                                                           "seconds": {"type": "number", "default": 0}}}),
          workflow("other", [{"id": "m", "tool": "maybe", "with": {"fail": False}}], tools=[MAYBE]),
          execution("other-1", "other"), execution("long-1", "kept", {"fail": False, "seconds": 120}))
    order = [("ok-1", False), ("bad-1", True), ("ok-2", False), ("bad-2", True), ("ok-3", False)]
    for name, fail in order:  # one after the other: their finish times order them
        apply(kubectl, namespace, execution(name, "kept", {"fail": fail}))
        assert wait_finished(kubectl, namespace, name)["phase"] == ("Failed" if fail else "Succeeded")
    wait_finished(kubectl, namespace, "other-1")
    wait_for(lambda: _runs(kube, namespace) == {"ok-2", "ok-3", "bad-2", "other-1", "long-1"}, 30,
             "the history beyond the limits to be deleted")
    kubectl.ok("patch", "czwf", "kept", "-n", namespace, "--type=merge", "-p",
               '{"spec": {"historyLimit": {"succeeded": 1, "failed": 0}}}')
    wait_for(lambda: _runs(kube, namespace) == {"ok-3", "other-1", "long-1"}, 30, "the lowered limit to apply")
    assert execution_status(kubectl, namespace, "long-1").get("phase") in ("Pending", "Running")
    assert 'compozy_executions_deleted_total{reason="history"}' in operator.metrics()


def _pod_phases(kube: Kube, namespace: str) -> dict[str, str]:
    return {p["metadata"]["name"]: p["status"].get("phase", "")
            for p in kube.get(f"/api/v1/namespaces/{namespace}/pods")["items"]}


# a succeeds, b fails: the run fails with one pod of each
TWO = [{"id": "a", "tool": "maybe", "with": {"fail": False}, "onSuccess": {"next": "b"}},
       {"id": "b", "tool": "maybe", "with": {"fail": True}}]


@pytest.mark.parametrize(("policy", "left"), [
    (None, set()),  # the operator's default: OnPodCompletion, as before podCleanup existed
    ("OnPodCompletion", set()),
    ("OnPodSuccess", {"pc-1-b-1"}),  # the failed one stays for debugging
    ("Never", {"pc-1-a-1", "pc-1-b-1"}),
])
def test_pod_cleanup_policies(policy: str | None, left: set[str], operator: OperatorProcess, kubectl: Kubectl,
                              kube: Kube, namespace: str) -> None:
    spec = {"podCleanup": {"policy": policy}} if policy else {}
    apply(kubectl, namespace, workflow("pc", TWO, tools=[MAYBE], **spec), execution("pc-1", "pc"))
    assert wait_finished(kubectl, namespace, "pc-1")["phase"] == "Failed"
    # both pods were seen finished; wait for the ones to go, then see the others stay as they are
    wait_for(lambda: (got := _pod_phases(kube, namespace)).keys() == left
             and all(phase in ("Succeeded", "Failed") for phase in got.values()), 30,
             f"only {sorted(left)} to be left, finished")
    apply(kubectl, namespace, execution("pc-2", "pc"))  # one more run's end: nothing of pc-1 changes
    wait_finished(kubectl, namespace, "pc-2")
    wait_for(lambda: {p for p in _pod_phases(kube, namespace) if p.startswith("pc-2-")}
             == {p.replace("pc-1", "pc-2") for p in left}, 30, "pc-2's pods to be cleaned up the same way")
    assert {p for p in _pod_phases(kube, namespace) if p.startswith("pc-1-")} == left


def test_on_workflow_completion_keeps_pods_until_the_run_ends_then_after_the_delay(
        operator: OperatorProcess, kubectl: Kubectl, kube: Kube, namespace: str) -> None:
    apply(kubectl, namespace,
          workflow("owc", [{"id": "a", "tool": "maybe", "with": {"fail": False}, "onSuccess": {"next": "s"}},
                           {"id": "s", "tool": "slow", "with": {"seconds": 3}}], tools=[MAYBE, SLOW],
                   podCleanup={"policy": "OnWorkflowCompletion", "delay": "2s"}),
          execution("owc-1", "owc"))
    wait_for(lambda: execution_status(kubectl, namespace, "owc-1").get("tasks", {}).get("s", {}).get("phase")
             == "Running", 30, "the second task to run")
    assert _pod_phases(kube, namespace).get("owc-1-a-1") == "Succeeded"  # ended long ago, kept for the run
    status = wait_finished(kubectl, namespace, "owc-1")
    assert status["phase"] == "Succeeded"
    wait_for(lambda: not _pod_phases(kube, namespace), 30, "both pods to go after the run ended")
    gone = time.time()
    assert gone >= epoch(status["finishedAt"]) + 2  # not before the delay


def test_events_are_aggregated_per_run_and_reason(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                  namespace: str) -> None:
    """Each failed attempt of a retried task raises one TaskFailed Event's count instead of adding one."""
    apply(kubectl, namespace,
          workflow("flaky", [{"id": "m", "tool": "maybe", "with": {"fail": True},
                              "retry": {"limit": 4, "backoff": {"initial": "1s", "factor": 1}}}], tools=[MAYBE]),
          execution("flaky-1", "flaky"))
    assert wait_finished(kubectl, namespace, "flaky-1", 90)["phase"] == "Failed"
    uid = json.loads(kubectl.ok("get", "wfx", "flaky-1", "-n", namespace, "-o", "json"))["metadata"]["uid"]

    def events() -> dict[str, dict[str, Any]] | None:
        items = kube.get(f"/api/v1/namespaces/{namespace}/events",
                         fieldSelector=f"involvedObject.uid={uid}")["items"]
        by_reason = {e["reason"]: e for e in items}
        return by_reason if {"Started", "TaskFailed", "Failed"} <= set(by_reason) and len(items) == len(
            by_reason) else None

    got = wait_for(events, 20, "one Event per reason")
    assert set(got) == {"Started", "TaskFailed", "Failed"}
    failed = got["TaskFailed"]
    assert failed["metadata"]["name"] == event_name("flaky-1", uid, "Warning", "TaskFailed")
    assert 2 <= failed["count"] <= 5 and "attempt" in failed["message"], failed
    assert got["Failed"]["count"] == 1 and got["Started"]["count"] == 1


def armed_in(operator: OperatorProcess, devenv: DevEnvironment, tmp_path: Path, namespace: str,
             point: str) -> contextlib.AbstractContextManager[OperatorProcess]:
    """An operator armed at ``point`` that watches only the test's namespace (another test's namespace
    being deleted meanwhile must not pass the point first)."""
    return instead_of(operator, devenv, tmp_path / "armed.log", COMPOZY_FAILPOINTS=point, COMPOZY_NAMESPACES=namespace)


@pytest.mark.parametrize("point", ["kube.delete.workflowexecutions:after", "purge.outputs:before",
                                   "purge.logs:before", "purge.state:before"])
def test_a_crash_between_deleting_a_run_and_purging_it_leaves_no_stored_output(
        point: str, operator: OperatorProcess, kubectl: Kubectl, kube: Kube, devenv: DevEnvironment,
        namespace: str, tmp_path: Path) -> None:
    """The operator deletes an expired run and is killed before (or while) purging what it stored: the
    next operator never sees that run (gone before it listed), and its orphan sweep removes the
    outputs. (Log lines and state events of such a run age out of their streams: docs/cleanup.md.)"""
    apply(kubectl, namespace, workflow("gone", [{"id": "b", "tool": "big", "with": {}}], tools=[BIG]),
          workflow("stays", [{"id": "b", "tool": "big", "with": {}}], tools=[BIG]),
          execution("stays-1", "stays"))
    kept_uid, _ = _finished_and_stored(kubectl, devenv, namespace, "stays-1")
    with armed_in(operator, devenv, tmp_path, namespace, point) as armed:
        apply(kubectl, namespace, _with_ttl("gone-1", "gone", 2))
        wait_finished(kubectl, namespace, "gone-1")
        uid = json.loads(kubectl.ok("get", "wfx", "gone-1", "-n", namespace, "-o", "json"))["metadata"]["uid"]
        crashed_at(armed, point)
        assert _gone(kube, namespace, "gone-1")
        orphaned = point in ("kube.delete.workflowexecutions:after", "purge.outputs:before")
        assert bool(stored_outputs(devenv, output_prefix(namespace, "gone-1", uid))) == orphaned
    # the session's operator, started again on leaving the block, sweeps at its start
    wait_for(lambda: not stored_outputs(devenv, output_prefix(namespace, "gone-1", uid)), 30,
             "the orphaned output to be swept")
    if orphaned:  # (other tests' orphans may be swept too: only "swept some" is certain)
        assert metric(operator.metrics(), "compozy_outputs_swept_total") > 0
    assert stored_outputs(devenv, output_prefix(namespace, "stays-1", kept_uid)), "a live run's output was swept"


def test_a_crash_in_a_history_prune_is_finished_by_the_next_operator(
        operator: OperatorProcess, kubectl: Kubectl, kube: Kube, devenv: DevEnvironment, namespace: str,
        tmp_path: Path) -> None:
    """Killed right after deleting the first run beyond the limit: the next operator prunes the rest
    from its first sight of the Workflow, and sweeps the deleted run's outputs."""
    apply(kubectl, namespace, workflow("hist", [{"id": "b", "tool": "big", "with": {}}], tools=[BIG],
                                       historyLimit={"succeeded": 1}))
    point = "kube.delete.workflowexecutions:after"
    uids = {}
    with armed_in(operator, devenv, tmp_path, namespace, point) as armed:
        for name in ("h-1", "h-2"):
            apply(kubectl, namespace, execution(name, "hist"))
            uids[name], _ = _finished_and_stored(kubectl, devenv, namespace, name)
        crashed_at(armed, point)
        assert _runs(kube, namespace) == {"h-2"}
        assert stored_outputs(devenv, output_prefix(namespace, "h-1", uids["h-1"]))
    apply(kubectl, namespace, execution("h-3", "hist"))
    assert wait_finished(kubectl, namespace, "h-3")["phase"] == "Succeeded"
    wait_for(lambda: _runs(kube, namespace) == {"h-3"}, 30, "the history limit to apply again")
    wait_for(lambda: not stored_outputs(devenv, output_prefix(namespace, "h-1", uids["h-1"]))
             and not stored_outputs(devenv, output_prefix(namespace, "h-2", uids["h-2"])), 30,
             "the deleted runs' outputs to be removed")


def test_a_crash_in_the_orphan_sweep_is_finished_by_the_next_operator(
        operator: OperatorProcess, kubectl: Kubectl, kube: Kube, devenv: DevEnvironment, namespace: str,
        tmp_path: Path) -> None:
    """A run deleted while no operator runs leaves its output; the next operator's sweep is killed just
    before it removes it; the one after removes it, and never a live run's."""
    apply(kubectl, namespace, workflow("swept", [{"id": "b", "tool": "big", "with": {}}], tools=[BIG]),
          execution("swept-1", "swept"), execution("swept-2", "swept"))
    gone_uid, _ = _finished_and_stored(kubectl, devenv, namespace, "swept-1")
    kept_uid, _ = _finished_and_stored(kubectl, devenv, namespace, "swept-2")
    point = "sweep.outputs:before"
    with armed_in(operator, devenv, tmp_path, namespace, point) as armed:
        armed.kill()
        kubectl.ok("delete", "wfx", "swept-1", "-n", namespace)
        armed.start(wait_ready=False)  # the sweep runs at start: it may fire before the probe answers
        crashed_at(armed, point)
        assert stored_outputs(devenv, output_prefix(namespace, "swept-1", gone_uid))
    wait_for(lambda: not stored_outputs(devenv, output_prefix(namespace, "swept-1", gone_uid)), 30,
             "the orphaned output to be swept by the next operator")
    assert stored_outputs(devenv, output_prefix(namespace, "swept-2", kept_uid)), "a live run's output was swept"
