"""The secrets of a callout-mode NATS server, and the Secret that keeps them in a cluster.

A callout-mode server (docs/security.md) has two configured users that skip the callout, the
operator (application account, JetStream) and the callout service (auth account: may only answer
``$SYS.REQ.USER.AUTH``), and an account nkey whose public key is ``auth_callout.issuer`` and whose
seed signs the callout's answers. :class:`CalloutKeys` holds all three secrets.

A Helm template cannot make an nkey (base32 with a CRC16), so the operator makes them: at its first
start it creates the Secret (:func:`load_or_create`; a second replica racing it reads the winner's)
and the bundled NATS takes them from that Secret through its environment (it waits for the Secret
to exist). With an external NATS, the user creates the Secret (``compozy nats-keys`` prints one) and
puts the same values in their server's configuration.
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import nkeys

from ..kube import ApiException, Kube
from .jwt import new_seed, public_key
from .permissions import Permissions, api_service_permissions, state_manager_permissions

AUTH_SUBJECT = "$SYS.REQ.USER.AUTH"  # where the server asks the callout
KICK_SUBJECT = "$SYS.REQ.SERVER.*.KICK"  # where a server takes {"cid": N} and closes that connection
ACCOUNT = "COMPOZY"  # the application's account: the operator, JetStream, and every granted attempt
CALLOUT_ACCOUNT = "AUTH"  # the callout service's own (no data, no JetStream)
OPERATOR_USER = "compozy-operator"  # the orchestrator: commands, its events, outputs, stream administration
STATE_USER = "compozy-state"  # the state manager: reads the state stream through its consumer, nothing else
API_USER = "compozy-api"  # api.Service: reads state and log streams, answers the NATS trigger
CALLOUT_USER = "compozy-callout"
SYSTEM_USER = "compozy-system"  # the system account's: may only ask a server to close a connection (KICK)
KICK_INBOX = "_INBOX_KICK"
# the Secret's keys (also the chart's: templates/nats.yaml reads them into the server's environment)
ISSUER_SEED_KEY = "issuer-seed"
ISSUER_KEY = "issuer"
OPERATOR_PASSWORD_KEY = "operator-password"
STATE_PASSWORD_KEY = "state-password"
API_PASSWORD_KEY = "api-password"
CALLOUT_PASSWORD_KEY = "callout-password"
SYSTEM_PASSWORD_KEY = "system-password"
# the server's environment variable for each Secret key (nats.conf refers to them: server_conf)
SERVER_ENV = {"OPERATOR_PASSWORD": OPERATOR_PASSWORD_KEY, "STATE_PASSWORD": STATE_PASSWORD_KEY,
              "API_PASSWORD": API_PASSWORD_KEY,
              "CALLOUT_PASSWORD": CALLOUT_PASSWORD_KEY, "SYSTEM_PASSWORD": SYSTEM_PASSWORD_KEY,
              "CALLOUT_ISSUER": ISSUER_KEY}


def _password() -> str:
    # a letter first and hex after: nats.conf reads it from the environment as a plain string
    # (a value that looks like a number, or starts with '-', would be read as one)
    return "p" + secrets.token_hex(20)


def _account_seed() -> str:
    return new_seed(nkeys.PREFIX_BYTE_ACCOUNT)


@dataclass(frozen=True)
class CalloutKeys:
    issuer_seed: str = field(default_factory=_account_seed)
    operator_password: str = field(default_factory=_password)
    state_password: str = field(default_factory=_password)
    callout_password: str = field(default_factory=_password)
    system_password: str = field(default_factory=_password)
    api_password: str = field(default_factory=_password)

    @property
    def issuer(self) -> str:
        """The public account nkey (``A...``) the server's ``auth_callout.issuer`` names."""
        return public_key(self.issuer_seed)

    def secret_data(self) -> dict[str, str]:
        return {ISSUER_SEED_KEY: self.issuer_seed, ISSUER_KEY: self.issuer, OPERATOR_PASSWORD_KEY: self.operator_password,
                STATE_PASSWORD_KEY: self.state_password, CALLOUT_PASSWORD_KEY: self.callout_password,
                SYSTEM_PASSWORD_KEY: self.system_password, API_PASSWORD_KEY: self.api_password}

    def server_env(self) -> dict[str, str]:
        """The environment a server running :func:`server_conf` needs."""
        data = self.secret_data()
        return {env: data[key] for env, key in SERVER_ENV.items()}

    @classmethod
    def from_secret_data(cls, data: dict[str, str], where: str = "the Secret") -> CalloutKeys:
        """The keys from a Secret's decoded data; a missing or broken key is named."""
        missing = [k for k in (ISSUER_SEED_KEY, OPERATOR_PASSWORD_KEY, STATE_PASSWORD_KEY, CALLOUT_PASSWORD_KEY,
                               SYSTEM_PASSWORD_KEY, API_PASSWORD_KEY) if not data.get(k)]
        if missing:
            raise ValueError(f"{where} lacks {', '.join(missing)}")
        keys = cls(data[ISSUER_SEED_KEY].strip(), data[OPERATOR_PASSWORD_KEY].strip(),
                   data[STATE_PASSWORD_KEY].strip(), data[CALLOUT_PASSWORD_KEY].strip(),
                   data[SYSTEM_PASSWORD_KEY].strip(), data[API_PASSWORD_KEY].strip())
        try:
            issuer = keys.issuer
        except Exception as e:  # noqa: BLE001 - nkeys raises several kinds for a bad seed
            raise ValueError(f"{where}: {ISSUER_SEED_KEY} is not an account nkey seed ({type(e).__name__})") from None
        if not keys.issuer_seed.startswith("SA"):
            raise ValueError(f"{where}: {ISSUER_SEED_KEY} is not an account nkey seed (it must start with SA)")
        if data.get(ISSUER_KEY) and data[ISSUER_KEY].strip() != issuer:
            raise ValueError(f"{where}: {ISSUER_KEY} is not the public key of {ISSUER_SEED_KEY}")
        return keys


def server_conf(values: dict[str, str] | None = None) -> str:
    """The accounts, system account and authorization blocks of a callout-mode nats.conf.

    The secrets are ``$VARIABLES`` of the server's environment (:data:`SERVER_ENV`,
    :meth:`CalloutKeys.server_env`), or with ``values`` (same names) written in. The chart ships
    this text (``files/nats-callout.conf``, a test keeps it current) and the local cluster runs it:
    one configuration, tested with the real server."""
    def secret(name: str) -> str:
        return json.dumps(values[name]) if values is not None else f"${name}"

    def perms(p: Permissions, responses: bool = False) -> str:
        extra = ", allow_responses: true" if responses else ""
        return (f"{{publish: {{allow: {json.dumps(list(p.publish))}}}, "
                f"subscribe: {{allow: {json.dumps(list(p.subscribe))}}}{extra}}}")

    state_perms, api_perms = perms(state_manager_permissions()), perms(api_service_permissions(), responses=True)
    # the callout service: receives the server's requests and answers them (replies only)
    callout_perms = f'{{publish: {{deny: [">"]}}, subscribe: {{allow: ["{AUTH_SUBJECT}"]}}, allow_responses: true}}'
    # the operator's system user: close a task pod's connections when the pod ends (callout.py)
    system_perms = f'{{publish: {{allow: ["{KICK_SUBJECT}"]}}, subscribe: {{allow: ["{KICK_INBOX}.>"]}}}}'
    return f"""accounts {{
  SYS: {{
    users: [
      {{user: {SYSTEM_USER}, password: {secret("SYSTEM_PASSWORD")},
       permissions: {system_perms}}}
    ]
  }}
  {ACCOUNT}: {{
    jetstream: enabled
    users: [
      {{user: {OPERATOR_USER}, password: {secret("OPERATOR_PASSWORD")}}}
      {{user: {STATE_USER}, password: {secret("STATE_PASSWORD")},
       permissions: {state_perms}}}
      {{user: {API_USER}, password: {secret("API_PASSWORD")},
       permissions: {api_perms}}}
    ]
  }}
  {CALLOUT_ACCOUNT}: {{
    users: [
      {{user: {CALLOUT_USER}, password: {secret("CALLOUT_PASSWORD")},
       permissions: {callout_perms}}}
    ]
  }}
}}
system_account: SYS
authorization {{
  auth_callout {{
    issuer: {secret("CALLOUT_ISSUER")}
    account: {CALLOUT_ACCOUNT}
    auth_users: [{OPERATOR_USER}, {STATE_USER}, {API_USER}, {CALLOUT_USER}, {SYSTEM_USER}]
  }}
}}
"""


def secret_manifest(keys: CalloutKeys, name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {"app.kubernetes.io/managed-by": "compozy-operator",
                                    "app.kubernetes.io/component": "nats-auth"}},
            "stringData": keys.secret_data()}


def load_or_create(kube: Kube, namespace: str, name: str, create: bool = True) -> CalloutKeys:
    """The keys in Secret ``namespace/name``; when it does not exist (and ``create``), new keys
    written there first. Two operators starting at once: the one whose create loses reads the other's."""
    path = f"/api/v1/namespaces/{namespace}/secrets"
    where = f"Secret {namespace}/{name}"
    try:
        return CalloutKeys.from_secret_data(_decoded(kube.get(f"{path}/{name}")), where)
    except ApiException as e:
        if e.status != 404 or not create:
            raise
    keys = CalloutKeys()
    try:
        kube.create(path, secret_manifest(keys, name, namespace))
    except ApiException as e:
        if e.status != 409:
            raise
        return CalloutKeys.from_secret_data(_decoded(kube.get(f"{path}/{name}")), where)
    return keys


def _decoded(secret: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


def main(argv: list[str] | None = None) -> None:
    """New keys as a Secret manifest, and the nats.conf blocks with them written in, for an external
    NATS server (``--server-conf``: the blocks with ``$VARIABLES``, as the chart ships them)."""
    import argparse

    import yaml

    parser = argparse.ArgumentParser(prog="python -m compozy_operator.nats_auth.keys", description=main.__doc__)
    parser.add_argument("--name", default="compozy-operator-nats-callout", help="the Secret's name "
                        "(the chart's nats.auth.callout.secretName)")
    parser.add_argument("--namespace", default="compozy-system", help="the operator's namespace")
    parser.add_argument("--server-conf", action="store_true", help="print only the blocks with $VARIABLES")
    args = parser.parse_args(argv)
    if args.server_conf:
        print(f"# Generated by `python -m compozy_operator.nats_auth.keys --server-conf`. Do not edit.\n"
              f"{server_conf()}", end="")
        return
    keys = CalloutKeys()
    print("# 1. kubectl apply -f this Secret")
    print(yaml.safe_dump(secret_manifest(keys, args.name, args.namespace), sort_keys=False), end="")
    print("# 2. put these blocks in your nats.conf (they hold the same secrets: keep that file private)")
    print("\n".join(f"#   {line}" for line in server_conf(keys.server_env()).splitlines()))


if __name__ == "__main__":
    main()
