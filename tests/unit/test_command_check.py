"""The runner runs only its own attempt's command, carrying its pod's nonce (task_executor.command_problem)."""

from __future__ import annotations

from typing import Any

import pytest

from compozy_operator.events import command_subject
from compozy_operator.pods import pod_nonce, task_pod
from compozy_operator.settings import Settings
from compozy_operator.task_executor import Attempt, command_problem

A = Attempt("ns", "run", "uid-1", "each[3]", 2, "run-each-3-abcde-2", "pod-uid", nonce="n0nce")
SUBJECT = command_subject("ns", "run", "each[3]", 2)


def command(**changes: Any) -> dict[str, Any]:
    return {"namespace": "ns", "execution": "run", "uid": "uid-1", "task": "each[3]", "attempt": 2,
            "nonce": "n0nce", "tool": {"id": "t", "python": "def run(i, c): return 1"}, **changes}


def test_its_own_command_is_run() -> None:
    assert command_problem(A, SUBJECT, SUBJECT, command()) is None


@pytest.mark.parametrize("changes,says", [
    ({"namespace": "victim"}, "namespace"), ({"execution": "other"}, "execution"), ({"uid": "uid-2"}, "uid"),
    ({"task": "each[4]"}, "task"), ({"attempt": 1}, "attempt"), ({"attempt": "2"}, "attempt"),
    ({"nonce": "guess"}, "nonce"), ({"nonce": None}, "nonce"), ({"nonce": 7}, "nonce"),
])
def test_a_command_that_names_anything_else_is_refused(changes: dict[str, Any], says: str) -> None:
    problem = command_problem(A, SUBJECT, SUBJECT, command(**changes))
    assert problem is not None and says in problem and "n0nce" not in problem


def test_a_command_from_another_subject_or_not_an_object_is_refused() -> None:
    other = command_subject("ns", "run", "each[3]", 1)
    assert "stored on" in (command_problem(A, SUBJECT, other, command()) or "")
    assert "JSON object" in (command_problem(A, SUBJECT, SUBJECT, ["x"]) or "")


def test_a_pod_without_a_nonce_runs_nothing() -> None:
    bare = Attempt("ns", "run", "uid-1", "each[3]", 2, "p", "pod-uid")
    assert "COMPOZY_COMMAND_NONCE" in (command_problem(bare, SUBJECT, SUBJECT, command(nonce="")) or "")


def test_the_pod_carries_its_nonce() -> None:
    execution = {"metadata": {"name": "run", "namespace": "ns", "uid": "uid-1"}}
    pod = task_pod(Settings(task_image="img:1"), execution, "each[3]", 2, nonce="n0nce",
                   env=[{"name": "TOOL_VAR", "value": "1"}])
    assert pod_nonce(pod) == "n0nce"
    names = [e["name"] for e in pod["spec"]["containers"][0]["env"]]
    assert names.index("COMPOZY_COMMAND_NONCE") < names.index("TOOL_VAR")
    assert pod_nonce(task_pod(Settings(task_image="img:1"), execution, "a", 1)) is None
