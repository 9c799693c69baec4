"""The admission webhook of an operator run as a local process (tests, ``make cluster`` by hand).

The Helm chart registers the webhook through a Service; an operator running on the host is
reached by URL instead: :func:`register` writes a ``ValidatingWebhookConfiguration`` whose
``clientConfig.url`` is ``https://127.0.0.1:<port>/<handler>``, with the CA of a loopback serving
certificate (:func:`compozy_operator.testenv.pki.write_loopback_tls`) as ``caBundle``. So the real
kube-apiserver calls the real webhook on every ``kubectl apply``.

Two test-only choices, both on purpose:

- ``failurePolicy: Ignore``: many tests stop, kill and replace the session's operator; with
  ``Fail`` every apply would be refused while it is down. (The chart defaults to ``Fail``.)
- objects labelled ``compozy.dev/admission: skip`` (:func:`unchecked`) are not sent to the
  webhook, so tests of what the operator does with an invalid object that got stored anyway (the
  webhook off or unreachable) can still create one. The chart has no such bypass.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

from ..admission import EXECUTION_HOOK, WORKFLOW_HOOK
from ..resources.models import GROUP, VERSION
from ..kube import ApiException, Kube

SKIP_LABEL = "compozy.dev/admission"
SKIP_VALUE = "skip"
PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"


def webhook_configuration(name: str, base_url: str, ca_pem: bytes, failure_policy: str = "Ignore") -> dict[str, Any]:
    """The configuration the chart would create, but by URL, with the test bypass label."""
    def hook(plural: str, handler: str) -> dict[str, Any]:
        return {
            "name": f"{plural}.{GROUP}",
            "clientConfig": {"url": f"{base_url}/{handler}", "caBundle": base64.b64encode(ca_pem).decode()},
            "rules": [{"apiGroups": [GROUP], "apiVersions": [VERSION], "operations": ["CREATE", "UPDATE"],
                       "resources": [plural], "scope": "Namespaced"}],
            "objectSelector": {"matchExpressions": [{"key": SKIP_LABEL, "operator": "NotIn", "values": [SKIP_VALUE]}]},
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5,
            "failurePolicy": failure_policy,
        }

    return {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "compozy-testenv"}},
            "webhooks": [hook("workflows", WORKFLOW_HOOK), hook("workflowexecutions", EXECUTION_HOOK)]}


PROBE = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Workflow", "metadata": {"name": "admission-probe"},
         "spec": {"tasks": [{"id": "a", "tool": "admission-probe-undefined"}]}}


def register(kube: Kube, name: str, port: int, ca_file: Path, timeout: float = 30) -> None:
    """Create (or replace) the configuration, then wait until the API server calls the webhook:
    a server-side dry run of a Workflow with an undefined tool is refused by it."""
    body = webhook_configuration(name, f"https://127.0.0.1:{port}", ca_file.read_bytes())
    try:
        kube.create(PATH, body)
    except ApiException as e:
        if e.status != 409:
            raise
        current = kube.get(f"{PATH}/{name}")
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        kube.request("PUT", f"{PATH}/{name}", body)
    deadline, last = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        try:
            kube.request("POST", f"/apis/{GROUP}/{VERSION}/namespaces/default/workflows", PROBE,
                         query={"dryRun": "All"})
            last = "the dry run was accepted"
        except ApiException as e:
            if "admission-probe-undefined" in str(e.body):
                return
            last = f"{e.status}: {e.body}"
        time.sleep(0.2)
    raise TimeoutError(f"the admission webhook at 127.0.0.1:{port} is not called after {timeout:.0f}s: {last}")


def unregister(kube: Kube, name: str) -> None:
    try:
        kube.delete(f"{PATH}/{name}")
    except ApiException as e:
        if e.status != 404:
            raise


def unchecked(*docs: dict[str, Any]) -> list[dict[str, Any]]:
    """Copies of ``docs`` labelled so that the local cluster's webhook does not see them (tests of
    invalid objects stored anyway, as with the webhook off)."""
    out = []
    for doc in docs:  # no deep copy: a test's value may nest deeper than Python's recursion limit
        meta = doc.get("metadata") or {}
        out.append({**doc, "metadata": {**meta, "labels": {**(meta.get("labels") or {}), SKIP_LABEL: SKIP_VALUE}}})
    return out
