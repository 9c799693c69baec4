"""Web UI benchmark (docs/ui.md): first paint of the runs list and of a 1,000-task run page, and
the delay from a state event to its node changing colour. Headless Chromium, local cluster.

    .venv/bin/python hack/bench/ui.py                      # 1,000 runs in the namespace, 40-task chain x 2
    .venv/bin/python hack/bench/ui.py --runs 10000 --chain 60 --rounds 3

Prints figures (asserts nothing; machines here are shared and noisy):
- runs list: navigation start -> the first page of runs (50) on screen (the UI's User Timing mark
  `compozy:runs-rendered`), p50/max over --loads fresh page loads, with --runs runs stored; also
  filtered by a phase no stored run has (the API server reads them all) and by the last hour;
- 1,000-task run page: navigation start -> every node of a run's graph placed and measured
  (`compozy:graph-rendered`): 20 parallel tasks of 50 children each plus a router, 1,021 nodes;
- event -> colour: a chain of --chain quick tasks runs while its page is open; for each
  TaskExecutionStarted/Success event, (the node's data-phase changing to that phase, seen by a
  MutationObserver in the page) - (the event's `time`, stamped by its publisher on this machine),
  p50/p99. The first task waits for a file, so the page is open before anything happens.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import requests
from selenium.common.exceptions import TimeoutException

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import NS, apply, percentile, prepare  # noqa: E402

from compozy_operator.testenv import DevEnvironment  # noqa: E402
from tests.e2e.conftest import wait_finished  # noqa: E402
from tests.e2e.test_api_service import ALL_VERBS, Api, service_account_token, sse_events, trigger  # noqa: E402
from tests.e2e.test_ui import PY_GATE, Page, grant_workflows, start_browser  # noqa: E402

OK = "def run(input, ctx):\n    return {'i': input.get('i')}\n"
WATCH = """
window.__colours = []
new MutationObserver((records) => {
  const t = Date.now()
  for (const r of records) {
    const el = r.target
    if (el.classList && el.classList.contains('task')) window.__colours.push([el.dataset.task, el.dataset.phase, t])
  }
}).observe(document.body, {subtree: true, attributes: true, attributeFilter: ['data-phase']})
"""
PHASE_OF = {"TaskExecutionStarted": "Running", "TaskExecutionSuccess": "Succeeded"}


def closed_router(first: str) -> dict:
    """A router whose condition matches no route: the run ends at once, without a pod."""
    return {"id": "gate", "type": "router", "condition": "closed", "routes": {"open": first}}


def wide_workflow() -> dict:
    groups = [{"id": f"group-{g}", "type": "parallel", "tasks": [{"id": f"g{g}-t{c}", "tool": "ok", "with": {"i": c}}
                                                              for c in range(50)],
               **({"onSuccess": {"next": f"group-{g + 1}"}} if g < 19 else {})} for g in range(20)]
    return {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "wide"},
            "spec": {"tools": [{"id": "ok", "python": OK}], "tasks": [closed_router("group-0"), *groups]}}


def chain_workflow(n: int) -> dict:
    tasks = [{"id": "t0", "tool": "gate", "with": {"gate": "{{ workflow.input.gate }}"}, "onSuccess": {"next": "t1"}}]
    tasks += [{"id": f"t{i}", "tool": "ok", "with": {"i": i}, **({"onSuccess": {"next": f"t{i + 1}"}} if i < n - 1 else {})}
              for i in range(1, n)]
    return {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "chain"},
            "spec": {"tools": [{"id": "ok", "python": OK}, {"id": "gate", "python": PY_GATE}], "tasks": tasks}}


def mark(page: Page, name: str, timeout: float = 120) -> float:
    """Milliseconds from navigation start to the UI's User Timing mark ``name``."""
    try:
        return page.wait(lambda d: d.execute_script(
            "const m = performance.getEntriesByName(arguments[0], 'mark'); return m.length ? m[0].startTime : null",
            name), name, timeout)
    except TimeoutException:
        print(f"no {name} mark; the page shows: {page.one('body').text[:2000]!r}\n"
              f"browser log: {page.driver.get_log('browser')[-10:]}", file=sys.stderr)
        raise


def fresh_load(page: Page, fragment: str, token: str, name: str) -> float:
    page.open(fragment, token=token)
    return mark(page, name)


def epoch_ms(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def store_runs(kubectl, count: int) -> None:  # type: ignore[no-untyped-def]
    """``count`` runs of ``instant`` (they end at once, without pods), applied in batches."""
    for start in range(0, count, 500):
        docs = [{"apiVersion": "compozy.dev/v1alpha1", "kind": "WorkflowExecution",
                 "metadata": {"name": f"instant-{i:05d}", "labels": {"compozy.dev/workflow": "instant"}},
                 "spec": {"workflowRef": {"name": "instant"}}} for i in range(start, min(count, start + 500))]
        out = kubectl.apply(NS, *docs)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)


def settle(kubectl, count: int, timeout: float = 1800) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        phases = kubectl.ok("get", "wfx", "-n", NS, "-l", "compozy.dev/workflow=instant", "-o",
                            "jsonpath={.items[*].status.phase}").split()
        if sum(p in ("Failed", "Succeeded") for p in phases) >= count:
            return
        time.sleep(1)
    raise RuntimeError(f"the {count} stored runs did not all end within {timeout:.0f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000, help="runs stored in the namespace for the list")
    parser.add_argument("--loads", type=int, default=5, help="fresh page loads per first-paint figure")
    parser.add_argument("--chain", type=int, default=40, help="tasks of the chain whose colours are timed")
    parser.add_argument("--rounds", type=int, default=2, help="runs of the chain")
    args = parser.parse_args()
    env = DevEnvironment.start(nodes=1)
    kube = None
    try:
        kubectl, op = prepare(env)
        kube = env.kube()
        apply(kubectl, {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "instant"},
                        "spec": {"tools": [{"id": "ok", "python": OK}],
                                 "tasks": [closed_router("t"), {"id": "t", "tool": "ok"}]}})
        apply(kubectl, wide_workflow())
        apply(kubectl, chain_workflow(args.chain))
        token = service_account_token(kube, NS, "bench-ui", ALL_VERBS)
        grant_workflows(kube, NS, "bench-ui")
        api = Api(op.api_url, token)
        started = time.monotonic()
        store_runs(kubectl, args.runs)
        settle(kubectl, args.runs)  # the operator (api.Service shares its event loop) is idle again
        print(f"stored {args.runs} runs, all ended, in {time.monotonic() - started:.1f}s")
        wide = trigger(api, NS, "wide", {"name": "wide-1"})["name"]
        wait_finished(kubectl, NS, wide, timeout=120)
        with tempfile.TemporaryDirectory(prefix="compozy-chromium-") as profile:
            driver = start_browser(Path(profile))
            try:
                page = Page(driver, op.api_url)
                lists = [fresh_load(page, f"runs?ns={NS}", token, "compozy:runs-rendered") for _ in range(args.loads)]
                print(f"runs list first paint ({args.runs} runs stored, page of 50): "
                      f"p50 {statistics.median(lists):.0f} ms, max {max(lists):.0f} ms")
                # filters the API server applies before it cuts the page: a phase no stored run has
                # (it reads every run to find none: the worst case), and the last hour (every run matches)
                none = [fresh_load(page, f"runs?ns={NS}&phase=Running", token, "compozy:runs-rendered")
                        for _ in range(args.loads)]
                print(f"runs list filtered by a phase no run has ({args.runs} runs scanned): "
                      f"p50 {statistics.median(none):.0f} ms, max {max(none):.0f} ms")
                recent = [fresh_load(page, f"runs?ns={NS}&since=1h", token, "compozy:runs-rendered")
                          for _ in range(args.loads)]
                print(f"runs list filtered by the last hour (page of 50): "
                      f"p50 {statistics.median(recent):.0f} ms, max {max(recent):.0f} ms")
                graphs = [fresh_load(page, f"runs/{NS}/{wide}", token, "compozy:graph-rendered") for _ in range(args.loads)]
                shown = len(page.all(".task[data-task]"))
                print(f"1,000-task run page first paint (1,021 nodes, {shown} of them in view and rendered): "
                      f"p50 {statistics.median(graphs):.0f} ms, max {max(graphs):.0f} ms")
                delays = []
                for r in range(args.rounds):
                    gate = Path(profile) / f"gate-{r}"
                    run = trigger(api, NS, "chain", {"input": {"gate": str(gate)}})["name"]
                    page.open(f"runs/{NS}/{run}", token=token)
                    page.wait(lambda d: page.node_phase("t0") == "Running", "the chain's first task")
                    driver.execute_script(WATCH)
                    gate.touch()
                    wait_finished(kubectl, NS, run, timeout=600)
                    page.wait(lambda d: page.node_phase(f"t{args.chain - 1}") == "Succeeded", "the last node")
                    colours = driver.execute_script("return window.__colours")
                    first: dict[tuple[str, str], float] = {}
                    for task, phase, t in colours:
                        first.setdefault((task, phase), t)
                    with requests.get(f"{op.api_url}/api/v1/namespaces/{NS}/executions/{run}/events",
                                      headers={"Authorization": f"Bearer {token}"}, stream=True, timeout=120) as resp:
                        events = sse_events(resp)
                    for e in events:
                        phase = PHASE_OF.get(e["event"])
                        task = e["data"]["data"].get("task")
                        if phase and (task, phase) in first and task != "t0":
                            delays.append(first[(task, phase)] - epoch_ms(e["data"]["time"]))
                print(f"event -> node colour ({len(delays)} events, {args.rounds} runs of {args.chain} tasks): "
                      f"p50 {percentile(delays, 50):.0f} ms, p99 {percentile(delays, 99):.0f} ms, "
                      f"max {max(delays):.0f} ms")
                print(json.dumps({"runs_list_ms_p50": statistics.median(lists),
                                  "runs_list_phase_none_ms_p50": statistics.median(none),
                                  "runs_list_last_hour_ms_p50": statistics.median(recent), "run_page_1000_ms_p50":
                                  statistics.median(graphs), "event_colour_ms_p50": percentile(delays, 50),
                                  "event_colour_ms_p99": percentile(delays, 99)}))
            finally:
                driver.quit()
    finally:
        if kube is not None:
            kube.close()
        env.stop()


if __name__ == "__main__":
    main()
