"""A real OpenID Provider on loopback for tests and the local cluster: ``hack/testenv/oidc``
(zitadel/oidc's example provider, built from its pinned Go module with the other binaries), over
HTTPS with a CA of its own, with users and one web client given here. A cluster started with
:meth:`OidcProvider.apiserver_flags` accepts its ID tokens, as a real cluster accepts Dex's."""

from __future__ import annotations

import json
import ssl
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .pki import TlsFiles, write_loopback_tls
from .process import ManagedProcess
from .workdir import free_port, which

USERNAME_PREFIX = "oidc:"  # the API server's name of a provider's user: oidc:<sub>


@dataclass(frozen=True)
class OidcUser:
    id: str  # the ID token's sub: the Kubernetes user is oidc:<id>
    username: str  # what the login form asks for
    password: str

    def json(self) -> dict[str, object]:
        return {"ID": self.id, "Username": self.username, "Password": self.password, "FirstName": self.id,
                "LastName": "Test", "Email": f"{self.id}@example.test", "EmailVerified": True,
                "PreferredLanguage": "en"}


@dataclass
class OidcProvider:
    bindir: Path
    workdir: Path
    users: tuple[OidcUser, ...]
    client_id: str
    client_secret: str
    redirect_uris: tuple[str, ...]
    port: int = field(default_factory=free_port)
    proc: ManagedProcess | None = None
    tls: TlsFiles | None = None

    @property
    def issuer(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        assert self.tls is not None
        return self.tls.ca_cert

    def start(self, timeout: float = 30) -> OidcProvider:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tls = write_loopback_tls(self.workdir / "tls", "compozy-oidc")
        users = self.workdir / "users.json"
        users.write_text(json.dumps({u.id: u.json() for u in self.users}))
        self.proc = ManagedProcess("oidc", [
            which(self.bindir, "oidc"), f"-listen=127.0.0.1:{self.port}", f"-issuer={self.issuer}",
            f"-cert={self.tls.cert}", f"-key={self.tls.key}", f"-users={users}", f"-client-id={self.client_id}",
            f"-client-secret={self.client_secret}", f"-redirect-uris={','.join(self.redirect_uris)}",
        ], self.workdir / "oidc.log").start()
        context = ssl.create_default_context(cafile=str(self.tls.ca_cert))

        def discovered() -> bool:
            url = f"{self.issuer}/.well-known/openid-configuration"
            with urllib.request.urlopen(url, context=context, timeout=2) as resp:  # noqa: S310 - loopback
                return bool(json.load(resp).get("issuer") == self.issuer)

        self.proc.wait_until(discovered, timeout, "serving its discovery document")
        return self

    def apiserver_flags(self) -> list[str]:
        """kube-apiserver flags that make it accept this provider's ID tokens for its client."""
        return [f"--oidc-issuer-url={self.issuer}", f"--oidc-client-id={self.client_id}",
                f"--oidc-ca-file={self.ca_file}", "--oidc-username-claim=sub",
                f"--oidc-username-prefix={USERNAME_PREFIX}"]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(5)
