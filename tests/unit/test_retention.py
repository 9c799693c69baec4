"""The cleanup decisions (compozy_operator.retention, pure): TTL expiry, history limits, pod fates."""

from __future__ import annotations

from typing import Any

import pytest

from compozy_operator.resources.models import HistoryLimit, PodCleanup
from compozy_operator.retention import (ANNOTATION_POD_CLEANUP, PodFate, PodRule, expires_at, finished_at,
                                        history_victims, orphaned_outputs, pod_fate, ttl_seconds)

T0 = "2026-01-01T00:00:00Z"


def run(name: str = "r", phase: str = "Succeeded", finished: str | None = "2026-01-01T00:01:00Z",
        spec: dict[str, Any] | None = None, workflow: str = "wf", **status: Any) -> dict[str, Any]:
    st: dict[str, Any] = {"phase": phase, **status}
    if finished:
        st["finishedAt"] = finished
    return {"metadata": {"name": name, "uid": f"uid-{name}", "creationTimestamp": T0, "resourceVersion": "1"},
            "spec": {"workflowRef": {"name": workflow}, **(spec or {})}, "status": st}


def test_the_runs_own_ttl_wins_over_its_workflows_and_the_default() -> None:
    snap = {"snapshot": {"ttlSecondsAfterFinished": 60}}
    assert ttl_seconds(run(spec={"ttlSecondsAfterFinished": 5}, **snap), 600) == 5
    assert ttl_seconds(run(**snap), 600) == 60
    assert ttl_seconds(run(), 600) == 600
    assert ttl_seconds(run(), None) is None
    assert ttl_seconds(run(spec={"ttlSecondsAfterFinished": 0}, **snap), 600) == 0  # zero: at once, not unset


@pytest.mark.parametrize("bad", [-1, "10", True, 1.5, None])
def test_a_ttl_that_is_not_a_count_is_ignored(bad: Any) -> None:
    assert ttl_seconds(run(spec={"ttlSecondsAfterFinished": bad}), 7) == 7


def test_a_run_expires_its_ttl_after_it_finished() -> None:
    end = finished_at(run())
    assert expires_at(run(spec={"ttlSecondsAfterFinished": 30}), None) == end + 30
    assert expires_at(run(), None) is None  # no TTL anywhere: kept


@pytest.mark.parametrize("phase", ["Pending", "Running"])
def test_a_run_in_flight_never_expires(phase: str) -> None:
    assert expires_at(run(phase=phase, finished=None, spec={"ttlSecondsAfterFinished": 0}), 0) is None


def test_a_run_about_to_be_retried_does_not_expire_but_one_whose_retry_ran_does() -> None:
    asked = run(phase="Failed", spec={"retry": 1, "ttlSecondsAfterFinished": 0})
    assert expires_at(asked, None) is None
    assert expires_at({**asked, "status": {**asked["status"], "retries": 1}}, None) is not None
    # a Succeeded run is never retried, whatever spec.retry says
    assert expires_at(run(spec={"retry": 3, "ttlSecondsAfterFinished": 0}), None) is not None


def test_a_run_being_deleted_is_left_to_its_deletion() -> None:
    r = run(spec={"ttlSecondsAfterFinished": 0})
    r["metadata"]["deletionTimestamp"] = T0
    assert expires_at(r, None) is None


def test_a_run_without_finished_at_counts_from_its_creation() -> None:
    assert finished_at(run(finished=None)) == finished_at(run(finished=T0))
    assert finished_at(run(finished="garbage")) == finished_at(run(finished=T0))


def _at(minute: int) -> str:
    return f"2026-01-01T00:{minute:02d}:00Z"


def test_history_keeps_the_newest_of_each_outcome() -> None:
    runs = [run(f"s{i}", finished=_at(i)) for i in range(5)]
    runs += [run(f"f{i}", phase=p, finished=_at(10 + i)) for i, p in enumerate(["Failed", "TimedOut", "Cancelled"])]
    gone = {r["metadata"]["name"] for r in history_victims(runs, "wf", HistoryLimit(succeeded=2, failed=1))}
    assert gone == {"s0", "s1", "s2", "f0", "f1"}


def test_history_limits_only_the_outcome_it_names() -> None:
    runs = [run(f"s{i}", finished=_at(i)) for i in range(3)] + [run("f", phase="Failed")]
    assert [r["metadata"]["name"] for r in history_victims(runs, "wf", HistoryLimit(succeeded=1))] == ["s1", "s0"]
    assert history_victims(runs, "wf", HistoryLimit()) == []
    assert {r["metadata"]["name"] for r in history_victims(runs, "wf", HistoryLimit(succeeded=0, failed=0))} == \
        {"s0", "s1", "s2", "f"}


def test_history_neither_counts_nor_removes_runs_in_flight_retried_or_of_another_workflow() -> None:
    runs = [run("old", finished=_at(1)), run("new", finished=_at(2)),
            run("running", phase="Running", finished=None),
            run("other", finished=_at(3), workflow="other-wf"),
            run("retrying", phase="Failed", finished=_at(4), spec={"retry": 1})]
    assert [r["metadata"]["name"] for r in history_victims(runs, "wf", HistoryLimit(succeeded=1, failed=0))] == ["old"]


def test_history_ties_on_finish_time_are_broken_by_creation_then_name() -> None:
    runs = [run(n, finished=_at(1)) for n in ("a", "c", "b")]
    assert [r["metadata"]["name"] for r in history_victims(runs, "wf", HistoryLimit(succeeded=1))] == ["b", "a"]


DEFAULT = PodRule("OnPodCompletion", 0.0)


@pytest.mark.parametrize(("policy", "phase", "run_end", "fate"), [
    ("OnPodCompletion", "Succeeded", None, PodFate(100.0)),
    ("OnPodCompletion", "Failed", None, PodFate(100.0)),
    ("OnPodSuccess", "Succeeded", None, PodFate(100.0)),
    ("OnPodSuccess", "Failed", None, PodFate()),  # kept for debugging, until the run is deleted
    ("OnPodSuccess", "Failed", 200.0, PodFate()),
    ("OnWorkflowCompletion", "Succeeded", None, PodFate(wait_for_run=True)),
    ("OnWorkflowCompletion", "Failed", 200.0, PodFate(200.0)),
    ("Never", "Succeeded", 200.0, PodFate()),
])
def test_pod_fates(policy: str, phase: str, run_end: float | None, fate: PodFate) -> None:
    assert pod_fate(PodRule(policy), phase, 100.0, run_end) == fate


def test_the_delay_counts_from_the_pods_end_or_the_runs() -> None:
    assert pod_fate(PodRule("OnPodSuccess", 30), "Succeeded", 100.0, None) == PodFate(130.0)
    assert pod_fate(PodRule("OnWorkflowCompletion", 30), "Succeeded", 100.0, 150.0) == PodFate(180.0)


def test_a_workflows_pod_cleanup_falls_back_field_by_field_to_the_operators() -> None:
    default = PodRule("OnPodSuccess", 5)
    assert PodRule.of(None, default) == default
    assert PodRule.of(PodCleanup(policy="Never"), default) == PodRule("Never", 5)
    assert PodRule.of(PodCleanup(delay="1m"), default) == PodRule("OnPodSuccess", 60)


@pytest.mark.parametrize("rule", [PodRule(), PodRule("Never"), PodRule("OnWorkflowCompletion", 30),
                                  PodRule("OnPodSuccess", 0.25)])
def test_the_rule_travels_on_the_pod(rule: PodRule) -> None:
    pod = {"metadata": {"annotations": {ANNOTATION_POD_CLEANUP: rule.annotation()}}}
    assert PodRule.from_pod(pod, PodRule("Never", 99)) == rule


@pytest.mark.parametrize("text", [None, "", "Bogus", "Never/x", "Never/-1", "Never/inf", "Never/nan", 3])
def test_a_pod_without_a_valid_rule_gets_the_default(text: Any) -> None:
    pod = {"metadata": {"annotations": {} if text is None else {ANNOTATION_POD_CLEANUP: text}}}
    assert PodRule.from_pod(pod, DEFAULT) == DEFAULT


def test_orphaned_outputs_are_those_of_runs_that_are_gone() -> None:
    names = ["a/run-1/u1/t/1", "a/run-1/u1/t/2", "a/run-2/u2/t/1", "b/run-1/u3/t/1", "a/run-1/u9/t/1",
             "odd-key", "a/x/y", "c/run/u4/t/1"]
    live = {("a", "u1"), ("b", "u3")}
    assert orphaned_outputs(names, live, []) == ["a/run-2/u2/t/1", "a/run-1/u9/t/1", "c/run/u4/t/1"]
    # an operator of some namespaces never touches another's keys
    assert orphaned_outputs(names, live, ["a", "b"]) == ["a/run-2/u2/t/1", "a/run-1/u9/t/1"]
    # a uid is a run's only in its own namespace
    assert orphaned_outputs(["b/run-1/u1/t/1"], live, []) == ["b/run-1/u1/t/1"]
