"""Router, parallel and collection tasks end to end; every example under examples/ runs here."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from compozy_operator.kube import Kube
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl

from .conftest import wait_finished
from .test_workflows import apply, execution, workflow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
OK = "def run(input, ctx):\n    return {'v': input.get('v')}\n"
FAIL = "def run(input, ctx):\n    raise RuntimeError('no ' + str(input.get('v')))\n"
SLEEP = "import time\ndef run(input, ctx):\n    time.sleep(input['s'])\n    return {'slept': input['s']}\n"
TOOLS = [{"id": "ok", "python": OK}, {"id": "fail", "python": FAIL}, {"id": "sleep", "python": SLEEP}]


def _t(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def max_overlap(tasks: list[dict[str, Any]]) -> int:
    """The most tasks running at the same moment, from their startedAt/finishedAt."""
    points = sorted([(_t(t["startedAt"]), 1) for t in tasks] + [(_t(t["finishedAt"]), -1) for t in tasks],
                    key=lambda p: (p[0], p[1]))
    now = best = 0
    for _, step in points:
        now += step
        best = max(best, now)
    return best


class AlivePods:
    """The most task pods alive (created, not yet ended) at once in a namespace, from a pod watch."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.alive: set[str] = set()
        self.most = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        rv = self.kube.get(path)["metadata"]["resourceVersion"]
        while not self.stop.is_set():
            for ev in self.kube.watch(path, rv, timeout_seconds=5):
                if ev["type"] == "BOOKMARK":
                    continue
                obj = ev["object"]
                rv = obj["metadata"]["resourceVersion"]
                ended = ev["type"] == "DELETED" or obj.get("status", {}).get("phase") in ("Succeeded", "Failed")
                (self.alive.discard if ended else self.alive.add)(obj["metadata"]["name"])
                self.most = max(self.most, len(self.alive))

    def __enter__(self) -> AlivePods:
        self.thread.start()
        time.sleep(0.3)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


def test_router_example(operator: OperatorProcess, kubectl: Kubectl, namespace: str) -> None:
    kubectl.ok("apply", "-n", namespace, "-f", str(EXAMPLES / "router.yaml"))
    ham = wait_finished(kubectl, namespace, "triage-ham")
    spam = wait_finished(kubectl, namespace, "triage-spam")
    assert ham["phase"] == spam["phase"] == "Succeeded", (ham, spam)
    assert ham["output"] == {"route": "ham"} and set(ham["tasks"]) == {"classify", "route", "summarize"}
    assert ham["tasks"]["summarize"]["output"] == {"summary": "The quarterly report is attached..."}
    assert spam["output"] == {"route": "spam"} and set(spam["tasks"]) == {"classify", "route", "drop"}
    assert spam["tasks"]["route"]["output"] == {"route": "spam", "next": "drop"}


def test_router_without_a_matching_route_fails_listing_routes(operator: OperatorProcess, kubectl: Kubectl,
                                                              namespace: str) -> None:
    apply(kubectl, namespace,
          workflow("pick", [{"id": "r", "type": "router", "condition": "{{ workflow.input.pick }}",
                             "routes": {"a": "x", "b": "y"}},
                            {"id": "x", "tool": "ok"}, {"id": "y", "tool": "ok"}], tools=TOOLS),
          execution("pick-1", "pick", {"pick": "c"}))
    status = wait_finished(kubectl, namespace, "pick-1")
    assert status["phase"] == "Failed" and status["tasks"]["r"]["error"]["reason"] == "NoRoute"
    assert "known routes: a, b" in status["tasks"]["r"]["error"]["message"]


def test_parallel_example(operator: OperatorProcess, kubectl: Kubectl, namespace: str) -> None:
    kubectl.ok("apply", "-n", namespace, "-f", str(EXAMPLES / "parallel.yaml"))
    status = wait_finished(kubectl, namespace, "text-stats-1")
    assert status["phase"] == "Succeeded", status
    assert status["output"] == {"words": 7, "chars": 44, "loud": "PARALLEL TASKS SHARE NOTHING BUT THEIR INPUT"}
    children = [status["tasks"][k] for k in ("count-words", "count-chars", "shout")]
    assert max_overlap(children) <= 2


@pytest.mark.parametrize("strategy, phase, check", [
    ("waitAll", "Failed", lambda st: st["tasks"]["slow"]["phase"] == "Succeeded"
     and st["tasks"]["p"]["error"]["reason"] == "ChildFailed"),
    ("failFast", "Failed", lambda st: st["tasks"]["slow"]["phase"] == "Cancelled"),
    ("bestEffort", "Succeeded", lambda st: st["tasks"]["p"]["output"]["bad"]["error"]["message"]
     == "RuntimeError: no 1 (line 2)" and st["tasks"]["p"]["output"]["slow"] == {"output": {"slept": 4}}),
])
def test_parallel_strategies_with_a_failing_child(operator: OperatorProcess, kubectl: Kubectl, namespace: str,
                                                  strategy: str, phase: str, check) -> None:
    name = f"strat-{strategy.lower()}"
    apply(kubectl, namespace,
          workflow(name, [{"id": "p", "type": "parallel", "strategy": strategy, "tasks": [
              {"id": "bad", "tool": "fail", "with": {"v": 1}}, {"id": "slow", "tool": "sleep", "with": {"s": 4}}]}],
              tools=TOOLS),
          execution(f"{name}-1", name))
    status = wait_finished(kubectl, namespace, f"{name}-1", 60)
    assert status["phase"] == phase, status
    assert check(status), status


def test_parallel_race_takes_the_first_success_and_cancels_the_rest(operator: OperatorProcess, kubectl: Kubectl,
                                                                   namespace: str) -> None:
    apply(kubectl, namespace,
          workflow("racing", [{"id": "p", "type": "parallel", "strategy": "race", "tasks": [
              {"id": "tortoise", "tool": "sleep", "with": {"s": 60}}, {"id": "hare", "tool": "ok", "with": {"v": 9}}]}],
              tools=TOOLS),
          execution("racing-1", "racing"))
    status = wait_finished(kubectl, namespace, "racing-1", 60)
    assert status["phase"] == "Succeeded", status
    assert status["tasks"]["p"]["output"] == {"winner": "hare", "output": {"v": 9}}
    assert status["tasks"]["tortoise"]["phase"] == "Cancelled"


def test_collection_example(operator: OperatorProcess, kubectl: Kubectl, kube: Kube, namespace: str) -> None:
    with AlivePods(kube, namespace) as pods:
        kubectl.ok("apply", "-n", namespace, "-f", str(EXAMPLES / "collection.yaml"))
        status = wait_finished(kubectl, namespace, "shout-words-1", 90)
    assert pods.most <= 2, f"{pods.most} task pods alive at once with maxWorkers 2"
    assert status["phase"] == "Succeeded", status
    assert status["output"] == {"shouted": ["THE", "QUICK", "BROWN", "FOX", "FAST"]}
    children = {k: v for k, v in status["tasks"].items() if k.startswith("each-word[")}
    assert sorted(children) == ["each-word[0]", "each-word[1]", "each-word[2]", "each-word[3]", "each-word[5]"]
    assert children["each-word[5]"]["output"] == {"word": "FAST", "position": 5}
    assert max_overlap(list(children.values())) <= 2


def test_sequential_collection_runs_one_at_a_time(operator: OperatorProcess, kubectl: Kubectl, kube: Kube,
                                                  namespace: str) -> None:
    with AlivePods(kube, namespace) as pods:
        apply(kubectl, namespace,
              workflow("one-by-one", [{"id": "c", "type": "collection", "items": [1, 2, 3], "mode": "sequential",
                                       "task": {"id": "step", "tool": "sleep", "with": {"s": 1}}}], tools=TOOLS),
              execution("one-by-one-1", "one-by-one"))
        status = wait_finished(kubectl, namespace, "one-by-one-1", 90)
    assert pods.most == 1, f"{pods.most} task pods alive at once in a sequential collection"
    assert status["phase"] == "Succeeded", status
    children = [status["tasks"][f"c[{i}]"] for i in range(3)]
    assert max_overlap(children) == 1
    assert status["tasks"]["c"]["output"] == [{"slept": 1}] * 3
