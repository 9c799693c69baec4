"""The short chaos run (hack/chaos.py --short) on a local cluster of its own: 20 executions of the
mixed load while the operator is SIGKILLed 3 times, nats-server is stopped for 5 s, the state
consumer is deleted, a running task pod is deleted and malformed, duplicate and out-of-order
events are injected. Every run must end exactly once with its expected result: nothing lost,
stuck or wrong, no tool attempt run twice, no failed attempt without an injected cause, no task
pod left. Times are printed, never asserted (`make chaos` is the full run)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[2] / "hack" / "chaos.py"


def load_harness():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("compozy_chaos", HARNESS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(600)
def test_short_chaos_run_loses_duplicates_and_strands_nothing(tmp_path: Path) -> None:
    chaos = load_harness()
    report = chaos.run(chaos.SHORT, tmp_path / "chaos")
    print(report.text)
    assert report.executions >= chaos.SHORT.executions
    assert report.faults.get("operator-kill") == chaos.SHORT.kills and report.faults.get("nats-outage") == 1
    assert report.failures() == {}, report.text
