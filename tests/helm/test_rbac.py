"""The chart's RBAC, asked of the real apiserver with ``kubectl auth can-i --as=<the operator's SA>``.

Both modes are installed with ``replicaCount=0`` (RBAC and ServiceAccount, no operator running that
would compete with other tests' operators). test_install shows the same rules suffice for a real run.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from compozy_operator.testenv import DevEnvironment, Kube
from compozy_operator.testenv.helm import Helm, install
from tests.helpers import Kubectl

from .conftest import sets

# (verb, resource[, subresource]) the operator calls in a namespace it works in
NAMESPACED_NEEDS = [
    ("get", "workflowexecutions.compozy.dev"), ("list", "workflowexecutions.compozy.dev"),
    ("watch", "workflowexecutions.compozy.dev"), ("patch", "workflowexecutions.compozy.dev", "status"),
    ("patch", "workflowexecutions.compozy.dev"),  # the compozy.dev/workflow label (starter.py)
    ("get", "workflows.compozy.dev"), ("list", "workflows.compozy.dev"), ("watch", "workflows.compozy.dev"),
    ("patch", "workflows.compozy.dev", "status"),
    ("create", "pods"), ("delete", "pods"), ("get", "pods"), ("list", "pods"), ("watch", "pods"),
    ("create", "secrets"), ("create", "events"), ("get", "events"), ("patch", "events"),
    ("delete", "workflowexecutions.compozy.dev"),  # ttlSecondsAfterFinished, historyLimit (docs/cleanup.md)
    # RunnerPools (docs/pools.md): each one's runners are a Deployment the operator keeps and scales
    ("get", "runnerpools.compozy.dev"), ("list", "runnerpools.compozy.dev"), ("watch", "runnerpools.compozy.dev"),
    ("patch", "runnerpools.compozy.dev", "status"), ("create", "deployments.apps"), ("patch", "deployments.apps"),
    # api.Service (api.enabled, the default): runs started for authorized callers (cancelled and
    # retried with the patch above)
    ("create", "workflowexecutions.compozy.dev"),
]
API_ONLY = [("create", "workflowexecutions.compozy.dev")]
# api.Service's questions to the API server: who is calling, and may they (cluster-scoped, ask-only)
REVIEWS = [("create", "tokenreviews.authentication.k8s.io"), ("create", "subjectaccessreviews.authorization.k8s.io")]
NEVER = [
    ("get", "secrets"), ("list", "secrets"), ("watch", "secrets"), ("update", "secrets"), ("delete", "secrets"),
    ("create", "pods", "exec"), ("create", "pods", "portforward"), ("patch", "pods"), ("update", "pods"),
    ("update", "workflowexecutions.compozy.dev"), ("update", "workflowexecutions.compozy.dev", "status"),
    ("create", "workflows.compozy.dev"),
    ("delete", "workflows.compozy.dev"), ("patch", "workflows.compozy.dev"), ("update", "workflows.compozy.dev"),
    ("delete", "deployments.apps"), ("update", "deployments.apps"), ("create", "serviceaccounts", "token"),
    ("create", "runnerpools.compozy.dev"), ("patch", "runnerpools.compozy.dev"),
    ("create", "roles.rbac.authorization.k8s.io"), ("create", "rolebindings.rbac.authorization.k8s.io"),
]
NEVER_CLUSTER = [
    ("list", "secrets"), ("get", "secrets"), ("patch", "nodes"), ("update", "nodes"), ("delete", "nodes"),
    ("create", "nodes"), ("update", "nodes", "status"), ("create", "clusterroles.rbac.authorization.k8s.io"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"), ("bind", "clusterroles.rbac.authorization.k8s.io"),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io"), ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
    # the chart owns the webhook configuration; Kopf never writes one
    ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io"),
    ("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"), ("create", "namespaces"), ("delete", "namespaces"),
]


def can_i(kubectl: Kubectl, sa: str, verb: str, resource: str, subresource: str = "", namespace: str | None = None) -> bool:
    args = ["auth", "can-i", verb, resource, f"--as={sa}"]
    args += ["--subresource", subresource] if subresource else []
    args += ["-n", namespace] if namespace else ["--all-namespaces"]
    out = kubectl(*args)
    assert out.stdout.strip() in ("yes", "no"), out.stdout + out.stderr
    return out.stdout.strip() == "yes"


def _answered(kubectl: Kubectl, sa: str, checks: list[tuple[str, ...]], namespace: str | None,
              answer: bool) -> list[str]:
    """The checks the apiserver answers with ``answer`` (yes: True), as readable strings."""
    return [f"{'/'.join(c[1:])} {c[0]} in {namespace or 'all namespaces'}" for c in checks
            if can_i(kubectl, sa, *c, namespace=namespace) is answer]


def _matrix(kubectl: Kubectl, sa: str, checks: list[tuple[str, ...]], namespace: str | None) -> list[str]:
    return _answered(kubectl, sa, checks, namespace, False)


def _allowed(kubectl: Kubectl, sa: str, checks: list[tuple[str, ...]], namespace: str | None) -> list[str]:
    return _answered(kubectl, sa, checks, namespace, True)


@pytest.fixture(scope="module")
def releases(devenv: DevEnvironment, helm: Helm, kube: Kube) -> Iterator[dict[str, str]]:
    """Two releases: cluster-wide in one namespace, namespaced (watching itself) in another."""
    suffix = uuid.uuid4().hex[:5]
    made = {"cluster": f"rbac-cluster-{suffix}", "namespaced": f"rbac-ns-{suffix}", "noapi": f"rbac-noapi-{suffix}",
            "clientca": f"rbac-ca-{suffix}"}
    try:
        install(devenv, helm, "rbac", made["cluster"], *sets("replicaCount=0", "leaderElection.enabled=true"), ready=False)
        install(devenv, helm, "rbac", made["namespaced"], *sets("replicaCount=0", "watch.mode=namespaced"), ready=False)
        install(devenv, helm, "rbac", made["noapi"], *sets("replicaCount=0", "watch.mode=namespaced", "api.enabled=false"),
                ready=False)
        install(devenv, helm, "rbac", made["clientca"], *sets("replicaCount=0", "watch.mode=namespaced",
                                                              "api.tls.secretName=api-tls"), ready=False)
        yield {mode: f"system:serviceaccount:{ns}:rbac-compozy-operator" for mode, ns in made.items()} | {
            f"{mode}-ns": ns for mode, ns in made.items()}
    finally:
        for ns in made.values():
            helm("uninstall", "rbac", "-n", ns, "--wait")
            kube.delete(f"/api/v1/namespaces/{ns}")


def test_cluster_wide_operator_may_do_what_it_needs_everywhere(kubectl: Kubectl, releases: dict[str, str]) -> None:
    sa = releases["cluster"]
    missing = [m for ns in (None, "default", releases["namespaced-ns"]) for m in _matrix(kubectl, sa, NAMESPACED_NEEDS, ns)]
    missing += _matrix(kubectl, sa, [*REVIEWS, ("list", "nodes"), ("watch", "nodes"), ("get", "nodes"),
                                     ("list", "namespaces"),  # api.Service: GET /api/v1/namespaces
                                     ("list", "customresourcedefinitions.apiextensions.k8s.io"),
                                     ("watch", "customresourcedefinitions.apiextensions.k8s.io")], None)
    assert not missing, f"denied but needed: {missing}"


def test_cluster_wide_operator_may_not_do_more(kubectl: Kubectl, releases: dict[str, str]) -> None:
    sa = releases["cluster"]
    extra = _allowed(kubectl, sa, NEVER, "default") + _allowed(kubectl, sa, NEVER_CLUSTER, None)
    assert not extra, f"allowed but never needed: {extra}"


def test_namespaced_operator_works_only_in_its_namespaces(kubectl: Kubectl, releases: dict[str, str]) -> None:
    sa, own = releases["namespaced"], releases["namespaced-ns"]
    assert not _matrix(kubectl, sa, NAMESPACED_NEEDS, own), "denied in its own namespace"
    outside = _allowed(kubectl, sa, NAMESPACED_NEEDS, "default") + _allowed(kubectl, sa, NAMESPACED_NEEDS, None)
    assert not outside, f"allowed outside its namespace: {outside}"
    assert not _matrix(kubectl, sa, [*REVIEWS, ("list", "nodes"), ("watch", "nodes"), ("get", "nodes")], None)
    extra = _allowed(kubectl, sa, NEVER, own) + _allowed(kubectl, sa, NEVER_CLUSTER, None)
    extra += _allowed(kubectl, sa, [("list", "customresourcedefinitions.apiextensions.k8s.io"), ("list", "namespaces")], None)
    assert not extra, f"allowed but never needed: {extra}"


def test_without_the_api_the_operator_starts_no_runs_and_reviews_nothing(kubectl: Kubectl,
                                                                        releases: dict[str, str]) -> None:
    sa, own = releases["noapi"], releases["noapi-ns"]
    assert not _matrix(kubectl, sa, [n for n in NAMESPACED_NEEDS if n not in API_ONLY], own)
    extra = _allowed(kubectl, sa, API_ONLY, own) + _allowed(kubectl, sa, REVIEWS, None)
    assert not extra, f"allowed with api.enabled=false: {extra}"


CLIENT_CA = "configmaps/extension-apiserver-authentication"


def test_https_api_reads_the_cluster_client_ca_and_nothing_else_of_kube_system(kubectl: Kubectl,
                                                                               releases: dict[str, str]) -> None:
    """api.tls.secretName (clusterClientCA by default): get on the one ConfigMap the API server publishes
    its client CA in; without HTTPS, not even that."""
    assert can_i(kubectl, releases["clientca"], "get", CLIENT_CA, namespace="kube-system")
    assert not _allowed(kubectl, releases["clientca"], [("list", "configmaps"), ("get", "configmaps/other"),
                                                        ("watch", "configmaps"), ("update", CLIENT_CA)], "kube-system")
    assert not can_i(kubectl, releases["cluster"], "get", CLIENT_CA, namespace="kube-system")


def test_leader_election_touches_only_its_own_lease(kubectl: Kubectl, releases: dict[str, str]) -> None:
    sa, ns = releases["cluster"], releases["cluster-ns"]
    lease = "leases.coordination.k8s.io/rbac-compozy-operator"
    assert not _matrix(kubectl, sa, [("get", lease), ("update", lease), ("create", "leases.coordination.k8s.io")], ns)
    assert not _allowed(kubectl, sa, [("get", "leases.coordination.k8s.io/other"), ("delete", lease),
                                      ("list", "leases.coordination.k8s.io")], ns)
    assert not _allowed(kubectl, sa, [("get", lease), ("create", "leases.coordination.k8s.io")], "default")
