"""What one task attempt may do on NATS: its publish and subscribe allow lists (pure).

The list itself is events.attempt_permissions (events.py owns every subject, and the runner's
test under exactly these permissions lives with it: tests/testenv/test_task_runner_nats.py); this
module gives it to the callout as :class:`Permissions`, refuses any grant a name could widen, and
matches subjects as nats-server does (for the table tests and for explaining refusals).

ARCHITECTURE.md §10, and which grant serves it:

=================  =====================================================================================
fetch its command  pub ``$JS.API.DIRECT.GET.COMPOZY_COMMANDS.<its command subject>``: a direct get names
                   the subject it reads in the API subject. ``STREAM.MSG.GET`` carries its filter in the
                   body, where no permission sees it: never granted.
claim its attempt  pub ``<its claim subject>`` (a JetStream publish with
                   ``Nats-Expected-Last-Subject-Sequence: 0``) and a direct get of it (who holds it)
state events       pub ``compozy.state.<ns>.<exec>.task.<task>.<attempt>.*`` (the state manager refuses
                   a type the attempt may not send there)
log events         pub ``compozy.log.<ns>.<exec>.<uid>.task.<task>.<attempt>.*``
cancel             sub ``compozy.cmd.<ns>.<exec>.workflow.cancel``
its output         pub ``$O.COMPOZY_OUTPUTS.C.<hash of its key>.*`` (chunks) and
                   ``$O.COMPOZY_OUTPUTS.M.<base64url(its key)>`` (meta). No ``STREAM.INFO``, reads or
                   purge: nats-py's ``ObjectStore.put`` needs all three (a purge names its subject in the
                   body), so bus.put_output writes objects with plain JetStream publishes.
replies            sub ``<its inbox prefix>.>`` (nats-py ``connect(inbox_prefix=...)``): ``_INBOX.>``
                   would show it every reply in the account, other pods' commands among them.
=================  =====================================================================================

Not granted: reading outputs (only the operator reads them), any other JetStream API, any
other attempt's, execution's or namespace's subject.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .. import events


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]

    def may_publish(self, subject: str) -> bool:
        return allows(self.publish, subject)

    def may_subscribe(self, subject: str) -> bool:
        return allows(self.subscribe, subject)


def attempt_permissions(namespace: str, execution: str, uid: str, task: str, attempt: int) -> Permissions:
    """The allow lists of one task attempt (the server refuses everything else)."""
    if not all(isinstance(v, str) and v for v in (namespace, execution, uid, task)) \
            or isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError("an attempt needs a namespace, execution, uid, task and an attempt >= 1")
    lists = events.attempt_permissions(namespace, execution, uid, task, attempt)
    return Permissions(tuple(map(bounded, lists["publish"])), tuple(map(bounded, lists["subscribe"])))


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_DNS_NAME = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def runner_permissions(namespace: str, pool: str, pod: str) -> Permissions:
    """The allow lists of a pool runner's own connection (events.runner_permissions): its pool's
    consumer, its namespace's cancels and stops, its replies. Refused for names that are not
    Kubernetes names (a ``*``, ``>`` or ``.`` would reach beyond its namespace or pool)."""
    if not (isinstance(namespace, str) and _DNS_LABEL.fullmatch(namespace) and isinstance(pool, str)
            and _DNS_LABEL.fullmatch(pool) and isinstance(pod, str) and _DNS_NAME.fullmatch(pod)):
        raise ValueError("a runner needs a namespace and a pool (DNS labels) and a pod name")
    lists = events.runner_permissions(namespace, pool, pod)
    return Permissions(tuple(lists["publish"]), tuple(lists["subscribe"]))


STATE_INBOX = "_INBOX_STATE"  # the state manager's reply subjects (its connection's inbox prefix)


def state_manager_permissions() -> Permissions:
    """The state manager's NATS user: read the state stream through its one durable consumer, and
    nothing else. It cannot publish an event or a command, read commands or outputs, or delete or
    purge a stream: a bug in it can lose nothing and forge nothing (it folds what it reads into the
    status through the API server, its only output)."""
    stream = events.STATE_STREAM
    consumer = f"{stream}.{events.STATE_CONSUMER}"
    return Permissions(
        publish=(f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.CONSUMER.INFO.{consumer}",
                 f"$JS.API.CONSUMER.CREATE.{consumer}", f"$JS.API.CONSUMER.CREATE.{consumer}.>",
                 f"$JS.API.CONSUMER.DURABLE.CREATE.{consumer}", f"$JS.API.CONSUMER.MSG.NEXT.{consumer}",
                 f"$JS.ACK.{consumer}.>"),
        subscribe=(f"{STATE_INBOX}.>",))


API_INBOX = "_INBOX_API"  # api.Service's reply and delivery subjects


def api_service_permissions() -> Permissions:
    """api.Service's NATS user: read the state and log streams through ephemeral (ordered) consumers,
    answer the NATS trigger (replies only: ``allow_responses``), and write its own request lines.
    No named or durable consumer (it cannot change or read the state manager's), no delete (its
    consumers go away when idle), no event, command or output: it changes runs only through the API
    server, under each caller's RBAC."""
    publish: list[str] = [f"$JS.API.CONSUMER.CREATE.{stream}" for stream in (events.STATE_STREAM, events.LOG_STREAM)]
    for stream in (events.STATE_STREAM, events.LOG_STREAM):
        publish += [f"$JS.API.CONSUMER.INFO.{stream}.*", f"$JS.FC.{stream}.>"]
    return Permissions(publish=(*publish, "compozy.log.*.*.*.api"),
                       subscribe=(events.API_TRIGGER_SUBJECTS, f"{API_INBOX}.>"))


def bounded(subject: str) -> str:
    """``subject``, refused unless every token but a final ``*`` or ``>`` is literal: a wildcard or a
    blank that came from a name would widen the grant beyond its attempt."""
    tokens = subject.split(".")
    if tokens[-1] in ("*", ">"):
        tokens = tokens[:-1]
    if len(tokens) < 2 or any(not t or t in ("*", ">") or any(c.isspace() for c in t) for t in tokens):
        raise ValueError(f"not a bounded NATS subject: {subject!r}")
    return subject


def matches(pattern: str, subject: str) -> bool:
    """Whether NATS delivers a message on the literal ``subject`` to a subscription on ``pattern``."""
    return _covers(pattern, subject)


def allows(patterns: Iterable[str], subject: str) -> bool:
    """Whether an allow list grants ``subject``. A wildcard subject (a subscription) is granted only by
    a pattern covering all it could match, as nats-server checks it (``compozy.>`` is not granted by
    ``compozy.state.a.>``)."""
    return any(_covers(p, subject) for p in patterns)


def _covers(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or s[i] == ">" or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)
