"""A task attempt's NATS permissions (nats_auth.permissions, events.attempt_permissions) against a
table of what it may and may not do, with subjects built as the runner and the operator build them."""

from __future__ import annotations

import pytest

from compozy_operator.events import (EventType, Publisher, cancel_subject, claim_subject, command_subject,
                                     inbox_prefix, log_subject, make_event, output_chunk_token, output_key,
                                     output_meta_subject, state_subject)
from compozy_operator.nats_auth.permissions import allows, attempt_permissions, bounded, matches

NS, EXEC, UID, TASK, ATTEMPT = "team-a", "run-1", "uid-1", "fetch", 2
P = attempt_permissions(NS, EXEC, UID, TASK, ATTEMPT)
RUNNER_EVENTS = [EventType.TASK_STARTED, EventType.TASK_SUCCESS, EventType.TASK_FAILED, EventType.AGENT_STARTED,
                 EventType.AGENT_SUCCESS, EventType.AGENT_FAILED, EventType.TOOL_STARTED, EventType.TOOL_SUCCESS,
                 EventType.TOOL_FAILED]


def _event(etype: EventType, ns: str = NS, execution: str = EXEC, task: str | None = TASK, attempt: int = ATTEMPT,
           publisher: Publisher | None = Publisher.ATTEMPT) -> str:
    """The subject ``etype`` goes to: as the runner publishes it, or (``publisher``) another's."""
    return make_event(etype, "x", ns, execution, UID, task, attempt, publisher=publisher).subject


def _log(component: str, ns: str = NS, execution: str = EXEC, task: str = TASK, attempt: int = ATTEMPT) -> str:
    return log_subject(ns, execution, UID, component, task, attempt)


def direct_get_subject(stream: str, subject: str) -> str:
    return f"$JS.API.DIRECT.GET.{stream}.{subject}"


CMD = command_subject(NS, EXEC, TASK, ATTEMPT)
CLAIM = claim_subject(NS, EXEC, UID, TASK, ATTEMPT)
KEY = output_key(NS, EXEC, UID, TASK, ATTEMPT)
OUT_CHUNK = f"$O.COMPOZY_OUTPUTS.C.{output_chunk_token(KEY)}.c0ffee"
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
    ("TaskDispatched (operator's)", "pub", _event(EventType.TASK_DISPATCHED, publisher=None), False),
    ("TaskRetryScheduled (operator's)", "pub", _event(EventType.TASK_RETRY_SCHEDULED, publisher=None), False),
    ("its TaskExecutionSuccess as the operator", "pub", _event(EventType.TASK_SUCCESS, publisher=Publisher.OPERATOR),
     False),
    # NATS lets it say anything on its own subjects; the state manager refuses a type it may not send
    ("an operator type on its own subject", "pub",
     _event(EventType.TASK_STARTED).rsplit(".", 1)[0] + ".WorkflowExecutionSuccess", True),
    ("another task's TaskExecutionSuccess", "pub", _event(EventType.TASK_SUCCESS, task="other"), False),
    ("another attempt's TaskExecutionSuccess", "pub", _event(EventType.TASK_SUCCESS, attempt=ATTEMPT + 1), False),
    ("another execution's TaskExecutionSuccess", "pub", _event(EventType.TASK_SUCCESS, execution="run-2"), False),
    ("a victim's TaskExecutionSuccess", "pub", _event(EventType.TASK_SUCCESS, ns="victim"), False),
    ("a victim's log", "pub", _log("runtime", ns="victim"), False),
    ("an operator log of its execution", "pub", log_subject(NS, EXEC, UID, "orchestrator"), False),
    ("a log of an earlier run of the same name", "pub", log_subject(NS, EXEC, "old-uid", "runtime", TASK, ATTEMPT),
     False),
    ("another task's command", "pub", direct_get_subject("COMPOZY_COMMANDS", command_subject(NS, EXEC, "other", 1)),
     False),
    ("another attempt's command", "pub",
     direct_get_subject("COMPOZY_COMMANDS", command_subject(NS, EXEC, TASK, ATTEMPT + 1)), False),
    ("another attempt's claim", "pub", claim_subject(NS, EXEC, UID, TASK, ATTEMPT + 1), False),
    ("a same-name run's claim", "pub", claim_subject(NS, EXEC, "another-uid", TASK, ATTEMPT), False),
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
    assert len(P.publish) == 7 and len(P.subscribe) == 2
    wildcards = [x for x in (*P.publish, *P.subscribe) if x.endswith((".*", ".>"))]
    assert len(wildcards) == 4  # state, log, chunks, replies: each under a prefix of this attempt alone


def test_exact_lists() -> None:
    p = attempt_permissions("team-a", "run.1", "uid-1", "each-url[3]", 2)
    assert p.publish == (
        "compozy.state.team-a.run_1.task.each-url_5b3_5d.2.*",
        "compozy.log.team-a.run_1.uid-1.task.each-url_5b3_5d.2.*",
        "compozy.cmd.team-a.run_1.task.claim.uid-1.each-url_5b3_5d.2",
        "$JS.API.DIRECT.GET.COMPOZY_COMMANDS.compozy.cmd.team-a.run_1.task.execute.each-url_5b3_5d.2",
        "$JS.API.DIRECT.GET.COMPOZY_COMMANDS.compozy.cmd.team-a.run_1.task.claim.uid-1.each-url_5b3_5d.2",
        f"$O.COMPOZY_OUTPUTS.C.{output_chunk_token('team-a/run.1/uid-1/each-url[3]/2')}.*",
        "$O.COMPOZY_OUTPUTS.M.dGVhbS1hL3J1bi4xL3VpZC0xL2VhY2gtdXJsWzNdLzI=",
    )
    assert p.subscribe == ("compozy.cmd.team-a.run_1.workflow.cancel", "_INBOX_compozy.team-a.run_1.each-url_5b3_5d.2.>")


@pytest.mark.parametrize("task", ["a b", ">", "*", "a.>", "x\ty", "ä", "a.b"])
def test_names_never_widen_a_grant(task: str) -> None:
    """Whatever a task key holds, every grant is literal but for its last token."""
    p = attempt_permissions(NS, EXEC, UID, task, 1)
    for subject in (*p.publish, *p.subscribe):
        assert bounded(subject) == subject


@pytest.mark.parametrize("subject", ["compozy.>", "a.*.b", "a..b", "a. b.c", ">", "*"])
def test_unbounded_grants_are_refused(subject: str) -> None:
    with pytest.raises(ValueError):
        bounded(subject)


@pytest.mark.parametrize("bad", [("", EXEC, UID, TASK, 1), (NS, EXEC, UID, TASK, 0), (NS, EXEC, "", TASK, 1),
                                 (NS, EXEC, UID, TASK, True)])
def test_incomplete_attempts_are_refused(bad: tuple) -> None:
    with pytest.raises(ValueError):
        attempt_permissions(*bad)


@pytest.mark.parametrize(("pattern", "subject", "granted"), [
    ("a.b", "a.b", True), ("a.*", "a.b", True), ("a.*", "a.b.c", False), ("a.>", "a.b.c", True), ("a.>", "a", False),
    ("a.b.>", "a.>", False), ("a.*", "a.*", True), ("a.b", "a.*", False), ("a.*.c", "a.>", False),
    ("a.>", "a.*", True), ("a.*", "b.c", False),
])
def test_subject_matching(pattern: str, subject: str, granted: bool) -> None:
    assert allows([pattern], subject) is granted
    assert matches(pattern, subject) is granted
