"""Random Workflow/WorkflowExecution pairs (valid and mutated, from the unit property tests'
strategies) applied to the real cluster: `compozy validate` refuses exactly what the API server
(CRD schema, CEL rules and the operator's webhook) refuses, and the operator never crashes."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings

from compozy_operator.cli import main
from compozy_operator.testenv.operator_process import OperatorProcess
from tests.helpers import Kubectl
from tests.unit.test_validate_properties import manifests

SEEN: list[str] = []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(docs=manifests())
def test_validate_agrees_with_the_cluster(docs: tuple[dict[str, Any], dict[str, Any]], operator: OperatorProcess,
                                          kubectl: Kubectl, namespace: str, tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:6]
    wf, ex = json.loads(json.dumps(docs[0])), json.loads(json.dumps(docs[1]))
    wf["metadata"]["name"] = f"w-{suffix}"
    ex["metadata"]["name"] = f"e-{suffix}"
    if "workflowRef" in ex.get("spec", {}) and isinstance(ex["spec"]["workflowRef"], dict):
        ex["spec"]["workflowRef"]["name"] = f"w-{suffix}"
    path = tmp_path / f"{suffix}.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [wf, ex]}))
    offline_ok = main(["validate", str(path)]) == 0
    # dry-run on the server: the CRD's schema and CEL rules and the webhook all run, nothing is stored
    made_wf = kubectl("create", "-n", namespace, "-f", "-", stdin=json.dumps(wf))
    cluster_ok = made_wf.returncode == 0
    if cluster_ok:
        made_ex = kubectl("create", "--dry-run=server", "-n", namespace, "-f", "-", stdin=json.dumps(ex))
        cluster_ok = made_ex.returncode == 0
        kubectl("delete", "czwf", wf["metadata"]["name"], "-n", namespace, "--wait=false")
    SEEN.append("valid" if cluster_ok else "refused")
    assert offline_ok == cluster_ok, (f"validate says {'valid' if offline_ok else 'invalid'}, the cluster "
                                      f"{'accepted' if cluster_ok else 'refused'}: "
                                      f"{(made_wf.stderr if made_wf.returncode else made_ex.stderr)[-600:]}")
    assert operator.proc.alive() and operator.readyz()[0] == 200


def test_both_verdicts_were_seen() -> None:
    """The property test above is not vacuous: it saw valid pairs and refused ones."""
    assert {"valid", "refused"} <= set(SEEN), SEEN
