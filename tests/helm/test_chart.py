"""The chart's files: lint, CRDs in sync with crds/, values table current, values schema."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from compozy_operator.testenv.helm import Helm
from tests.helpers import CRD_DIR

from .conftest import CHART, sets, template

ROOT = Path(__file__).resolve().parents[2]
EXTERNAL = sets("nats.mode=external", "nats.external.url=nats://nats.example:4222", "nats.auth.existingSecret=nats")


@pytest.mark.parametrize("values", [[], EXTERNAL, sets("watch.mode=namespaced", "watch.namespaces={a,b}"),
                                    sets("nats.tls.enabled=true", "nats.tls.secretName=tls", "serviceMonitor.enabled=true",
                                         "prometheusRule.enabled=true", "grafanaDashboard.enabled=true"),
                                    sets("webhook.certManager.enabled=true", "webhook.failurePolicy=Ignore"),
                                    sets("webhook.enabled=false")],
                         ids=["default", "external", "namespaced", "tls-servicemonitor", "cert-manager", "no-webhook"])
def test_helm_lint_is_clean(helm: Helm, values: list[str]) -> None:
    out = helm("lint", "--strict", CHART, *values)
    assert out.returncode == 0 and "[WARNING]" not in out.stdout and "[ERROR]" not in out.stdout, out.stdout + out.stderr


def test_chart_crds_are_the_generated_ones() -> None:
    chart_crds = {p.name: p.read_text() for p in (Path(CHART) / "crds").glob("*.yaml")}
    generated = {p.name: p.read_text() for p in CRD_DIR.glob("*.yaml")}
    stale = sorted(name for name in chart_crds.keys() | generated.keys() if chart_crds.get(name) != generated.get(name))
    assert not stale, (f"charts/compozy-operator/crds/ differs from crds/ in {stale}: run "
                       "`python -m compozy_operator.resources.crd` (writes both) or `make chart`")


def test_values_table_is_current() -> None:
    out = subprocess.run([sys.executable, "hack/helm-docs.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_every_value_is_documented() -> None:
    """Every leaf of values.yaml (or the object holding it) has a row in the table."""
    table = (ROOT / "docs" / "helm-values.md").read_text()
    documented = {line.split("`")[1] for line in table.splitlines() if line.startswith("| `")}

    def leaves(node: object, path: str) -> list[str]:
        if isinstance(node, dict) and node and path not in documented:
            return [leaf for k, v in node.items() for leaf in leaves(v, f"{path}.{k}" if path else k)]
        return [path]

    missing = [p for p in leaves(yaml.safe_load((Path(CHART) / "values.yaml").read_text()), "") if p not in documented]
    assert not missing, f"values without a `## ` comment: {missing}"


BAD_VALUES = {
    "negative-replicas": (sets("replicaCount=-1"), "at '/replicaCount': minimum: got -1, want 0"),
    "two-operators-without-election": (sets("replicaCount=2", "leaderElection.enabled=false"),
                                       "at '/replicaCount': maximum: got 2, want 1"),
    "unknown-nats-mode": (sets("nats.mode=embedded"), "at '/nats/mode': value must be one of 'bundled', 'external'"),
    "external-without-url": (sets("nats.mode=external"), "at '/nats/external/url': minLength: got 0, want 1"),
    "unknown-watch-mode": (sets("watch.mode=all"), "at '/watch/mode': value must be one of 'cluster', 'namespaced'"),
    "typo-in-a-key": (sets("operator.httpport=9000"), "additional properties 'httpport' not allowed"),
    "external-token-without-secret": (sets("nats.mode=external", "nats.external.url=nats://n:4222", "nats.auth.mode=token"),
                                      "at '/nats/auth/existingSecret': minLength: got 0, want 1"),
    "unknown-auth-mode": (sets("nats.auth.mode=nkey"), "at '/nats/auth/mode': value must be one of 'callout', 'token'"),
    "tls-without-secret": (sets("nats.tls.enabled=true"), "at '/nats/tls/secretName': minLength: got 0, want 1"),
    "unknown-failure-policy": (sets("webhook.failurePolicy=Retry"),
                               "at '/webhook/failurePolicy': value must be one of 'Fail', 'Ignore'"),
    "oidc-issuer-not-https": (sets("api.oidc.issuerURL=http://dex.example"), "at '/api/oidc/issuerURL'"),
}


@pytest.mark.parametrize("case", BAD_VALUES, ids=list(BAD_VALUES))
def test_bad_values_fail_install_with_the_schema_message(helm: Helm, case: str) -> None:
    values, message = BAD_VALUES[case]
    out = helm("install", f"bad-{case}", CHART, "-n", "default", *values)
    assert out.returncode != 0
    assert "values don't meet the specifications of the schema" in out.stderr and message in out.stderr, out.stderr
    assert helm("status", f"bad-{case}", "-n", "default").returncode != 0, "nothing may be installed"


def test_rendered_pods_meet_the_restricted_standard(helm: Helm) -> None:
    """Static view of the restricted profile (the apiserver enforces it in test_install/test_dry_run)."""
    docs = [d for d in yaml.safe_load_all(template(helm, "r", "ns")) if d]
    workloads = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert {d["kind"] for d in workloads} == {"Deployment", "StatefulSet"}
    for w in workloads:
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"] == {"drop": ["ALL"]}
            assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    deployment = next(d for d in workloads if d["kind"] == "Deployment")
    # two replicas on a Lease: the new pod starts as a standby before the old one hands the Lease over
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate",
                                              "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert deployment["spec"]["replicas"] == 2
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["COMPOZY_LEADER_ELECTION"] == "true" and env["COMPOZY_LEADER_LEASE"] == deployment["metadata"]["name"]
    spread = deployment["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert spread["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]["topologyKey"] == \
        "kubernetes.io/hostname"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def _kinds(helm: Helm, *values: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for d in yaml.safe_load_all(template(helm, "r", "ns", *values)):
        if d:
            out.setdefault(d["kind"], []).append(d)
    return out


def test_webhook_configuration_certificate_and_port(helm: Helm) -> None:
    """Default: a ValidatingWebhookConfiguration for CREATE/UPDATE of both kinds (not /status), through the
    Service's port 443, with a generated CA as caBundle; the serving certificate mounted in the pod."""
    import base64

    from cryptography import x509

    docs = _kinds(helm)
    [vwc] = docs["ValidatingWebhookConfiguration"]
    hooks = {h["name"]: h for h in vwc["webhooks"]}
    assert set(hooks) == {"workflows.compozy.dev", "workflowexecutions.compozy.dev"}
    secret = next(s for s in docs["Secret"] if s["metadata"]["name"] == "r-compozy-operator-webhook-tls")
    assert secret["type"] == "kubernetes.io/tls"
    for plural, hook in (("workflows", "validate-workflow"), ("workflowexecutions", "validate-workflowexecution")):
        h = hooks[f"{plural}.compozy.dev"]
        assert h["rules"] == [{"apiGroups": ["compozy.dev"], "apiVersions": ["v1alpha1"],
                               "operations": ["CREATE", "UPDATE"], "resources": [plural], "scope": "Namespaced"}]
        assert h["clientConfig"]["service"] == {"name": "r-compozy-operator", "namespace": "ns",
                                                "path": f"/{hook}", "port": 443}
        assert h["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
        assert h["failurePolicy"] == "Fail" and h["sideEffects"] == "None"
        assert h["admissionReviewVersions"] == ["v1"] and h["timeoutSeconds"] == 5
        assert "namespaceSelector" not in h and "objectSelector" not in h
    cert = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert "r-compozy-operator.ns.svc" in names
    [svc] = [s for s in docs["Service"] if s["metadata"]["name"] == "r-compozy-operator"]
    assert {"name": "webhook", "port": 443, "targetPort": "webhook", "protocol": "TCP"} in svc["spec"]["ports"]
    pod = next(d for d in docs["Deployment"])["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["COMPOZY_WEBHOOK_ENABLED"] == "true" and env["COMPOZY_WEBHOOK_PORT"] == "9443"
    assert env["COMPOZY_WEBHOOK_CERT_FILE"] == "/etc/compozy/webhook/tls.crt"
    assert env["COMPOZY_MAX_INPUT_BYTES"] == "1048576"
    assert {"name": "webhook", "containerPort": 9443, "protocol": "TCP"} in container["ports"]
    assert {"name": "webhook-tls", "mountPath": "/etc/compozy/webhook", "readOnly": True} in container["volumeMounts"]
    assert next(v for v in pod["volumes"] if v["name"] == "webhook-tls")["secret"]["secretName"] == secret["metadata"]["name"]


def test_webhook_with_cert_manager_and_off(helm: Helm) -> None:
    docs = _kinds(helm, *sets("webhook.certManager.enabled=true", "webhook.failurePolicy=Ignore"))
    [vwc] = docs["ValidatingWebhookConfiguration"]
    assert vwc["metadata"]["annotations"] == {"cert-manager.io/inject-ca-from": "ns/r-compozy-operator-webhook"}
    assert all("caBundle" not in h["clientConfig"] and h["failurePolicy"] == "Ignore" for h in vwc["webhooks"])
    [certificate] = docs["Certificate"]
    assert certificate["spec"]["secretName"] == "r-compozy-operator-webhook-tls"
    assert "r-compozy-operator.ns.svc" in certificate["spec"]["dnsNames"]
    assert docs["Issuer"][0]["spec"] == {"selfSigned": {}}
    assert not any(s["metadata"]["name"].endswith("webhook-tls") for s in docs.get("Secret", []))

    off = _kinds(helm, *sets("webhook.enabled=false"))
    assert "ValidatingWebhookConfiguration" not in off and "Certificate" not in off
    env = {e["name"] for e in off["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "COMPOZY_WEBHOOK_ENABLED" not in env


def test_the_charts_nats_callout_conf_is_the_generated_one() -> None:
    """files/nats-callout.conf is what nats_auth.keys.server_conf says (`make chart` writes it)."""
    out = subprocess.run([sys.executable, "-m", "compozy_operator.nats_auth.keys", "--server-conf"], cwd=ROOT,
                         capture_output=True, text=True, check=True)
    shipped = (Path(CHART) / "files" / "nats-callout.conf").read_text()
    assert shipped == out.stdout, "charts/compozy-operator/files/nats-callout.conf is stale: run `make chart`"


def test_oidc_sign_in_takes_its_secrets_by_reference_only(helm: Helm) -> None:
    """api.oidc: the settings as env, the client secret from the user's Secret, the cookie key from a
    Secret the chart generates (shared by the replicas), the provider's CA from a ConfigMap."""
    docs = _kinds(helm, *sets("api.oidc.issuerURL=https://dex.example", "api.oidc.clientID=compozy",
                              "api.oidc.clientSecretRef.name=dex-client", "api.oidc.caConfigMap=dex-ca",
                              "api.oidc.redirectURL=https://compozy.example/oauth2/callback"))
    pod = docs["Deployment"][0]["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["COMPOZY_API_OIDC_ISSUER_URL"]["value"] == "https://dex.example"
    assert env["COMPOZY_API_OIDC_SCOPES"]["value"] == "openid,email,profile"
    assert env["COMPOZY_API_OIDC_CLIENT_SECRET"]["valueFrom"] == {"secretKeyRef": {"name": "dex-client",
                                                                                   "key": "client-secret"}}
    cookie = next(s for s in docs["Secret"] if s["metadata"]["name"] == "r-compozy-operator-oidc-cookie")
    assert env["COMPOZY_API_OIDC_COOKIE_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == cookie["metadata"]["name"]
    assert len(base64.b64decode(cookie["data"]["secret"])) == 48
    assert env["COMPOZY_API_OIDC_CA_FILE"]["value"] == "/etc/compozy/oidc-ca/ca.crt"
    assert next(v for v in pod["volumes"] if v["name"] == "oidc-ca")["configMap"]["name"] == "dex-ca"

    off = _kinds(helm)
    assert not any(e["name"].startswith("COMPOZY_API_OIDC")
                   for e in off["Deployment"][0]["spec"]["template"]["spec"]["containers"][0]["env"])
    assert not any(s["metadata"]["name"].endswith("oidc-cookie") for s in off.get("Secret", []))
    missing = helm("template", "r", CHART, "-n", "ns", *sets("api.oidc.issuerURL=https://dex.example"))
    assert missing.returncode != 0 and "api.oidc.clientID is required" in missing.stderr, missing.stderr
