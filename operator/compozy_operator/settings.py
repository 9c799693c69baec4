"""Operator and runner settings, read once from the environment (12-factor; the Helm chart sets them)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import __version__
from .container_paths import host_path
from .events import LOG_MAX_AGE, LOG_MAX_BYTES
from .resources.models import POD_CLEANUP_POLICIES

if TYPE_CHECKING:
    from .api_service.oidc import OidcConfig


def _env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def _file(name: str, default: str = "") -> str:
    """A file setting: the path, as the process sees it (see container_paths)."""
    path = _env(name, default)
    return host_path(path) if path else path


def _token() -> str | None:
    if path := _file("COMPOZY_NATS_TOKEN_FILE"):
        return Path(path).read_text().strip()
    return _env("COMPOZY_NATS_TOKEN") or None


@dataclass(frozen=True)
class Settings:

    nats_url: str = field(default_factory=lambda: _env("COMPOZY_NATS_URL", "nats://127.0.0.1:4222"))
    nats_token: str | None = field(default_factory=_token)
    # how task pods get their NATS identity: `token` (the shared token from the NATS Secret) or
    # `callout` (each attempt its own, from its pod's ServiceAccount token, via the operator's auth
    # callout service: nats_auth/, docs/security.md; its settings are COMPOZY_NATS_CALLOUT_*)
    nats_auth: str = field(default_factory=lambda: _env("COMPOZY_NATS_AUTH", "token"))
    # callout mode in a cluster: the Secret (in the operator's own namespace) holding the callout
    # server's secrets (nats_auth/keys.py), made by the operator at its first start when absent; its
    # NATS URL then carries no credentials. Empty: they come from COMPOZY_NATS_URL and
    # COMPOZY_NATS_CALLOUT_* (how the local cluster's operator process gets them).
    nats_callout_secret: str = field(default_factory=lambda: _env("COMPOZY_NATS_CALLOUT_SECRET"))
    # the namespace the operator runs in (the chart sets it from the downward API)
    pod_namespace: str = field(default_factory=lambda: _env("COMPOZY_POD_NAMESPACE", "default"))
    # Secret (keys `url`, `token`) the task pods read their NATS credentials from; the operator
    # keeps one with this name in every namespace it runs tasks in.
    # PEM file of the CA of a TLS NATS server with a private CA; task pods get it through nats_secret
    nats_ca_file: str | None = field(default_factory=lambda: _file("COMPOZY_NATS_CA_FILE") or None)
    nats_secret: str = field(default_factory=lambda: _env("COMPOZY_NATS_SECRET", "compozy-nats"))
    task_image: str = field(default_factory=lambda: _env("COMPOZY_TASK_IMAGE", f"compozy/compozy-operator:{__version__}"))
    namespaces: tuple[str, ...] = field(
        default_factory=lambda: tuple(n for n in _env("COMPOZY_NAMESPACES").split(",") if n))
    # watch Nodes to fail the attempts stranded on a lost node (needs cluster-wide read on nodes)
    watch_nodes: bool = field(default_factory=lambda: _env("COMPOZY_WATCH_NODES", "true").lower() == "true")
    http_port: int = field(default_factory=lambda: int(_env("COMPOZY_HTTP_PORT", "8080")))
    # several replicas: the holder of this Lease (in pod_namespace) orchestrates, the others stand by
    # (leader_election.py, docs/high-availability.md); off: this process always orchestrates
    leader_election: bool = field(default_factory=lambda: _env("COMPOZY_LEADER_ELECTION", "false").lower() == "true")
    leader_lease: str = field(default_factory=lambda: _env("COMPOZY_LEADER_LEASE", "compozy-operator"))
    # this replica's name in the Lease (the chart: the pod's name)
    leader_identity: str = field(default_factory=lambda: _env("COMPOZY_POD_NAME") or socket.gethostname())
    # a standby takes the Lease when its holder has not renewed it for this long; a leader that
    # could not renew for renew_deadline stops leading (exits); each replica tries every retry
    leader_lease_seconds: float = field(default_factory=lambda: float(_env("COMPOZY_LEADER_LEASE_SECONDS", "15")))
    leader_renew_deadline: float = field(
        default_factory=lambda: float(_env("COMPOZY_LEADER_RENEW_DEADLINE_SECONDS", "10")))
    leader_retry: float = field(default_factory=lambda: float(_env("COMPOZY_LEADER_RETRY_SECONDS", "2")))
    # the default pod cleanup policy of runs whose Workflow sets none (docs/cleanup.md); the older
    # COMPOZY_DELETE_FINISHED_PODS=false still means Never
    pod_cleanup: str = field(default_factory=lambda: _env("COMPOZY_POD_CLEANUP") or (
        "OnPodCompletion" if _env("COMPOZY_DELETE_FINISHED_PODS", "true").lower() == "true" else "Never"))
    pod_cleanup_delay: float = field(default_factory=lambda: float(_env("COMPOZY_POD_CLEANUP_DELAY_SECONDS", "0")))
    # delete ended runs this long after they finished when neither the run nor its Workflow says (unset: keep)
    ttl_seconds_after_finished: int | None = field(
        default_factory=lambda: int(v) if (v := _env("COMPOZY_TTL_SECONDS_AFTER_FINISHED")) else None)
    # how often the leader removes stored outputs of runs deleted while no operator could (and at its start)
    orphan_sweep_seconds: float = field(default_factory=lambda: float(_env("COMPOZY_ORPHAN_SWEEP_SECONDS", "3600")))
    state_batch: int = field(default_factory=lambda: int(_env("COMPOZY_STATE_BATCH", "256")))
    # Untrusted expressions (templates, input-schema regexes, collections) are evaluated in a pool of
    # worker processes (sandbox.py): at most this many (0: in the operator's own process, unbounded)
    eval_workers: int = field(default_factory=lambda: int(_env("COMPOZY_EVAL_WORKERS", "3")))
    # CPU seconds one template (or the input check) may take; the whole evaluation of a run (its
    # decision or its start checks) may take eval_run_timeout of wall time before its worker is killed
    eval_timeout: float = field(default_factory=lambda: float(_env("COMPOZY_EVAL_TIMEOUT_SECONDS", "1")))
    eval_run_timeout: float = field(default_factory=lambda: float(_env("COMPOZY_EVAL_RUN_TIMEOUT_SECONDS", "10")))
    # memory a worker may allocate above what it needs at start (address space, MiB)
    eval_memory_mb: int = field(default_factory=lambda: int(_env("COMPOZY_EVAL_MEMORY_MB", "192")))
    # largest value one template may render (bytes), most items a collection may have
    max_rendered_bytes: int = field(default_factory=lambda: int(_env("COMPOZY_MAX_RENDERED_BYTES", str(1 << 20))))
    max_collection_items: int = field(default_factory=lambda: int(_env("COMPOZY_MAX_COLLECTION_ITEMS", "10000")))
    # a task pod that cannot start (image or config errors) fails its attempt after this long
    pod_start_timeout: float = field(default_factory=lambda: float(_env("COMPOZY_POD_START_TIMEOUT_SECONDS", "120")))
    # a task pod that can never start as it is (a missing Secret or key, a bad image name) fails its
    # attempt, not retried, after this long (a Secret applied with the run has this long to arrive)
    config_error_grace: float = field(default_factory=lambda: float(_env("COMPOZY_CONFIG_ERROR_GRACE_SECONDS", "10")))
    # a task pod whose node is not ready fails its attempt after this long
    node_lost_seconds: float = field(default_factory=lambda: float(_env("COMPOZY_NODE_LOST_SECONDS", "60")))
    # task outputs larger than this (bytes of JSON) go to the NATS object store; status keeps outputRef
    output_inline_limit: int = field(default_factory=lambda: int(_env("COMPOZY_OUTPUT_INLINE_LIMIT", "16384")))
    # how long progress-only events (dispatched, started) may wait to share a status PATCH
    status_defer: float = field(default_factory=lambda: float(_env("COMPOZY_STATUS_DEFER_SECONDS", "2")))
    # The validating admission webhook (admission.py): served over HTTPS with this certificate and
    # key; the chart (or the local cluster's tests) registers it with the API server.
    webhook_enabled: bool = field(default_factory=lambda: _env("COMPOZY_WEBHOOK_ENABLED", "false").lower() == "true")
    webhook_host: str = field(default_factory=lambda: _env("COMPOZY_WEBHOOK_HOST", "0.0.0.0"))  # noqa: S104
    webhook_port: int = field(default_factory=lambda: int(_env("COMPOZY_WEBHOOK_PORT", "9443")))
    webhook_cert_file: str = field(default_factory=lambda: _file("COMPOZY_WEBHOOK_CERT_FILE", "/etc/compozy/webhook/tls.crt"))
    webhook_key_file: str = field(default_factory=lambda: _file("COMPOZY_WEBHOOK_KEY_FILE", "/etc/compozy/webhook/tls.key"))
    # Retention of runs' log lines (the COMPOZY_LOGS stream): the oldest go first past either bound;
    # a run's lines are removed with it sooner (chart: logs.maxAge, logs.maxBytes)
    log_max_age: float = field(default_factory=lambda: float(_env("COMPOZY_LOG_MAX_AGE_SECONDS", str(LOG_MAX_AGE))))
    # copies of each JetStream stream on a NATS cluster (chart: nats.streams.replicas; 3 survives a node)
    stream_replicas: int = field(default_factory=lambda: int(_env("COMPOZY_STREAM_REPLICAS", "1")))
    log_max_bytes: int = field(default_factory=lambda: int(_env("COMPOZY_LOG_MAX_BYTES", str(LOG_MAX_BYTES))))
    # api.Service (api_service/, docs/api.md): the HTTP API on its own port, and the NATS trigger
    api_enabled: bool = field(default_factory=lambda: _env("COMPOZY_API_ENABLED", "true").lower() == "true")
    api_host: str = field(default_factory=lambda: _env("COMPOZY_API_HOST", "0.0.0.0"))  # noqa: S104
    api_port: int = field(default_factory=lambda: int(_env("COMPOZY_API_PORT", "8090")))
    # most event and log streams open at once (each holds a JetStream consumer); beyond it, 429
    api_max_streams: int = field(default_factory=lambda: int(_env("COMPOZY_API_MAX_STREAMS", "1000")))
    # serve it over HTTPS with this certificate and key (both set), else plain HTTP
    api_cert_file: str = field(default_factory=lambda: _file("COMPOZY_API_CERT_FILE"))
    api_key_file: str = field(default_factory=lambda: _file("COMPOZY_API_KEY_FILE"))
    # HTTPS only: also accept client certificates signed by this CA (a PEM file, or `cluster`: the
    # CA the API server trusts for users, so a client-certificate kubeconfig works as it does with kubectl)
    api_client_ca: str = field(default_factory=lambda: _file("COMPOZY_API_CLIENT_CA"))
    # the web UI's built files (docs/ui.md); empty: those built into the package (make ui)
    ui_dir: str = field(default_factory=lambda: _file("COMPOZY_UI_DIR"))
    # local clusters only (`compozy dev`, docs/ui.md): a request with no token acts as this user (and
    # these groups, comma-separated), still authorized by RBAC; refused unless api_host is loopback
    api_local_user: str = field(default_factory=lambda: _env("COMPOZY_API_LOCAL_USER"))
    api_local_groups: tuple[str, ...] = field(
        default_factory=lambda: tuple(g for g in _env("COMPOZY_API_LOCAL_GROUPS").split(",") if g))
    # sign-in with an OpenID Connect provider (api_service/oidc.py, docs/ui.md; chart: api.oidc): off
    # without an issuer. The client secret and the cookie secret come from Secrets (the chart's env)
    api_oidc_issuer_url: str = field(default_factory=lambda: _env("COMPOZY_API_OIDC_ISSUER_URL"))
    api_oidc_client_id: str = field(default_factory=lambda: _env("COMPOZY_API_OIDC_CLIENT_ID"))
    api_oidc_client_secret: str = field(default_factory=lambda: _env("COMPOZY_API_OIDC_CLIENT_SECRET"))
    api_oidc_redirect_url: str = field(default_factory=lambda: _env("COMPOZY_API_OIDC_REDIRECT_URL"))
    api_oidc_scopes: tuple[str, ...] = field(default_factory=lambda: tuple(
        s for s in _env("COMPOZY_API_OIDC_SCOPES", "openid,email,profile").replace(" ", ",").split(",") if s))
    api_oidc_ca_file: str = field(default_factory=lambda: _file("COMPOZY_API_OIDC_CA_FILE"))
    api_oidc_cookie_secret: str = field(default_factory=lambda: _env("COMPOZY_API_OIDC_COOKIE_SECRET"))
    # an execution's spec.input larger than this (bytes of compact JSON) is refused at apply
    max_input_bytes: int = field(default_factory=lambda: int(_env("COMPOZY_MAX_INPUT_BYTES", str(1 << 20))))

    def __post_init__(self) -> None:
        if self.pod_cleanup not in POD_CLEANUP_POLICIES:
            raise ValueError(f"COMPOZY_POD_CLEANUP: {self.pod_cleanup!r} is not one of {', '.join(POD_CLEANUP_POLICIES)}")
        if self.orphan_sweep_seconds <= 0:
            raise ValueError("COMPOZY_ORPHAN_SWEEP_SECONDS must be > 0")
        if self.pod_cleanup_delay < 0 or (self.ttl_seconds_after_finished or 0) < 0:
            raise ValueError("COMPOZY_POD_CLEANUP_DELAY_SECONDS and COMPOZY_TTL_SECONDS_AFTER_FINISHED must be >= 0")

    def oidc(self) -> OidcConfig | None:
        """api.Service's OIDC sign-in, or None when no issuer is configured."""
        if not self.api_oidc_issuer_url:
            return None
        from .api_service.oidc import OidcConfig  # noqa: PLC0415 - task pods read settings too: no JWT library there
        return OidcConfig(self.api_oidc_issuer_url, self.api_oidc_client_id, self.api_oidc_client_secret,
                          self.api_oidc_redirect_url, self.api_oidc_scopes, self.api_oidc_ca_file,
                          self.api_oidc_cookie_secret)

    def nats_ca(self) -> str | None:
        """The CA's PEM text, or None (then the system's trust store verifies a TLS server)."""
        return Path(self.nats_ca_file).read_text() if self.nats_ca_file else None
