"""api.Service benchmark: trigger latency (HTTP and NATS) and `logs?follow=true` delay.

    .venv/bin/python hack/bench/api.py                       # 50 triggers each way, 1 run of 100 log lines
    .venv/bin/python hack/bench/api.py --triggers 200 --lines 500

Prints figures (asserts nothing; machines here are shared and noisy):
- trigger latency, request sent -> 201 received, p50/p99, over HTTP and over NATS (with a
  ServiceAccount token: TokenReview and SubjectAccessReview answers cached after the first);
- logs follow delay: a tool logs lines carrying their emission time (time.time() in the task pod,
  same machine) while a client follows the run's logs; delay = line received - line emitted, p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import nats
import requests

from compozy_operator.api_service.service import trigger_subject
from compozy_operator.testenv import DevEnvironment

from common import NS, apply, percentile, prepare

NOOP = "def run(input, ctx):\n    return {}\n"
TICKER = ("import time\n"
          "def run(input, ctx):\n"
          "    for i in range(input['lines']):\n"
          "        ctx.log.info('tick %d %.6f', i, time.time())\n"
          "        time.sleep(input['gap'])\n"
          "    return {}\n")


def workflow(name: str, tool: str, routed: bool = False) -> dict:
    """One tool task; ``routed``: behind a router no run of the benchmark passes (its runs end at
    once, without pods: the trigger figures measure the API, not a cluster busy with task pods)."""
    tasks: list[dict] = [{"id": "t", "tool": "t", "with": {"lines": "{{ workflow.input.lines }}",
                                                          "gap": "{{ workflow.input.gap }}"} if not routed else {}}]
    if routed:
        tasks.insert(0, {"id": "gate", "type": "router", "condition": "closed", "routes": {"open": "t"}})
    return {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": name, "namespace": NS},
            "spec": {"tools": [{"id": "t", "python": tool}], "tasks": tasks}}


def token(kubectl, kube) -> str:  # type: ignore[no-untyped-def]
    kubectl.ok("create", "serviceaccount", "bench", "-n", NS)
    kubectl.ok("create", "role", "bench-wfx", "-n", NS, "--verb=get,list,create,patch",
               "--resource=workflowexecutions.compozy.dev")
    kubectl.ok("create", "rolebinding", "bench-wfx", "-n", NS, "--role=bench-wfx", f"--serviceaccount={NS}:bench")
    return kube.create(f"/api/v1/namespaces/{NS}/serviceaccounts/bench/token",
                       {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                        "spec": {"expirationSeconds": 3600}})["status"]["token"]


def http_triggers(base: str, headers: dict[str, str], n: int) -> list[float]:
    out = []
    with requests.Session() as s:
        for _ in range(n):
            started = time.perf_counter()
            resp = s.post(f"{base}/api/v1/namespaces/{NS}/workflows/noop/executions", json={}, headers=headers)
            out.append(time.perf_counter() - started)
            assert resp.status_code == 201, resp.text
    return out


async def nats_triggers(url: str, nats_token: str, bearer: str, n: int) -> list[float]:
    nc = await nats.connect(url, token=nats_token)
    out = []
    try:
        for _ in range(n):
            started = time.perf_counter()
            reply = await nc.request(trigger_subject(NS), json.dumps({"workflow": "noop"}).encode(), timeout=30,
                                     headers={"Authorization": f"Bearer {bearer}"})
            out.append(time.perf_counter() - started)
            assert reply.headers and reply.headers.get("Compozy-Status") == "201", reply.data
    finally:
        await nc.close()
    return out


def follow_delays(base: str, headers: dict[str, str], lines: int, gap: float) -> list[float]:
    resp = requests.post(f"{base}/api/v1/namespaces/{NS}/workflows/ticker/executions",
                         json={"input": {"lines": lines, "gap": gap}}, headers=headers)
    name = resp.json()["name"]
    delays = []
    with requests.get(f"{base}/api/v1/namespaces/{NS}/executions/{name}/logs", params={"follow": "true"},
                      headers=headers, stream=True, timeout=300) as stream:
        for line in stream.iter_lines(decode_unicode=True):
            received = time.time()
            parts = line.split()
            if len(parts) >= 7 and parts[1] == "runtime" and parts[4] == "tick":
                delays.append(received - float(parts[6]))
    return delays


def show(what: str, values: list[float]) -> None:
    print(f"{what:<28} n={len(values):<4} p50={percentile(values, 50) * 1000:7.1f} ms  "
          f"p99={percentile(values, 99) * 1000:7.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--triggers", type=int, default=50)
    parser.add_argument("--lines", type=int, default=100)
    parser.add_argument("--gap", type=float, default=0.02, help="seconds between two logged lines")
    args = parser.parse_args()
    with DevEnvironment.start() as env:
        kubectl, op = prepare(env)
        kube = env.kube()
        apply(kubectl, workflow("noop", NOOP, routed=True))
        apply(kubectl, workflow("ticker", TICKER))
        bearer = token(kubectl, kube)
        headers = {"Authorization": f"Bearer {bearer}"}
        http_triggers(op.api_url, headers, 3)  # warm: caches, the evaluation worker
        show("trigger over HTTP", http_triggers(op.api_url, headers, args.triggers))
        show("trigger over NATS", asyncio.run(nats_triggers(env.nats.url, env.nats.token, bearer, args.triggers)))
        kubectl.ok("delete", "wfx", "--all", "-n", NS, "--wait=false")
        show("logs follow delay", follow_delays(op.api_url, headers, args.lines, args.gap))
        op.stop()
        kube.close()


if __name__ == "__main__":
    main()
