"""``compozy logs``: a run's log lines, read from api.Service (ARCHITECTURE.md §8).

The lines live in NATS (the ``COMPOZY_LOGS`` stream, by execution uid), so they outlive the task
pods; only api.Service reads them, over ``GET /api/v1/namespaces/{ns}/executions/{name}/logs``.

Where api.Service is: ``--api-url``, else ``$COMPOZY_API_URL``, else the kubeconfig context's
extension ``compozy.dev/api`` (``extension: {url: ..., certificate-authority-data: ...}``). How the
CLI proves who it is: a bearer token (api.Service checks it with TokenReview), ``--token``, else
``$COMPOZY_TOKEN``, else the kubeconfig user's token (static, from a file, or from an exec plugin,
as the official client loads it), else the kubeconfig user's client certificate, presented in the
TLS handshake to an https api.Service that trusts the cluster's client CA (COMPOZY_API_CLIENT_CA).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from .connect import CliError, Target, add_flags, connect

API_EXTENSION = "compozy.dev/api"
API_PORT = 8090  # api.Service's default port (COMPOZY_API_PORT)
READ_SECONDS = 30  # without follow: the whole answer; with follow, the server keeps the stream alive


def api_url(args: argparse.Namespace, t: Target) -> str:
    url = args.api_url or os.environ.get("COMPOZY_API_URL") or _extension(t).get("url")
    if not url or not isinstance(url, str):
        raise CliError("where is api.Service? Logs are served by it, not by the Kubernetes API: pass --api-url "
                       "(e.g. http://127.0.0.1:8090 with `kubectl -n compozy-system port-forward "
                       "deploy/compozy-operator 8090`), set COMPOZY_API_URL, or add the extension "
                       f"{API_EXTENSION} {{url: ...}} to your kubeconfig context")
    return url.rstrip("/")


def _extension(t: Target) -> dict[str, Any]:
    for ext in t.extensions:
        if isinstance(ext, dict) and ext.get("name") == API_EXTENSION and isinstance(ext.get("extension"), dict):
            return ext["extension"]
    return {}


@dataclass(frozen=True)
class Credentials:
    """How the CLI proves who it is to api.Service: a bearer token, or a client certificate."""

    token: str | None = None
    certificate: tuple[str, str] | None = None  # (certificate file, key file)


def credentials(args: argparse.Namespace, t: Target, url: str) -> Credentials:
    """``--token``, else ``$COMPOZY_TOKEN``, else the kubeconfig user's token, else its client
    certificate (api.Service accepts those over HTTPS when it trusts the cluster's client CA)."""
    if token := args.token or os.environ.get("COMPOZY_TOKEN"):
        return Credentials(token=str(token))
    cfg = t.configuration
    if cfg.refresh_api_key_hook is not None:  # an exec plugin or a token file: fetch a current token
        cfg.refresh_api_key_hook(cfg)
    header = (cfg.api_key or {}).get("authorization") or ""
    if header.lower().startswith("bearer "):
        return Credentials(token=header[7:].strip())
    if cfg.cert_file and cfg.key_file:
        if not url.startswith("https://"):
            raise CliError(f"the kubeconfig user of context {t.context!r} authenticates with a client certificate, "
                           f"which api.Service accepts only over HTTPS, and {url} is plain HTTP. Use its https URL, "
                           "or pass --token (or set COMPOZY_TOKEN), e.g. a ServiceAccount's: "
                           "`kubectl create token <serviceaccount> -n <namespace>`")
        return Credentials(certificate=(cfg.cert_file, cfg.key_file))
    raise CliError(f"api.Service needs a bearer token or a client certificate, and the kubeconfig user of context "
                   f"{t.context!r} has neither. Pass --token (or set COMPOZY_TOKEN), e.g. a ServiceAccount's: "
                   "`kubectl create token <serviceaccount> -n <namespace>`")


def tls_context(args: argparse.Namespace, t: Target, creds: Credentials) -> ssl.SSLContext:
    """Verifies api.Service with ``--api-ca``, else the extension's ``certificate-authority-data``,
    else the system's trust store; presents the client certificate if that is how we sign in."""
    ca_data = _extension(t).get("certificate-authority-data")
    cadata = base64.b64decode(ca_data).decode() if isinstance(ca_data, str) and ca_data and not args.api_ca else None
    context = ssl.create_default_context(cafile=args.api_ca, cadata=cadata)
    if creds.certificate:
        context.load_cert_chain(*creds.certificate)
    return context


def logs_url(base: str, namespace: str, name: str, task: str | None, attempt: int | None, follow: bool) -> str:
    query = {k: v for k, v in (("task", task), ("attempt", attempt), ("follow", "true" if follow else None))
             if v is not None}
    path = f"/api/v1/namespaces/{urllib.parse.quote(namespace)}/executions/{urllib.parse.quote(name)}/logs"
    return base + path + (f"?{urllib.parse.urlencode(query)}" if query else "")


def error_message(code: int, body: bytes) -> str:
    """api.Service's error body (``{"error": {"reason", "message", "field"?}}``) in one line."""
    try:
        error = json.loads(body)["error"]
        return f"{error.get('message') or error.get('reason')} (HTTP {code})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {code}: {body[:200].decode(errors='replace').strip()}"


def stream(url: str, creds: Credentials, out: Any, follow: bool, context: ssl.SSLContext | None = None) -> None:
    """Copy the answer's lines to ``out`` as they arrive."""
    headers = {"Accept": "text/plain"} | ({"Authorization": f"Bearer {creds.token}"} if creds.token else {})
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=None if follow else READ_SECONDS,  # noqa: S310 - the user's URL
                                    context=context) as answer:
            for line in answer:
                out.write(line.decode(errors="replace"))
                out.flush()
    except urllib.error.HTTPError as e:
        raise CliError(f"logs: {error_message(e.code, e.read())}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
        why = getattr(e, "reason", None) or e
        if creds.certificate and isinstance(why, (ssl.SSLError, http.client.HTTPException, ConnectionError)):
            # with TLS 1.3 a refused client certificate is seen after the handshake, as a closed connection
            why = f"{why} (was the client certificate refused? api.Service accepts the cluster client CA's " \
                  "certificates only with api.tls.clusterClientCA)"
        raise CliError(f"logs: cannot reach api.Service at {url.split('/api/', 1)[0]}: {why}") from None


def logs(args: argparse.Namespace) -> int:
    t = connect(args)
    base = api_url(args, t)
    creds = credentials(args, t, base)
    context = tls_context(args, t, creds) if base.startswith("https://") else None
    try:
        stream(logs_url(base, t.namespace, args.execution, args.task, args.attempt, args.follow), creds, sys.stdout,
               args.follow, context)
    except KeyboardInterrupt:
        return 130
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("logs", help="a run's log lines (from api.Service; they outlive the pods)",
                       description="Print a run's log lines: `<time> <component> <task>[<attempt>] <level> "
                       "<message>`, from api.Service (see --api-url). -f follows them until the run ends.")
    add_flags(p)
    p.add_argument("execution", metavar="EXEC")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until the run ends")
    p.add_argument("--task", help="only this task's lines (a collection child: id[index])")
    p.add_argument("--attempt", type=int, help="only this attempt's lines (with --task)")
    p.add_argument("--api-url", help="api.Service's base URL (default: $COMPOZY_API_URL, else the kubeconfig "
                   f"context's {API_EXTENSION} extension)")
    p.add_argument("--api-ca", metavar="FILE", help="CA bundle that signed api.Service's certificate (https)")
    p.add_argument("--token", help="bearer token for api.Service (default: $COMPOZY_TOKEN, else the kubeconfig "
                   "user's token, else its client certificate)")
    p.set_defaults(func=logs)
