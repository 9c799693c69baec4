"""How the workflow verbs reach the cluster: the kubeconfig alone, as kubectl reads it.

``--kubeconfig`` (else ``$KUBECONFIG``, else ~/.kube/config), ``--context`` (else the current one),
``-n`` (else the context's namespace, else ``default``). Token, client-certificate and exec-plugin
users all work: the official client loads them. The verbs then talk to the Kubernetes API directly
(create, get, list, watch, patch WorkflowExecutions): api.Service is needed only for what lives in
NATS (logs).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException
from urllib3.exceptions import HTTPError as Urllib3Error

from ..kube import ApiException, Kube
from ..resources.models import GROUP, VERSION


class CliError(Exception):
    """A failure the user can act on (exit code 1); the message says what and what to do."""


@dataclass
class Target:
    kube: Kube
    namespace: str
    configuration: client.Configuration
    context: str | None
    extensions: list[Any]  # the context's (where api.Service is: logs.API_EXTENSION)

    def executions(self, namespace: str | None = None) -> str:
        ns = self.namespace if namespace is None else namespace
        return f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/workflowexecutions" if ns else \
            f"/apis/{GROUP}/{VERSION}/workflowexecutions"

    def execution(self, name: str) -> str:
        return f"{self.executions()}/{name}"

    def workflows(self) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{self.namespace}/workflows"


def add_flags(parser: argparse.ArgumentParser) -> None:
    """The kubectl flags every resource verb takes."""
    parser.add_argument("--kubeconfig", help="path of the kubeconfig (default: $KUBECONFIG, else ~/.kube/config)")
    parser.add_argument("--context", help="kubeconfig context to use (default: its current context)")
    parser.add_argument("-n", "--namespace", help="namespace (default: the context's, else default)")


def connect(args: argparse.Namespace) -> Target:
    """A client for the kubeconfig the flags name; :class:`CliError` when there is none usable."""
    cfg = client.Configuration()
    try:
        config.load_kube_config(config_file=args.kubeconfig, context=args.context, client_configuration=cfg)
        _, current = config.list_kube_config_contexts(config_file=args.kubeconfig)
        contexts, _ = config.list_kube_config_contexts(config_file=args.kubeconfig)
    except (ConfigException, OSError, TypeError) as e:
        where = args.kubeconfig or "$KUBECONFIG or ~/.kube/config"
        raise CliError(f"no usable kubeconfig ({where}): {e}") from None
    name = args.context or (current or {}).get("name")
    chosen = next((c for c in contexts if c.get("name") == name), current) or {}
    namespace = args.namespace or (chosen.get("context") or {}).get("namespace") or "default"
    cfg.retries = 2
    extensions = (chosen.get("context") or {}).get("extensions") or []
    return Target(Kube(client.ApiClient(cfg)), namespace, cfg, name, extensions if isinstance(extensions, list) else [])


def api_message(e: ApiException) -> str:
    """The API server's own words for a refused request (its Status message), else the HTTP reason."""
    try:
        return str(json.loads(e.body).get("message") or e.reason)
    except (TypeError, ValueError, AttributeError):
        return f"{e.status} {e.reason}"


def call(what: str, fn: Any, *args: Any, **kw: Any) -> Any:
    """``fn(*args)``, with an API refusal or an unreachable server as a :class:`CliError` naming ``what``."""
    try:
        return fn(*args, **kw)
    except ApiException as e:
        raise CliError(f"{what}: {api_message(e)}") from None
    except (OSError, Urllib3Error) as e:
        raise CliError(f"{what}: cannot reach the Kubernetes API: {e}") from None
