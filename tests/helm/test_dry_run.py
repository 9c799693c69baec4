"""``helm template`` output accepted by the real apiserver (``kubectl apply --dry-run=server``) for
each install variant, in a namespace that enforces and warns on the restricted Pod Security Standard."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import yaml

from compozy_operator.testenv import Kube
from compozy_operator.testenv.helm import Helm
from tests.helpers import Kubectl

from .conftest import server_dry_run, sets, template

RESTRICTED = {"pod-security.kubernetes.io/enforce": "restricted", "pod-security.kubernetes.io/warn": "restricted"}
EXTERNAL = ("nats.mode=external", "nats.external.url=tls://nats.example.com:4222", "nats.auth.mode=token",
            "nats.auth.existingSecret=nats-creds")


@pytest.fixture
def restricted(namespace: str, kube: Kube) -> str:
    kube.merge_patch(f"/api/v1/namespaces/{namespace}", {"metadata": {"labels": RESTRICTED}})
    return namespace


@pytest.fixture
def other_namespace(kube: Kube) -> Iterator[str]:
    name = f"helm-watched-{uuid.uuid4().hex[:5]}"
    kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    kube.delete(f"/api/v1/namespaces/{name}")


def _accepted(kubectl: Kubectl, manifests: str) -> str:
    out = server_dry_run(kubectl, manifests)
    assert out.returncode == 0, out.stderr
    assert "would violate PodSecurity" not in out.stderr, out.stderr
    return out.stdout


def test_default_values_bundled_nats(helm: Helm, kubectl: Kubectl, restricted: str) -> None:
    """Defaults: bundled NATS in callout mode; no token Secret (the operator makes the callout one)."""
    manifests = template(helm, "dry", restricted)
    out = _accepted(kubectl, manifests)
    for obj in ("deployment.apps/dry-compozy-operator", "statefulset.apps/dry-compozy-operator-nats",
                f"clusterrole.rbac.authorization.k8s.io/{restricted}-dry-compozy-operator",
                f"clusterrole.rbac.authorization.k8s.io/{restricted}-dry-compozy-operator-nats-auth",
                "role.rbac.authorization.k8s.io/dry-compozy-operator-nats-callout",
                "poddisruptionbudget.policy/dry-compozy-operator", "service/dry-compozy-operator",
                "serviceaccount/dry-compozy-operator", "configmap/dry-compozy-operator-nats"):
        assert f"{obj} created (server dry run)" in out, out
    assert "secret/dry-compozy-operator-nats-auth" not in out, "no shared token in callout mode"
    assert "auth_callout" in manifests and "token: $NATS_TOKEN" not in manifests and "COMPOZY_NATS_TOKEN" not in manifests


def test_bundled_nats_in_token_mode(helm: Helm, kubectl: Kubectl, restricted: str) -> None:
    out = _accepted(kubectl, template(helm, "tok", restricted, *sets("nats.auth.mode=token")))
    assert "secret/tok-compozy-operator-nats-auth created (server dry run)" in out, out
    assert "nats-callout" not in out and "tokenreviews" not in out


def test_bundled_nats_with_tls(helm: Helm, kubectl: Kubectl, restricted: str) -> None:
    manifests = template(helm, "tls", restricted, *sets("nats.tls.enabled=true", "nats.tls.secretName=nats-tls",
                                                        "nats.tls.caSecretName=nats-ca"))
    assert "tls://tls-compozy-operator-nats." in manifests and "cert_file: /etc/nats/tls/tls.crt" in manifests
    _accepted(kubectl, manifests)


def test_external_nats(helm: Helm, kubectl: Kubectl, restricted: str) -> None:
    manifests = template(helm, "ext", restricted, *sets(*EXTERNAL))
    assert "StatefulSet" not in manifests and "nats-auth" not in manifests, "no bundled server, no generated token"
    out = _accepted(kubectl, manifests)
    assert "deployment.apps/ext-compozy-operator created" in out


def test_namespaced_mode(helm: Helm, kubectl: Kubectl, restricted: str, other_namespace: str) -> None:
    manifests = template(helm, "nsd", restricted, *sets(*EXTERNAL, "watch.mode=namespaced",
                                                        f"watch.namespaces={{{restricted},{other_namespace}}}"))
    out = _accepted(kubectl, manifests)
    assert f'value: "{restricted},{other_namespace}"' in manifests  # COMPOZY_NAMESPACES
    assert out.count("role.rbac.authorization.k8s.io/nsd-compozy-operator created") == 2
    assert out.count("rolebinding.rbac.authorization.k8s.io/nsd-compozy-operator created") == 2
    # the only cluster-wide grants left: read Nodes (lost-node detection), api.Service's reviews
    cluster_role = manifests.split("kind: ClusterRole\n", 1)[1].split("---", 1)[0]
    assert "resources: [nodes]" in cluster_role and "pods" not in cluster_role and "secrets" not in cluster_role


def test_namespaced_mode_without_node_watch_is_namespace_only(helm: Helm, kubectl: Kubectl, restricted: str) -> None:
    manifests = template(helm, "nsonly", restricted, *sets(*EXTERNAL, "watch.mode=namespaced", "watch.nodes=false",
                                                           "api.enabled=false"))
    assert "ClusterRole" not in manifests and 'name: COMPOZY_WATCH_NODES\n              value: "false"' in manifests
    _accepted(kubectl, manifests)
    # api.Service adds the two cluster-scoped questions it asks the API server, and nothing else
    with_api = template(helm, "nsapi", restricted, *sets(*EXTERNAL, "watch.mode=namespaced", "watch.nodes=false"))
    cluster_role = with_api.split("kind: ClusterRole\n", 1)[1].split("---", 1)[0]
    assert [line.strip() for line in cluster_role.splitlines() if "resources:" in line or "verbs:" in line] == [
        "resources: [tokenreviews]", "verbs: [create]", "resources: [subjectaccessreviews]", "verbs: [create]"]


def test_cluster_wide_mode(helm: Helm, kubectl: Kubectl, restricted: str) -> None:
    manifests = template(helm, "cw", restricted, *sets(*EXTERNAL, "watch.mode=cluster"))
    assert "COMPOZY_NAMESPACES" not in manifests
    roles = [d["metadata"]["name"] for d in yaml.safe_load_all(manifests) if d and d["kind"] == "Role"]
    assert roles == ["cw-compozy-operator-leader"], "cluster-wide: no Role but the leader Lease's"
    out = _accepted(kubectl, manifests)
    assert f"clusterrolebinding.rbac.authorization.k8s.io/{restricted}-cw-compozy-operator created" in out


def test_the_check_catches_a_non_restricted_pod_template(helm: Helm, kubectl: Kubectl, restricted: str) -> None:
    """The warning the checks above look for does appear for a template that breaks the profile."""
    manifests = template(helm, "loose", restricted, *sets(*EXTERNAL, "operator.securityContext.allowPrivilegeEscalation=true"))
    out = server_dry_run(kubectl, manifests)
    assert 'would violate PodSecurity "restricted:latest": allowPrivilegeEscalation != false' in out.stderr, out.stderr


def test_api_over_https_with_a_tls_secret(helm: Helm, kubectl: Kubectl, restricted: str) -> None:
    manifests = template(helm, "apitls", restricted, *sets(*EXTERNAL, "api.tls.secretName=api-cert"))
    assert "name: COMPOZY_API_CERT_FILE\n              value: /etc/compozy/api-tls/tls.crt" in manifests
    assert "secretName: api-cert" in manifests and "mountPath: /etc/compozy/api-tls" in manifests
    _accepted(kubectl, manifests)
    assert "api-tls" not in template(helm, "apiplain", restricted, *sets(*EXTERNAL))
