"""Collection benchmark: one execution of an N-item collection, then one more task.

    make bench-collection                       # 1000 items, maxWorkers 10
    .venv/bin/python hack/bench/collection.py --items 200 --max-workers 5

Prints (asserts nothing): wall time of the collection, the execution's status size, the most
task pods alive at once (seen by a pod watch; must not exceed maxWorkers), and the time from the
last child's success event to the next task's pod.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

from compozy_operator.testenv import DevEnvironment

from common import NS, prepare



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--max-workers", type=int, default=10)
    args = parser.parse_args()

    with DevEnvironment.start() as env:
        _, op = prepare(env)
        kube = env.kube()

        alive: set[str] = set()
        most = 0
        added: dict[str, float] = {}
        stop = threading.Event()

        def watch() -> None:
            nonlocal most
            rv = kube.get(f"/api/v1/namespaces/{NS}/pods")["metadata"]["resourceVersion"]
            try:
                while not stop.is_set():
                    for ev in kube.watch(f"/api/v1/namespaces/{NS}/pods", rv, timeout_seconds=30):
                        obj = ev["object"]
                        if ev["type"] == "BOOKMARK":
                            continue
                        rv = obj["metadata"]["resourceVersion"]
                        name = obj["metadata"]["name"]
                        added.setdefault(name, time.time())
                        done = ev["type"] == "DELETED" or obj.get("status", {}).get("phase") in ("Succeeded", "Failed")
                        (alive.discard if done else alive.add)(name)
                        most = max(most, len(alive))
            except Exception:  # noqa: BLE001 - the cluster stops under the watch at the end
                if not stop.is_set():
                    raise

        threading.Thread(target=watch, daemon=True).start()
        time.sleep(0.5)
        spec = {
            "tools": [{"id": "noop", "python": "def run(input, ctx):\n    return {'i': input['i']}\n"}],
            "tasks": [
                {"id": "each", "type": "collection", "items": list(range(args.items)), "maxWorkers": args.max_workers,
                 "task": {"id": "one", "tool": "noop", "with": {"i": "{{ item }}"}}, "onSuccess": {"next": "after"}},
                {"id": "after", "tool": "noop", "with": {"i": -1}},
            ],
        }
        t0 = time.time()
        kube.create(f"/apis/compozy.dev/v1alpha1/namespaces/{NS}/workflowexecutions", {
            "apiVersion": "compozy.dev/v1alpha1", "kind": "WorkflowExecution", "metadata": {"name": "big"},
            "spec": {"workflow": spec}})
        status: dict = {}
        while time.time() < t0 + 60 + args.items * 3:
            obj = kube.get(f"/apis/compozy.dev/v1alpha1/namespaces/{NS}/workflowexecutions/big")
            status = obj.get("status") or {}
            if status.get("phase") in ("Succeeded", "Failed"):
                break
            time.sleep(1)
        stop.set()
        children = [t for k, t in status.get("tasks", {}).items() if k.startswith("each[")]
        last_child = max((t["finishedAt"] for t in children if t.get("finishedAt")), default=None)
        from datetime import datetime

        def epoch(ts: str) -> float:
            return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()

        after_pod = next((t for n, t in added.items() if n.startswith("big-after-")), None)
        coll_end = epoch(status["tasks"]["each"]["finishedAt"]) if "each" in status.get("tasks", {}) else None
        print(f"{args.items}-item collection, maxWorkers {args.max_workers}: phase {status.get('phase')}, "
              f"{len(children)} children")
        if coll_end:
            print(f"collection wall time: {coll_end - epoch(status['startedAt']):.1f}s "
                  f"({len(children) / (coll_end - epoch(status['startedAt'])):.1f} children/s)")
        print(f"status size: {len(json.dumps(status)) / 1024:.0f} KiB")
        print(f"task pods alive at once (pod watch): at most {most} (maxWorkers {args.max_workers})")
        if last_child and after_pod:
            print(f"last child's success -> next task's pod seen: {(after_pod - epoch(last_child)) * 1000:.0f} ms")
        op.stop()


if __name__ == "__main__":
    main()
