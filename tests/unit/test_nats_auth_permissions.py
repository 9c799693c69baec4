"""A task attempt's NATS permissions (nats_auth.permissions) against a table of what it may and may
not do. Subjects come from events.py's functions (as the runner and the operator build them), so
the table holds whichever subject layout events.py has."""

from __future__ import annotations

import inspect

import pytest

from compozy_operator import events
from compozy_operator.events import (EventType, cancel_subject, command_subject, log_subject, make_event, output_key,
                                     state_subject)
from compozy_operator.nats_auth.permissions import (RUNNER_EVENTS, allows, attempt_permissions, claim_subject,
                                                    direct_get_subject, inbox_prefix, matches, output_chunks_pattern,
                                                    output_meta_subject)

NS, EXEC, UID, TASK, ATTEMPT = "team-a", "run-1", "uid-1", "fetch", 2
P = attempt_permissions(NS, EXEC, UID, TASK, ATTEMPT)
SCOPED = "publisher" in inspect.signature(make_event).parameters  # events.py with per-attempt subjects


def _event(etype: EventType, ns: str = NS, execution: str = EXEC, task: str | None = TASK, attempt: int = ATTEMPT,
           operator: bool = False) -> str:
    """The subject ``etype`` is published on: by the attempt as the runner does, or by the operator."""
    kw = {}
    if SCOPED:
        kw["publisher"] = events.Publisher.OPERATOR if operator else events.Publisher.ATTEMPT
    return make_event(etype, "x", ns, execution, UID, task, attempt, **kw).subject


def _log(component: str, ns: str = NS, execution: str = EXEC, task: str = TASK, attempt: int = ATTEMPT) -> str:
    if "task" in inspect.signature(log_subject).parameters:
        return log_subject(ns, execution, component, task, attempt)
    return log_subject(ns, execution, component)


def _operator_event(etype: EventType) -> str:
    return make_event(etype, "x", NS, EXEC, UID, TASK, ATTEMPT).subject


CMD = command_subject(NS, EXEC, TASK, ATTEMPT)
CLAIM = claim_subject(NS, EXEC, TASK, ATTEMPT)
KEY = output_key(NS, EXEC, UID, TASK, ATTEMPT)
OUT_CHUNK = output_chunks_pattern(KEY).replace("*", "c0ffee")
INBOX = inbox_prefix(NS, EXEC, TASK, ATTEMPT)

# (what, publish or subscribe, subject, allowed)
TABLE = [
    # what the runner does
    *[(f"its {t.value}", "pub", _event(t), True) for t in RUNNER_EVENTS],
    ("its task-executor log", "pub", _log("task-executor"), True),
    ("its runtime log", "pub", _log("runtime"), True),
    ("its claim", "pub", CLAIM, True),
    ("direct get of its command", "pub", direct_get_subject("COMPOZY_COMMANDS", CMD), True),
    ("direct get of its claim", "pub", direct_get_subject("COMPOZY_COMMANDS", CLAIM), True),
    ("its output's meta", "pub", output_meta_subject(KEY), True),
    ("its output's chunks", "pub", OUT_CHUNK, True),
    ("its execution's cancel", "sub", cancel_subject(NS, EXEC), True),
    ("its replies", "sub", f"{INBOX}.>", True),
    ("one reply", "sub", f"{INBOX}.abc.1", True),
    # its own execution, but not its part
    ("its own command (forging it)", "pub", CMD, False),
    ("cancel its execution", "pub", cancel_subject(NS, EXEC), False),
    ("WorkflowExecutionSuccess", "pub", _event(EventType.WORKFLOW_SUCCESS, task=None), False),
    ("WorkflowExecutionFailed", "pub", _event(EventType.WORKFLOW_FAILED, task=None), False),
    ("TaskDispatched (operator's)", "pub", _operator_event(EventType.TASK_DISPATCHED), False),
    ("TaskRetryScheduled (operator's)", "pub", _operator_event(EventType.TASK_RETRY_SCHEDULED), False),
    ("another task's command", "pub", direct_get_subject("COMPOZY_COMMANDS", command_subject(NS, EXEC, "other", 1)),
     False),
    ("another attempt's command", "pub",
     direct_get_subject("COMPOZY_COMMANDS", command_subject(NS, EXEC, TASK, ATTEMPT + 1)), False),
    ("another attempt's claim", "pub", claim_subject(NS, EXEC, TASK, ATTEMPT + 1), False),
    ("another attempt's output", "pub", output_meta_subject(output_key(NS, EXEC, UID, TASK, ATTEMPT + 1)), False),
    ("read its execution's state", "sub", state_subject(NS, EXEC, None), False),
    ("read its own command", "sub", CMD, False),
    # other executions and tenants
    ("another execution's command", "pub",
     direct_get_subject("COMPOZY_COMMANDS", command_subject(NS, "run-2", TASK, ATTEMPT)), False),
    ("another tenant's command", "pub",
     direct_get_subject("COMPOZY_COMMANDS", command_subject("victim", EXEC, TASK, ATTEMPT)), False),
    ("another tenant's cancel", "pub", cancel_subject("victim", EXEC), False),
    ("another tenant's cancel (receive)", "sub", cancel_subject("victim", EXEC), False),
    ("another output", "pub", output_meta_subject(output_key("victim", EXEC, UID, TASK, ATTEMPT)), False),
    ("everything", "sub", ">", False),
    ("every compozy subject", "sub", "compozy.>", False),
    ("every state event", "sub", "compozy.state.>", False),
    ("a victim's logs", "sub", "compozy.log.victim.>", False),
    ("every reply", "sub", "_INBOX.>", False),
    ("every attempt's replies", "sub", "_INBOX_compozy.>", False),
    ("every output", "sub", "$O.>", False),
    ("JetStream advisories", "sub", "$JS.EVENT.>", False),
    # the JetStream API beyond its direct gets
    ("delete a stream", "pub", "$JS.API.STREAM.DELETE.COMPOZY_STATE", False),
    ("delete the state consumer", "pub", "$JS.API.CONSUMER.DELETE.COMPOZY_STATE.compozy-state-manager", False),
    ("purge a stream", "pub", "$JS.API.STREAM.PURGE.OBJ_COMPOZY_OUTPUTS", False),
    ("read any message (filter in the body)", "pub", "$JS.API.STREAM.MSG.GET.COMPOZY_COMMANDS", False),
    ("direct get with the filter in the body", "pub", "$JS.API.DIRECT.GET.COMPOZY_COMMANDS", False),
    ("direct get with a wildcard", "pub", "$JS.API.DIRECT.GET.COMPOZY_COMMANDS.compozy.cmd.>", False),
    ("list streams", "pub", "$JS.API.STREAM.LIST", False),
    ("stream info (object names)", "pub", "$JS.API.STREAM.INFO.OBJ_COMPOZY_OUTPUTS", False),
    ("create a consumer", "pub", "$JS.API.CONSUMER.CREATE.COMPOZY_STATE", False),
    ("account info", "pub", "$JS.API.INFO", False),
    ("the trigger API", "pub", f"compozy.api.{NS}.workflow.trigger", False),
    ("the auth callout", "pub", "$SYS.REQ.USER.AUTH", False),
]


@pytest.mark.parametrize(("what", "op", "subject", "allowed"), TABLE, ids=[row[0] for row in TABLE])
def test_permission_table(what: str, op: str, subject: str, allowed: bool) -> None:
    granted = P.may_publish(subject) if op == "pub" else P.may_subscribe(subject)
    assert granted is allowed, f"{what}: {op} {subject}"


def test_nothing_else_is_granted() -> None:
    assert len(P.publish) == len(RUNNER_EVENTS) + 2 + 1 + 2 + 2  # events, logs, claim, 2 direct gets, output
    assert len(P.subscribe) == 2
    wildcards = [s for s in (*P.publish, *P.subscribe) if "*" in s.split(".") or ">" in s.split(".")]
    assert wildcards == [output_chunks_pattern(KEY), f"{INBOX}.>"]


@pytest.mark.skipif(not SCOPED, reason="events.py without per-attempt subjects")
def test_exact_lists_with_per_attempt_subjects() -> None:
    p = attempt_permissions("team-a", "run.1", "uid-1", "each-url[3]", 2)
    base = "compozy.state.team-a.run_1.task.each-url_5b3_5d.2"
    assert p.publish == (
        *(f"{base}.{t.value}" for t in RUNNER_EVENTS),
        "compozy.log.team-a.run_1.task.each-url_5b3_5d.2.task-executor",
        "compozy.log.team-a.run_1.task.each-url_5b3_5d.2.runtime",
        "compozy.cmd.team-a.run_1.task.claim.each-url_5b3_5d.2",
        "$JS.API.DIRECT.GET.COMPOZY_COMMANDS.compozy.cmd.team-a.run_1.task.execute.each-url_5b3_5d.2",
        "$JS.API.DIRECT.GET.COMPOZY_COMMANDS.compozy.cmd.team-a.run_1.task.claim.each-url_5b3_5d.2",
        "$O.COMPOZY_OUTPUTS.M.dGVhbS1hL3J1bi4xL3VpZC0xL2VhY2gtdXJsWzNdLzI=",
        f"$O.COMPOZY_OUTPUTS.C.{events.output_chunk_token('team-a/run.1/uid-1/each-url[3]/2')}.*",
    )
    assert p.subscribe == ("compozy.cmd.team-a.run_1.workflow.cancel", "_INBOX_compozy.team-a.run_1.each-url_5b3_5d.2.>")


@pytest.mark.skipif(SCOPED, reason="events.py with per-attempt subjects")
def test_exact_lists_with_per_execution_subjects() -> None:
    p = attempt_permissions("team-a", "run.1", "uid-1", "each-url[3]", 2)
    assert p.publish == (
        *(f"compozy.state.team-a.run_1.{t.entity}.{t.value}" for t in RUNNER_EVENTS),
        "compozy.log.team-a.run_1.task-executor",
        "compozy.log.team-a.run_1.runtime",
        "compozy.cmd.team-a.run_1.task.claim.each-url[3].2",
        "$JS.API.DIRECT.GET.COMPOZY_COMMANDS.compozy.cmd.team-a.run_1.task.execute.each-url[3].2",
        "$JS.API.DIRECT.GET.COMPOZY_COMMANDS.compozy.cmd.team-a.run_1.task.claim.each-url[3].2",
        "$O.COMPOZY_OUTPUTS.M.dGVhbS1hL3J1bi4xL3VpZC0xL2VhY2gtdXJsWzNdLzI=",
        "$O.COMPOZY_OUTPUTS.C.*",
    )
    assert p.subscribe == ("compozy.cmd.team-a.run_1.workflow.cancel", "_INBOX_compozy.team-a.run_1.each-url[3].2.>")


@pytest.mark.parametrize("task", ["a b", ">", "*", "a.>", "x\ty", "", "ä"])
def test_names_never_widen_a_grant(task: str) -> None:
    """A task key is never a wildcard or a blank in a grant: refused, or encoded as a literal."""
    try:
        p = attempt_permissions(NS, EXEC, UID, task, 1)
    except ValueError:
        return
    for subject in (*p.publish[:-1], *p.subscribe[:-1]):
        assert all(t and t not in ("*", ">") and not any(c.isspace() for c in t) for t in subject.split(".")), subject


@pytest.mark.parametrize("bad", [("", EXEC, UID, TASK, 1), (NS, EXEC, UID, TASK, 0), (NS, EXEC, "", TASK, 1),
                                 (NS, EXEC, UID, TASK, True)])
def test_incomplete_attempts_are_refused(bad: tuple) -> None:
    with pytest.raises(ValueError):
        attempt_permissions(*bad)


@pytest.mark.parametrize(("pattern", "subject", "match", "covers"), [
    ("a.b", "a.b", True, True), ("a.*", "a.b", True, True), ("a.*", "a.b.c", False, False),
    ("a.>", "a.b.c", True, True), ("a.>", "a", False, False), ("a.b.>", "a.>", False, False),
    ("a.*", "a.*", True, True), ("a.b", "a.*", False, False), ("a.*.c", "a.>", False, False),
])
def test_subject_matching(pattern: str, subject: str, match: bool, covers: bool) -> None:
    assert allows([pattern], subject) is covers
    if ">" not in subject and "*" not in subject:
        assert matches(pattern, subject) is match
