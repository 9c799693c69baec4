"""The bad and hostile manifest corpus (tests/e2e/corpus/*.yaml) against the real cluster.

Each file holds a Workflow and a WorkflowExecution and says in its header what must happen:

    # expect: refused     kubectl create fails; its error contains the message
    # expect: failed      it is stored; the run ends Failed and its status message contains the message

and, optionally, ``# why:``. Throughout, canary runs must succeed and the operator must stay up
and ready: nothing one author writes may stall or crash it for the others. ``compozy validate``
must agree with the cluster on every file the cluster refuses.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl, wait_for

from .conftest import execution_status
from .test_workflows import apply, execution, workflow

CORPUS = Path(__file__).parent / "corpus"
PAD = re.compile(r"__PAD_(\d+)__")  # stands for that many x's (kept out of the repository)
CANARY_TOOLS = [{"id": "ok", "python": "def run(input, ctx):\n    return {'v': input.get('v')}\n"}]


@dataclass
class Case:
    name: str
    expect: str
    message: str
    text: str

    @classmethod
    def load(cls, path: Path) -> Case:
        raw = path.read_text()
        head = dict(re.findall(r"^# (expect|message|why): (.*)$", raw, re.M))
        assert head.get("expect") in ("refused", "failed"), f"{path.name}: bad header"
        return cls(path.stem, head["expect"], head["message"], PAD.sub(lambda m: "x" * int(m.group(1)), raw))

    @property
    def execution(self) -> str:
        return re.findall(r"^kind: WorkflowExecution\nmetadata:\n  name: (\S+)", self.text, re.M)[0]


CASES = [Case.load(p) for p in sorted(CORPUS.glob("*.yaml"))]


def _canary(kubectl: Kubectl, namespace: str, name: str) -> str:
    apply(kubectl, namespace, execution(name, "canary", {"v": name}))
    return name


def _ended(kubectl: Kubectl, namespace: str, name: str) -> dict | None:
    status = execution_status(kubectl, namespace, name)
    return status if status.get("phase") in ("Succeeded", "Failed", "TimedOut", "Cancelled") else None


def test_the_corpus_has_at_least_sixty_manifests() -> None:
    assert len(CASES) >= 60, len(CASES)
    assert len({c.name for c in CASES}) == len(CASES)


def test_every_bad_manifest_is_refused_or_fails_naming_the_problem_while_canaries_run(
        operator: OperatorProcess, kubectl: Kubectl, namespace: str) -> None:
    pid = operator.proc.pid
    apply(kubectl, namespace, workflow("canary", [{"id": "c", "tool": "ok", "with": {"v": "{{ workflow.input.v }}"}}],
                                       tools=CANARY_TOOLS))
    canaries = [_canary(kubectl, namespace, "canary-0")]
    wrong: list[str] = []
    stored: list[Case] = []
    for i, case in enumerate(CASES):
        out = kubectl("create", "-n", namespace, "-f", "-", stdin=case.text)
        if case.expect == "refused":
            if out.returncode == 0:
                wrong.append(f"{case.name}: stored, but must be refused")
            elif case.message not in out.stderr:
                wrong.append(f"{case.name}: refused without {case.message!r}: {out.stderr.strip()[-400:]}")
        elif out.returncode != 0:
            wrong.append(f"{case.name}: refused, but must be stored: {out.stderr.strip()[-400:]}")
        else:
            stored.append(case)
        if i % 10 == 9:
            canaries.append(_canary(kubectl, namespace, f"canary-{len(canaries)}"))
    for case in stored:
        status = wait_for(lambda c=case: _ended(kubectl, namespace, c.execution), 180, f"{case.name} to end")
        if status["phase"] != "Failed" or case.message not in (status.get("message") or ""):
            wrong.append(f"{case.name}: ended {status['phase']}: {status.get('message')!r}")
    canaries.append(_canary(kubectl, namespace, f"canary-{len(canaries)}"))
    for name in canaries:
        status = wait_for(lambda n=name: _ended(kubectl, namespace, n), 120, f"canary {name} to end")
        if status["phase"] != "Succeeded" or status.get("output", {}) is None:
            wrong.append(f"canary {name}: {status['phase']}: {status.get('message')}")
    assert not wrong, "\n".join(wrong)
    assert operator.proc.pid == pid and operator.proc.alive(), "the operator restarted"
    assert operator.readyz()[0] == 200
    print(f"corpus: {len(CASES)} manifests, {len(CASES) - len(stored)} refused at apply, {len(stored)} failed "
          f"at run time; {len(canaries)} canaries succeeded")


@pytest.mark.parametrize("case", [c for c in CASES if c.expect == "refused"], ids=lambda c: c.name)
def test_compozy_validate_refuses_what_the_cluster_refuses(case: Case, tmp_path: Path) -> None:
    from compozy_operator.cli import main

    path = tmp_path / f"{case.name}.yaml"
    path.write_text(case.text)
    assert main(["validate", str(path)]) == 1, case.name


def test_a_run_spec_cannot_change_after_create(operator: OperatorProcess, kubectl: Kubectl, namespace: str) -> None:
    """Issue 11.5: re-applying a run with a new input said `configured` and nothing ran."""
    apply(kubectl, namespace, workflow("again", [{"id": "c", "tool": "ok"}], tools=CANARY_TOOLS),
          execution("again-1", "again", {"v": 1}))
    wait_for(lambda: _ended(kubectl, namespace, "again-1"), 60, "the run to end")
    out = kubectl.apply(namespace, execution("again-1", "again", {"v": 2}))
    assert out.returncode != 0 and "spec is immutable once the run is created" in out.stderr, out.stderr
    obj = json.loads(kubectl("get", "wfx", "again-1", "-n", namespace, "-o", "json").stdout)
    assert obj["spec"]["input"] == {"v": 1}


def test_input_schema_defaults_are_applied_and_observed_generation_is_written(
        operator: OperatorProcess, kubectl: Kubectl, namespace: str) -> None:
    """Issues 11.6 and 11.5: a required property with a default may be left out; the run sees the
    default. ``observedGeneration`` is the generation started (1), then the one cancelled (2)."""
    schema = {"type": "object", "required": ["style"],
              "properties": {"style": {"type": "string", "default": "terse"},
                             "opts": {"type": "object", "default": {}, "properties": {"n": {"type": "integer",
                                                                                             "default": 3}}}}}
    echo = [{"id": "echo", "python": "def run(input, ctx):\n    return input\n"}]
    apply(kubectl, namespace, workflow("defaults", [{"id": "e", "tool": "echo", "with": {"all": "{{ workflow.input }}"}}],
                                       tools=echo, input=schema),
          execution("defaults-1", "defaults", {}))
    status = wait_for(lambda: _ended(kubectl, namespace, "defaults-1"), 60, "the run to end")
    assert status["phase"] == "Succeeded", status.get("message")
    assert status["tasks"]["e"]["output"] == {"all": {"style": "terse", "opts": {"n": 3}}}
    assert status["observedGeneration"] == 1
    sleeper = [{"id": "nap", "python": "import time\ndef run(input, ctx):\n    time.sleep(60)\n    return {}\n"}]
    apply(kubectl, namespace, workflow("napping", [{"id": "n", "tool": "nap"}], tools=sleeper),
          execution("napping-1", "napping"))
    wait_for(lambda: execution_status(kubectl, namespace, "napping-1").get("phase") == "Running", 60, "it to run")
    kubectl.ok("patch", "wfx", "napping-1", "-n", namespace, "--type", "merge", "-p", '{"spec": {"cancel": true}}')
    status = wait_for(lambda: _ended(kubectl, namespace, "napping-1"), 60, "the cancel")
    assert status["phase"] == "Cancelled" and status["observedGeneration"] == 2
