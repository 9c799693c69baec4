"""nats-server stopped while runs are in flight (defect 6 of issue 10): an outage costs only time.

Every run must end Succeeded with the right output, every attempt must run its tool exactly once
(the tool appends a line per run to a file of this test: task pods are local processes on the
process node), and no task pod may be left behind."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from compozy_operator.kube import Kube
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl, wait_for

from .conftest import wait_finished
from .test_pools import pool, runners, task_pods
from .test_reliability import pods_of
from .test_workflows import apply, execution, workflow

COUNTED = ("import time\n"
           "def run(input, ctx):\n"
           "    with open(input['file'], 'a') as f:\n"
           "        f.write(f'{ctx.execution} {ctx.task} {ctx.attempt}\\n')\n"
           "    time.sleep(input['seconds'])\n"
           "    return {'n': input['n'] * 2}\n")
TASKS = [{"id": "a", "tool": "counted", "onSuccess": {"next": "b"},
          "with": {"file": "{{ workflow.input.file }}", "seconds": 3, "n": "{{ workflow.input.n }}"}},
         {"id": "b", "tool": "counted",
          "with": {"file": "{{ workflow.input.file }}", "seconds": 3, "n": "{{ tasks.a.output.n }}"}}]


def tool_runs(file: Path) -> Counter[str]:
    return Counter(file.read_text().splitlines()) if file.exists() else Counter()


def run_through_outage(devenv: DevEnvironment, kubectl: Kubectl, kube: Kube, namespace: str, tmp_path: Path,
                       outage: float, runs: int, pooled: bool = False) -> None:
    """``pooled``: the tool runs on a warm runner pool (its runner and each attempt's process lose
    NATS too) instead of a pod per attempt."""
    file = tmp_path / "tool-runs"
    names = [f"outage-{i}" for i in range(runs)]
    tool = {"id": "counted", "python": COUNTED, **({"pool": "warm"} if pooled else {})}
    if pooled:
        apply(kubectl, namespace, pool("warm", concurrency=2 * runs, minReplicas=1, maxReplicas=1))
        wait_for(lambda: runners(kube, namespace), 60, "the pool's runner")
    apply(kubectl, namespace, workflow("outage", TASKS, tools=[tool], output={"n": "{{ tasks.b.output.n }}"}),
          *(execution(name, "outage", {"file": str(file), "n": i}) for i, name in enumerate(names)))
    wait_for(lambda: len(tool_runs(file)) == runs, 60, "every run's first tool to start")
    devenv.nats.stop()
    try:
        time.sleep(outage)
    finally:
        devenv.nats.resume()
    resumed = time.monotonic()
    statuses = {name: wait_finished(kubectl, namespace, name, 120 + outage) for name in names}
    print(f"{runs} runs finished {time.monotonic() - resumed:.1f}s after a {outage:.0f}s NATS outage")
    assert {n: s["phase"] for n, s in statuses.items()} == dict.fromkeys(names, "Succeeded"), statuses
    assert {n: s.get("output") for n, s in statuses.items()} == {n: {"n": 4 * i} for i, n in enumerate(names)}
    assert {n: {t: s["tasks"][t]["attempt"] for t in ("a", "b")} for n, s in statuses.items()} == \
        {n: {"a": 1, "b": 1} for n in names}
    assert tool_runs(file) == {f"{n} {t} 1": 1 for n in names for t in ("a", "b")}
    if pooled:  # (the runner's pod stays)
        assert task_pods(kube, namespace) == [], "a pooled attempt got a pod"
    else:
        wait_for(lambda: not pods_of(kube, namespace), 60, "every task pod to be deleted")


def test_runs_in_flight_survive_a_20s_nats_outage(operator: OperatorProcess, devenv: DevEnvironment,
                                                  kubectl: Kubectl, kube: Kube, namespace: str,
                                                  tmp_path: Path) -> None:
    run_through_outage(devenv, kubectl, kube, namespace, tmp_path, outage=20, runs=6)


def test_runs_in_flight_survive_a_60s_nats_outage(operator: OperatorProcess, devenv: DevEnvironment,
                                                  kubectl: Kubectl, kube: Kube, namespace: str,
                                                  tmp_path: Path) -> None:
    run_through_outage(devenv, kubectl, kube, namespace, tmp_path, outage=60, runs=3)


def test_pooled_runs_in_flight_survive_a_20s_nats_outage(operator: OperatorProcess, devenv: DevEnvironment,
                                                         kubectl: Kubectl, kube: Kube, namespace: str,
                                                         tmp_path: Path) -> None:
    run_through_outage(devenv, kubectl, kube, namespace, tmp_path, outage=20, runs=6, pooled=True)
