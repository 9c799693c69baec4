"""The pictures of the web UI in docs/ui/ (README, docs/ui.md), taken on the local cluster.

    make screenshots          # or: .venv/bin/python hack/ui/screenshots.py [--out docs/ui]

Starts the local cluster and an operator, runs a few workflows (a router, a parallel group, a
collection, a failing task, a run that waits), and photographs the main pages in headless
Chromium at 1440x900, in the light theme and one in the dark.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "hack" / "bench"))

from common import NS, apply, prepare  # noqa: E402

from compozy_operator.kube import Kube  # noqa: E402
from compozy_operator.testenv import DevEnvironment  # noqa: E402
from tests.e2e.conftest import wait_finished  # noqa: E402
from tests.e2e.test_api_service import ALL_VERBS, Api, service_account_token, trigger  # noqa: E402
from tests.e2e.test_ui import Page, grant_workflows, start_browser  # noqa: E402

TOOLS = [
    {"id": "think", "python": "import time\ndef run(input, ctx):\n    ctx.log.info('thinking about %s', input)\n"
                              "    time.sleep(input.get('seconds', 0.2))\n    return {'ok': True, 'about': input}\n"},
    {"id": "flaky", "python": "def run(input, ctx):\n    ctx.log.info('calling the model for %s', input['q'])\n"
                              "    raise RuntimeError('the model endpoint answered 503 for ' + input['q'])\n"},
]
RESEARCH = {
    "apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "research"},
    "spec": {
        "description": "Plan, search in parallel, read each source, summarize",
        "input": {"type": "object", "required": ["topic", "depth"],
                  "properties": {"topic": {"type": "string", "minLength": 3, "description": "What to research"},
                                 "depth": {"enum": ["quick", "deep"]},
                                 "sources": {"type": "integer", "minimum": 1, "maximum": 20}}},
        "tools": TOOLS,
        "tasks": [
            {"id": "plan", "tool": "think", "with": {"topic": "{{ workflow.input.topic }}"},
             "onSuccess": {"next": "route"}},
            {"id": "route", "type": "router", "condition": "{{ workflow.input.depth }}",
             "routes": {"deep": "search", "quick": "summarize"}},
            {"id": "search", "type": "parallel", "onSuccess": {"next": "read"}, "tasks": [
                {"id": "search-web", "tool": "think", "with": {"q": "web", "seconds": 1}},
                {"id": "search-papers", "tool": "think", "with": {"q": "papers", "seconds": 0.5}}]},
            {"id": "read", "type": "collection", "items": "{{ range(workflow.input.sources) | list }}",
             "maxWorkers": 4, "task": {"id": "read-one", "tool": "think", "with": {"n": "{{ item }}"}},
             "onSuccess": {"next": "summarize"}},
            {"id": "summarize", "tool": "think", "with": {"topic": "{{ workflow.input.topic }}"}},
        ]}}
ASK = {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "ask-model"},
       "spec": {"tools": TOOLS, "tasks": [
           {"id": "prepare", "tool": "think", "with": {"q": "x"}, "onSuccess": {"next": "ask"}},
           {"id": "ask", "tool": "flaky", "with": {"q": "pricing"}, "retry": {"limit": 1, "backoff": {"initial": "1s"}}}]}}
WAIT = {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "nightly"},
        "spec": {"tools": TOOLS, "tasks": [{"id": "crawl", "tool": "think", "with": {"seconds": 600}}]}}


def shoot(page: Page, out: Path, name: str) -> None:
    time.sleep(0.5)  # the graph's fit-to-view settles (a picture, not a test: nothing is measured)
    page.driver.save_screenshot(str(out / f"{name}.png"))
    print(f"{out / f'{name}.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "ui")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    env = DevEnvironment.start(nodes=1)
    kube: Kube | None = None
    try:
        kubectl, op = prepare(env)
        kube = env.kube()
        for doc in (RESEARCH, ASK, WAIT):
            apply(kubectl, doc)
        token = service_account_token(kube, NS, "alice", ALL_VERBS)
        grant_workflows(kube, NS, "alice")
        api = Api(op.api_url, token)
        deep = trigger(api, NS, "research", {"name": "research-deep", "input": {"topic": "solid-state batteries",
                                                                                "depth": "deep", "sources": 8}})
        trigger(api, NS, "research", {"name": "research-quick", "input": {"topic": "tidal power", "depth": "quick"}})
        failed = trigger(api, NS, "ask-model", {"name": "ask-model-7"})
        for run in (deep, failed):
            wait_finished(kubectl, NS, run["name"], timeout=180)
        trigger(api, NS, "nightly", {"name": "nightly-crawl"})
        with tempfile.TemporaryDirectory(prefix="compozy-chromium-") as profile:
            driver = start_browser(Path(profile))
            try:
                page = Page(driver, op.api_url)
                page.open(f"runs?ns={NS}", token=token)
                page.wait(lambda d: len(page.all("tr[data-run]")) >= 4, "the runs")
                shoot(page, args.out, "runs")
                page.open(f"runs/{NS}/research-deep?task=read", token=token)
                page.wait(lambda d: page.node_phase("summarize") == "Succeeded", "the graph")
                shoot(page, args.out, "run-graph")
                page.open(f"runs/{NS}/research-deep?tab=timeline", token=token)
                page.wait(lambda d: page.all(".tl-row"), "the timeline")
                shoot(page, args.out, "run-timeline")
                page.open(f"runs/{NS}/ask-model-7?task=ask", token=token)
                page.wait(lambda d: page.all('[data-testid="task-error"]'), "the error")
                shoot(page, args.out, "run-failed")
                page.open(f"runs/{NS}/ask-model-7?tab=logs", token=token)
                page.wait(lambda d: "503" in page.one('[data-testid="logs"]').text, "the logs")
                shoot(page, args.out, "run-logs")
                page.open(f"workflows/{NS}/research", token=token)
                page.wait(lambda d: page.all("#field-topic"), "the submit form")
                page.one("#field-topic").send_keys("AI")
                page.button("Submit").click()
                page.wait(lambda d: page.all('[data-testid="submit-problems"]'), "the schema's refusal")
                shoot(page, args.out, "workflow-submit")
                driver.execute_script("localStorage.setItem('compozy.theme', 'dark')")
                page.open(f"runs/{NS}/research-deep?task=read", token=token)
                page.wait(lambda d: page.node_phase("summarize") == "Succeeded", "the graph")
                shoot(page, args.out, "run-graph-dark")
            finally:
                driver.quit()
    finally:
        if kube is not None:
            kube.close()
        env.stop()


if __name__ == "__main__":
    main()
