"""Hostile-workflow benchmark: does the operator keep serving while hostile runs are evaluated?

    .venv/bin/python hack/bench/hostile.py                 # decide overhead, then the canary on a cluster
    .venv/bin/python hack/bench/hostile.py --decide-only   # only the decide overhead (no cluster)

Prints figures (asserts nothing; machines here are shared and noisy):
- decide overhead: workflow.Executor's decide on a 200-task status (and a 10,000-child collection)
  in-process vs through the evaluation pool (pickle there, JSON back), p50/p90;
- canary latency: a one-task workflow, WorkflowExecution created -> seen Succeeded, first with
  nothing else running (idle), while runs that fail for an ordinary reason are submitted one after
  another (benign: the cost of run churn alone), and while hostile runs are (a nested loop
  template, a ReDoS input regex, a 100k-item collection, 'x' * 10**9, a memory bomb), two at a
  time, interleaved so drift on the shared machine hits all three; p50/p90 and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import threading
import time
from typing import Any

from compozy_operator.resources.models import TaskStatus, WorkflowExecutionStatus, WorkflowSpec
from compozy_operator.executor import RunContext, decide
from compozy_operator.sandbox import EvalPool
from compozy_operator.settings import Settings
from compozy_operator.testenv import DevEnvironment

from common import NS, apply, percentile, prepare, rss_mib

OK = "def run(input, ctx):\n    return {'v': input.get('v')}\n"
NESTED = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
HOSTILE: dict[str, tuple[dict[str, Any], Any]] = {
    "nested-loop": ({"tasks": [{"id": "fetch", "tool": "ok", "with": {"url": NESTED}}]}, None),
    "redos": ({"input": {"type": "object", "properties": {"name": {"type": "string", "pattern": "^(a+)+$"}}},
               "tasks": [{"id": "t", "tool": "ok"}]}, {"name": "a" * 29 + "!"}),
    "collection-100k": ({"tasks": [{"id": "each", "type": "collection", "items": "{{ range(100000) | list }}",
                                    "task": {"id": "f", "tool": "ok", "with": {"v": "{{ item }}"}}}]}, None),
    "string-bomb": ({"tasks": [{"id": "t", "tool": "ok", "with": {"v": "{{ 'x' * 10**9 }}"}}]}, None),
    "memory-bomb": ({"tasks": [{"id": "t", "tool": "ok", "with": {"v": (
        "{% set ns = namespace(s='x' * 1000000) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s | length }}")}}]}, None),
}


# ---- decide overhead ---------------------------------------------------------------------


def chain(n: int) -> tuple[WorkflowSpec, WorkflowExecutionStatus]:
    tasks = [{"id": f"t{i}", "tool": "ok", "with": {"text": "{{ workflow.input.text }}", "prev": f"{{{{ tasks.t{i - 1}.output }}}}" if i else 1},
              **({"onSuccess": {"next": f"t{i + 1}"}} if i < n - 1 else {})} for i in range(n)]
    wf = WorkflowSpec.model_validate({"tools": [{"id": "ok", "python": OK}], "tasks": tasks})
    st = {f"t{i}": TaskStatus(phase="Succeeded", attempt=1, output={"i": i, "text": "x" * 40},
                              startedAt="2027-01-15T08:00:00Z", finishedAt="2027-01-15T08:00:01Z") for i in range(n - 1)}
    st[f"t{n - 1}"] = TaskStatus(phase="Running", attempt=1, dispatchedAt="2027-01-15T08:00:02Z")
    return wf, WorkflowExecutionStatus(phase="Running", startedAt="2027-01-15T08:00:00Z", tasks=st)


def fan_out(n: int) -> tuple[WorkflowSpec, WorkflowExecutionStatus]:
    wf = WorkflowSpec.model_validate({"tools": [{"id": "ok", "python": OK}], "tasks": [
        {"id": "each", "type": "collection", "items": f"{{{{ range({n}) | list }}}}",
         "task": {"id": "f", "tool": "ok", "with": {"text": "{{ workflow.input.text }}", "i": "{{ item }}"}}}]})
    return wf, WorkflowExecutionStatus(phase="Running", startedAt="2027-01-15T08:00:00Z", tasks={})


def collection(n: int) -> tuple[WorkflowSpec, WorkflowExecutionStatus]:
    wf = WorkflowSpec.model_validate({"tools": [{"id": "ok", "python": OK}], "tasks": [
        {"id": "each", "type": "collection", "items": "{{ workflow.input.items }}", "maxWorkers": 10,
         "filter": "{{ item % 7 != 3 }}", "task": {"id": "f", "tool": "ok", "with": {"v": "{{ item }}"}}}]})
    st = {f"each[{i}]": TaskStatus(phase="Succeeded", attempt=1, output={"i": i}) for i in range(n // 2)}
    return wf, WorkflowExecutionStatus(phase="Running", startedAt="2027-01-15T08:00:00Z", tasks=st)


def decide_overhead(rounds: int) -> None:
    now = 1_800_000_000.0

    async def main() -> None:
        pool = EvalPool(Settings())
        try:
            for label, (wf, status), value in (
                    ("200-task chain, the last one running", chain(200), {"text": "hello"}),
                    ("200-child collection, all dispatched at once", fan_out(200), {"text": "hello"}),
                    ("10,000-child collection (half done, filter)", collection(10_000), {"items": list(range(10_000))})):
                run = RunContext(execution="bench", input=value)
                local, pooled = [], []
                await pool.decide(label, wf, status, run, now)  # the worker is up and has the spec
                for _ in range(rounds):
                    t = time.perf_counter()
                    a = decide(wf, status, run, now)
                    local.append(time.perf_counter() - t)
                    t = time.perf_counter()
                    b = await pool.decide(label, wf, status, run, now)
                    pooled.append(time.perf_counter() - t)
                assert a == b
                print(f"decide, {label}: in-process p50 {statistics.median(local) * 1000:.1f} ms "
                      f"(p90 {percentile(local, 90) * 1000:.1f}), via the pool p50 {statistics.median(pooled) * 1000:.1f} ms "
                      f"(p90 {percentile(pooled, 90) * 1000:.1f}); overhead p50 "
                      f"{(statistics.median(pooled) - statistics.median(local)) * 1000:.1f} ms")
        finally:
            await pool.close()

    asyncio.run(main())


# ---- the canary ----------------------------------------------------------------------------


def doc(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "compozy.dev/v1alpha1", "kind": kind, "metadata": {"name": name, "namespace": NS},
            "spec": spec}


def run_to_end(kube: Any, name: str, workflow: str, value: Any, timeout: float = 120) -> tuple[str, float]:
    spec: dict[str, Any] = {"workflowRef": {"name": workflow}}
    if value is not None:
        spec["input"] = value
    t0 = time.time()
    kube.create(f"/apis/compozy.dev/v1alpha1/namespaces/{NS}/workflowexecutions",
                doc("WorkflowExecution", name, spec))
    while time.time() - t0 < timeout:
        st = kube.get(f"/apis/compozy.dev/v1alpha1/namespaces/{NS}/workflowexecutions/{name}").get("status") or {}
        if st.get("phase") in ("Succeeded", "Failed", "TimedOut", "Cancelled"):
            return st["phase"], time.time() - t0
        time.sleep(0.05)
    return "Stuck", time.time() - t0


# The same churn of runs that fail, for an ordinary reason, without costing any evaluation: what
# the canary would pay anyway for runs being created, failed and written beside it.
BENIGN: dict[str, tuple[dict[str, Any], Any]] = {
    "undefined-name": ({"tasks": [{"id": "t", "tool": "ok", "with": {"v": "{{ workflow.input.nope }}"}}]}, {}),
}


def canary(rounds: int) -> None:
    with DevEnvironment.start() as env:
        kubectl, op = prepare(env)
        apply(kubectl, doc("Workflow", "canary", {"tools": [{"id": "ok", "python": OK}],
                                                  "tasks": [{"id": "c", "tool": "ok", "with": {"v": 1}}]}))
        for kind, (spec, _) in {**HOSTILE, **BENIGN}.items():
            apply(kubectl, doc("Workflow", kind, {"tools": [{"id": "ok", "python": OK}], **spec}))
        kube = env.kube()
        run_to_end(kube, "warm-up", "canary", None)

        stop = threading.Event()
        ended: list[tuple[str, str, float]] = []
        numbers = itertools.count()
        cycles = {"benign": itertools.cycle(BENIGN), "hostile": itertools.cycle(HOSTILE)}  # every kind in turn

        def churn(label: str, kinds: dict[str, tuple[dict[str, Any], Any]]) -> None:
            hk = env.kube()
            while not stop.is_set():
                i, kind = next(numbers), next(cycles[label])
                phase, took = run_to_end(hk, f"h-{kind}-{i}", kind, kinds[kind][1])
                ended.append((kind, phase, took))

        latency: dict[str, list[float]] = {"idle": [], "benign": [], "hostile": []}
        for r in range(rounds):  # interleaved, so that drift on the shared machine hits all three
            for label, kinds in (("idle", None), ("benign", BENIGN), ("hostile", HOSTILE)):
                stop.clear()
                threads = [threading.Thread(target=churn, args=(label, kinds), daemon=True) for _ in range(2)] if kinds else []
                for t in threads:  # 2 failing runs at a time, one after another
                    t.start()
                time.sleep(1.0 if kinds else 0)
                phase, took = run_to_end(kube, f"{label}-{r}", "canary", None)
                assert phase == "Succeeded", phase
                latency[label].append(took)
                stop.set()
                for t in threads:
                    t.join()
        rss = rss_mib(op.proc.pid)
        op.stop()
    idle = statistics.median(latency["idle"])
    print(f"canary (create -> Succeeded seen), {rounds} runs each, p50 (p90):")
    for label, values in latency.items():
        print(f"  {label:8s} {statistics.median(values) * 1000:5.0f} ms ({percentile(values, 90) * 1000:.0f}); "
              f"ratio to idle {statistics.median(values) / idle:.2f}x")
    by_kind: dict[str, list[tuple[str, float]]] = {}
    for kind, phase, took in ended:
        by_kind.setdefault(kind, []).append((phase, took))
    for kind, ends in by_kind.items():
        phases = sorted({p for p, _ in ends})
        print(f"  {kind}: {len(ends)} runs, ended {'/'.join(phases)}, "
              f"create -> end p50 {statistics.median(t for _, t in ends):.1f} s")
    print(f"operator RSS at the end (without its workers): {rss:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8, help="canary runs idle and under hostile load (each)")
    parser.add_argument("--decide-rounds", type=int, default=30)
    parser.add_argument("--decide-only", action="store_true")
    args = parser.parse_args()
    decide_overhead(args.decide_rounds)
    if not args.decide_only:
        canary(args.rounds)


if __name__ == "__main__":
    main()
