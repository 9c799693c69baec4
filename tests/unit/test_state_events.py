"""State events the state manager must survive: validation, rejection, fold fallback, back-off, supervision."""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from compozy_operator import state_manager
from compozy_operator.events import (EventType, InvalidEvent, Publisher, StateSubject, make_event, parse_state_event,
                                     parse_state_subject)
from compozy_operator.kube import ApiException
from compozy_operator.monitoring import REJECTED_EVENTS
from compozy_operator.operator_main import Supervised
from compozy_operator.state_manager import MAX_NAK_DELAY, Pipeline, StateManager, consumer_config, nak_delay

UID = "uid-1"


def event(etype: EventType = EventType.TASK_STARTED, task: str | None = "a", attempt: int | None = 1,
          namespace: str = "ns", execution: str = "run", **data: Any) -> dict[str, Any]:
    return make_event(etype, "test", namespace, execution, UID, task, attempt, **data).model_dump()


def encode(body: Any) -> bytes:
    return json.dumps(body).encode()


def with_data(**changes: Any) -> dict[str, Any]:
    body = event()
    body["data"].update(changes)
    return body


VALID = [
    event(EventType.WORKFLOW_STARTED, None, None, workflow="wf", taskCount=2),
    event(EventType.TASK_DISPATCHED, podName="run-a-1"),
    event(EventType.TASK_RETRY_SCHEDULED, attempt=2, notBefore="2026-01-01T00:00:05Z", delay=1.0),
    event(EventType.TASK_SUCCESS, output={"n": 1}, usage={"inputTokens": 3, "outputTokens": 4, "modelCalls": 1}),
    event(EventType.TASK_SUCCESS, outputRef={"bucket": "B", "key": "k", "size": 9, "digest": "SHA-256=x"}),
    event(EventType.TASK_FAILED, error={"reason": "RateLimited", "message": "429", "retryAfter": 2.5}),
    event(EventType.AGENT_SUCCESS, provider="openai", model="m", callSeconds=[0.1, 2]),
    event(EventType.WORKFLOW_FAILED, None, None, error={}),
    event(EventType.TASK_STARTED, execution="run.v2"),  # '.' in a name is '_' in its subject token
]


@pytest.mark.parametrize("body", VALID, ids=lambda b: b["type"])
def test_valid_events_pass(body: dict[str, Any]) -> None:
    assert parse_state_event(body["subject"], encode(body)).id == body["id"]


MALFORMED = {
    "garbage bytes": (b"\xff\x00garbage", "unparseable"),
    "not an object": (b"[1, 2]", "unparseable"),
    "no data": (encode({k: v for k, v in event().items() if k != "data"}), "unparseable"),
    "data not an object": (encode({**event(), "data": "x"}), "unparseable"),
    "empty data": (encode({**event(), "data": {}}), "invalid"),
    "no uid": (encode({**event(), "data": {"namespace": "ns", "execution": "run"}}), "invalid"),
    "namespace a number": (encode(with_data(namespace=7)), "invalid"),
    "execution empty": (encode(with_data(execution="")), "invalid"),
    "task a number": (encode(with_data(task=3)), "invalid"),
    "attempt not numeric": (encode(with_data(attempt="one")), "invalid"),
    "attempt zero": (encode(with_data(attempt=0)), "invalid"),
    "attempt a float": (encode(with_data(attempt=1.5)), "invalid"),
    "attempt a bool": (encode(with_data(attempt=True)), "invalid"),
    "time not a time": (encode({**event(), "time": "yesterday"}), "invalid"),
    "time without zone": (encode({**event(), "time": "2026-01-01T00:00:00"}), "invalid"),
    "time out of range": (encode({**event(), "time": "2026-13-01T00:00:00Z"}), "invalid"),
    "error a string": (encode(with_data(error="boom")), "invalid"),
    "error reason a number": (encode(with_data(error={"reason": 5})), "invalid"),
    "error retryAfter a string": (encode(with_data(error={"reason": "x", "retryAfter": "soon"})), "invalid"),
    "usage not a TokenUsage": (encode(with_data(usage={"inputTokens": "many"})), "invalid"),
    "usage with unknown field": (encode(with_data(usage={"tokens": 1})), "invalid"),
    "outputRef incomplete": (encode(with_data(outputRef={"bucket": "B"})), "invalid"),
    "podName a number": (encode(with_data(podName=5)), "invalid"),
    "notBefore a list": (encode(with_data(notBefore=[])), "invalid"),
    "taskCount negative": (encode(with_data(taskCount=-1)), "invalid"),
    "callSeconds strings": (encode(with_data(callSeconds=["slow"])), "invalid"),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_events_are_rejected_with_a_reason(name: str) -> None:
    body, reason = MALFORMED[name]
    with pytest.raises(InvalidEvent) as e:
        parse_state_event(event()["subject"], body)
    assert e.value.reason == reason
    assert "\n" not in e.value.problem and len(e.value.problem) < 300


OWN = "compozy.state.ns.run.task.a.1.TaskExecutionStarted"  # event()'s subject: attempt 1 of task a


def test_an_event_is_on_its_attempts_subject() -> None:
    assert event()["subject"] == OWN
    parsed = parse_state_subject(OWN)
    assert parsed == StateSubject("ns", "run", Publisher.ATTEMPT, "a", 1, "TaskExecutionStarted")


@pytest.mark.parametrize("subject", [
    "compozy.state.ns.other-run.task.a.1.TaskExecutionStarted",  # another execution
    "compozy.state.other-ns.run.task.a.1.TaskExecutionStarted",  # another namespace
    "compozy.state.ns.run.task.b.1.TaskExecutionStarted",  # another task
    "compozy.state.ns.run.task.a.2.TaskExecutionStarted",  # another attempt
    "compozy.state.ns.run.task.a.0.TaskExecutionStarted",  # no attempt
    "compozy.state.ns.run.task.a.01.TaskExecutionStarted",  # attempt 1 spelled otherwise
    "compozy.state.ns.run.task.a.1.TaskExecutionSuccess",  # another type than the body's
    "compozy.state.ns.run.operator.a.1.TaskExecutionStarted",  # the operator never says Started
    "compozy.state.ns.run.task.TaskExecutionStarted",  # the old, attempt-less subject
    "compozy.state.ns.run.workflow.TaskExecutionStarted",
    "compozy.state.ns.run.task.a.1.TaskExecutionStarted.x",
    "compozy.state.ns.run",
])
def test_a_subject_that_disagrees_with_the_body_is_rejected(subject: str) -> None:
    with pytest.raises(InvalidEvent) as e:
        parse_state_event(subject, encode(event()))
    assert e.value.reason == "subject_mismatch"
    assert "\n" not in e.value.problem and len(e.value.problem) < 300


@pytest.mark.parametrize("field,value", [
    ("namespace", "victim"), ("execution", "victim-run"), ("task", "b"), ("attempt", 2), ("attempt", None),
    ("task", None), ("task", "a.1"),
])
def test_a_body_that_disagrees_with_its_subject_in_any_field_is_rejected(field: str, value: Any) -> None:
    body = event()
    if value is None:
        del body["data"][field]
    else:
        body["data"][field] = value
    with pytest.raises(InvalidEvent) as e:
        parse_state_event(OWN, encode(body))
    assert e.value.reason == "subject_mismatch" and f"data.{field}" in e.value.problem


def test_a_body_whose_own_subject_or_type_disagrees_is_rejected() -> None:
    for changes in ({"subject": "compozy.state.ns.run.task.a.2.TaskExecutionStarted"},
                    {"type": "TaskExecutionSuccess"}):
        with pytest.raises(InvalidEvent) as e:
            parse_state_event(OWN, encode({**event(), **changes}))
        assert e.value.reason == "subject_mismatch"


@pytest.mark.parametrize("etype", [EventType.TASK_DISPATCHED, EventType.TASK_RETRY_SCHEDULED,
                                   EventType.TASK_POD_WAITING, EventType.WORKFLOW_SUCCESS, EventType.WORKFLOW_FAILED])
def test_an_attempt_cannot_publish_the_operators_events(etype: EventType) -> None:
    """On its own attempt's subject, an event only the operator may send is refused."""
    operators = event(etype, *((None, None) if etype.entity == "workflow" else ("a", 1)))
    with pytest.raises(InvalidEvent) as e:
        parse_state_event(f"compozy.state.ns.run.task.a.1.{etype.value}", encode(operators))
    assert e.value.reason == "subject_mismatch"
    assert parse_state_event(operators["subject"], encode(operators)).type == etype.value  # the operator's own


def test_the_operators_task_events_have_a_subject_of_their_own() -> None:
    """The orchestrator's TaskExecutionFailed (a timeout, a lost pod) or a composite's success go to
    ``...operator.<task>.<attempt>.<Type>``, which no attempt's identity allows; the same fact keeps
    the same id, so whichever is stored first is the one JetStream keeps."""
    ours = make_event(EventType.TASK_FAILED, "compozy/orchestrator", "ns", "run", UID, "each[3]", 2)
    theirs = make_event(EventType.TASK_FAILED, "compozy/task-executor", "ns", "run", UID, "each[3]", 2,
                        publisher=Publisher.ATTEMPT)
    assert ours.subject == "compozy.state.ns.run.operator.each_5b3_5d.2.TaskExecutionFailed"
    assert theirs.subject == "compozy.state.ns.run.task.each_5b3_5d.2.TaskExecutionFailed"
    assert ours.id == theirs.id
    for e in (ours, theirs):
        assert parse_state_event(e.subject, e.model_dump_json().encode()).task == "each[3]"
    with pytest.raises(ValueError):
        make_event(EventType.TASK_DISPATCHED, "x", "ns", "run", UID, "a", 1, publisher=Publisher.ATTEMPT)
    with pytest.raises(ValueError):
        make_event(EventType.TOOL_STARTED, "x", "ns", "run", UID, "a", 1, publisher=Publisher.OPERATOR)


@pytest.mark.parametrize("etype", ["TaskExploded", "LogEmitted"])
def test_a_type_that_is_no_state_event_is_rejected(etype: str) -> None:
    with pytest.raises(InvalidEvent, match=etype) as e:
        parse_state_event(f"compozy.state.ns.run.task.a.1.{etype}", encode({**event(), "type": etype}))
    assert e.value.reason == "invalid"


def test_nak_delay_grows_with_deliveries_and_is_capped() -> None:
    delays = [nak_delay(n) for n in range(1, 12)]
    assert delays[0] == 0.5 and delays == sorted(delays) and delays[-1] == MAX_NAK_DELAY
    assert nak_delay(10_000) == MAX_NAK_DELAY


def test_consumer_redelivers_within_ten_seconds() -> None:
    assert consumer_config().ack_wait <= 10
    resumed = consumer_config(42)
    assert (resumed.deliver_policy.value, resumed.opt_start_seq) == ("by_start_sequence", 42)


# The state manager against fakes of a JetStream message and the Kubernetes API.

@dataclass
class FakeMsg:
    subject: str
    data: bytes
    seq: int
    num_delivered: int = 1
    settled: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def metadata(self) -> SimpleNamespace:
        return SimpleNamespace(sequence=SimpleNamespace(stream=self.seq), num_delivered=self.num_delivered)

    @property
    def is_acked(self) -> bool:
        return bool(self.settled)

    async def ack(self) -> None:
        self.settled.append(("ack", None))

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append(("nak", delay))

    async def term(self) -> None:
        self.settled.append(("term", None))

    async def in_progress(self) -> None:
        pass


class FakeKube:
    def __init__(self, fail_get: ApiException | None = None) -> None:
        self.obj = {"metadata": {"name": "run", "namespace": "ns", "uid": UID}, "status": {}}
        self.patches: list[dict[str, Any]] = []
        self.fail_get = fail_get

    def get(self, path: str) -> dict[str, Any]:
        if self.fail_get:
            raise self.fail_get
        return self.obj

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.patches.append(body)
        self.obj = {**self.obj, "status": {**self.obj["status"], **body["status"]}}
        return self.obj

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return body


def manager(kube: FakeKube) -> StateManager:
    async def on_status(_: dict[str, Any], __: list) -> None:
        pass

    return StateManager(SimpleNamespace(), kube, on_status, defer=0)  # type: ignore[arg-type]


def msgs_of(*bodies: dict[str, Any] | bytes, subject: str | None = None) -> list[FakeMsg]:
    return [FakeMsg(subject or (b["subject"] if isinstance(b, dict) else "compozy.state.ns.run.task.a.1.X"),
                    b if isinstance(b, bytes) else encode(b), seq) for seq, b in enumerate(bodies, start=1)]


def rejected(reason: str) -> float:
    return REJECTED_EVENTS.labels(reason)._value.get()


def test_malformed_events_are_terminated_and_the_good_ones_still_folded(caplog: pytest.LogCaptureFixture) -> None:
    kube = FakeKube()
    good = [event(EventType.WORKFLOW_STARTED, None, None, workflow="wf", taskCount=1),
            event(EventType.TASK_SUCCESS, output={"n": 1})]
    bad = [{**event(), "data": {}}, with_data(attempt="one"), b"\xffgarbage"]
    forged = msgs_of(event(execution="someone-else"), subject="compozy.state.ns.run.task.a.1.TaskExecutionStarted")
    before = {r: rejected(r) for r in ("invalid", "unparseable", "subject_mismatch")}
    msgs = msgs_of(*bad, *good) + forged
    asyncio.run(manager(kube).apply_batch(msgs))  # type: ignore[arg-type]
    assert [m.settled for m in msgs] == [[("term", None)]] * 3 + [[("ack", None)]] * 2 + [[("term", None)]]
    assert kube.obj["status"]["phase"] == "Running" and kube.obj["status"]["tasks"]["a"]["output"] == {"n": 1}
    assert {r: rejected(r) - before[r] for r in before} == {"invalid": 2, "unparseable": 1, "subject_mismatch": 1}
    lines = [r for r in caplog.records if "rejected the state event" in r.getMessage()]
    assert len(lines) == 4 and not any(r.exc_info for r in lines)


def test_an_event_whose_fold_raises_is_terminated_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    real = state_manager.fold_all

    def fold_all(status: Any, events: list[Any]) -> Any:
        if any(ev.data.get("podName") == "boom" for ev, _ in events):
            raise KeyError("boom")
        return real(status, events)

    monkeypatch.setattr(state_manager, "fold_all", fold_all)
    kube = FakeKube()
    before = rejected("fold_failed")
    msgs = msgs_of(event(EventType.WORKFLOW_STARTED, None, None, taskCount=1),
                   event(EventType.TASK_DISPATCHED, podName="boom"), event(EventType.TASK_SUCCESS, output={}))
    asyncio.run(manager(kube).apply_batch(msgs))  # type: ignore[arg-type]
    assert [m.settled[0][0] for m in msgs] == ["ack", "term", "ack"]
    assert kube.obj["status"]["tasks"]["a"]["phase"] == "Succeeded"
    assert rejected("fold_failed") - before == 1


def test_a_transient_failure_is_nakd_with_back_off_never_terminated() -> None:
    kube = FakeKube(fail_get=ApiException(status=503, reason="Service Unavailable"))
    msgs = msgs_of(event(EventType.TASK_SUCCESS, output={}), event(EventType.TASK_FAILED, attempt=2))
    msgs[1].num_delivered = 6
    asyncio.run(manager(kube).apply_batch(msgs))  # type: ignore[arg-type]
    assert [m.settled for m in msgs] == [[("nak", nak_delay(1))], [("nak", nak_delay(6))]]
    assert nak_delay(6) > nak_delay(1)


def test_a_supervised_loop_is_restarted_and_reported_meanwhile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("compozy_operator.operator_main.RESTART_MIN", 0.05)
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) < 3:
            raise KeyError("data")
        await asyncio.sleep(3600)

    async def scenario() -> tuple[str | None, str | None]:
        loop = Supervised("state manager", flaky)
        loop.start()
        await asyncio.sleep(0.01)
        down = loop.problem()
        while len(runs) < 3:
            await asyncio.sleep(0.01)
        after = loop.problem()
        assert loop.task is not None
        loop.task.cancel()
        return down, after

    down, after = asyncio.run(scenario())
    assert down == "state manager stopped (KeyError: 'data'); restarting"
    assert after == "state manager restarted after: KeyError: 'data'"


class SlowKube(FakeKube):
    """Executions by name; a PATCH of ``slow`` waits until ``release`` is set (in its thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.objs = {n: {"metadata": {"name": n, "namespace": "ns", "uid": UID}, "status": {}} for n in ("slow", "fast")}
        self.release = threading.Event()
        self.order: list[tuple[str, dict[str, Any]]] = []  # (execution, status patch)

    def get(self, path: str) -> dict[str, Any]:
        return self.objs[path.rsplit("/", 1)[1]]

    def merge_patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        name = path.rsplit("/", 2)[1]
        if name == "slow":
            self.release.wait(10)
        self.order.append((name, body["status"]))
        obj = self.objs[name]
        self.objs[name] = {**obj, "status": {**obj["status"], **body["status"]}}
        return self.objs[name]


def test_a_slow_patch_of_one_execution_holds_up_no_others_events_and_its_own_keep_their_order() -> None:
    kube = SlowKube()
    first = [FakeMsg(b["subject"], encode(b), seq) for seq, b in enumerate([
        event(EventType.WORKFLOW_STARTED, None, None, execution="slow", taskCount=1),
        event(EventType.TASK_SUCCESS, execution="slow", output={"n": 1})], start=1)]
    later = [FakeMsg(b["subject"], encode(b), seq) for seq, b in enumerate([
        event(EventType.TASK_STARTED, task="b", execution="slow"),
        event(EventType.WORKFLOW_STARTED, None, None, execution="fast", taskCount=1)], start=3)]

    async def scenario() -> None:
        m, batches = manager(kube), Pipeline(4)
        await batches.submit(lambda: m.start_batch(first))  # type: ignore[arg-type]
        await batches.submit(lambda: m.start_batch(later))  # type: ignore[arg-type]
        for _ in range(500):  # the other execution's event is folded and written meanwhile
            if later[1].settled:
                break
            await asyncio.sleep(0.01)
        assert later[1].settled == [("ack", None)] and not first[0].settled and not later[0].settled
        kube.release.set()
        while batches.tasks:
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert [name for name, _ in kube.order] == ["fast", "slow", "slow"]  # slow's second batch waited for its first
    (_, one), (_, two) = kube.order[1:]
    assert one["tasks"]["a"]["phase"] == "Succeeded" and one["stateSeq"] == 2
    assert two["tasks"] == {"b": two["tasks"]["b"]} and two["tasks"]["b"]["phase"] == "Running" and two["stateSeq"] == 3


def test_a_failed_batch_fails_the_pipeline() -> None:
    async def scenario() -> None:
        batches = Pipeline(2)

        async def broken() -> None:
            raise KeyError("boom")

        await batches.submit(broken)
        while batches.tasks:
            await asyncio.sleep(0)
        with pytest.raises(KeyError, match="boom"):
            await batches.submit(broken)

    asyncio.run(scenario())


def urgent_write_scenario(decide_seconds: float, follow: list[dict[str, Any]],
                          end: dict[str, Any] | None = None) -> tuple[FakeKube, list[FakeMsg], list[str]]:
    """A task's ``end`` is folded with deferral on; the orchestrator's decision on it takes
    ``decide_seconds`` and then publishes ``follow`` (delivered to the manager as its fetch would).
    Returns the API, every message, and the reasons of the Kubernetes Events posted."""
    kube = FakeKube()
    sent: list[FakeMsg] = []
    decided: list[bool] = []
    posted: list[str] = []

    async def scenario() -> None:
        m: StateManager

        async def on_status(obj: dict[str, Any], _: list) -> None:
            if obj["status"].get("phase") != "Running" or decided:
                return
            decided.append(True)
            await asyncio.sleep(decide_seconds)
            published = [FakeMsg(b["subject"], encode(b), seq) for seq, b in enumerate(follow, start=3)]
            sent.extend(published)
            await m.apply_batch(published)  # type: ignore[arg-type]

        m = StateManager(SimpleNamespace(), kube, on_status, defer=5)  # type: ignore[arg-type]
        m.recorder = SimpleNamespace(post=lambda _obj, _type, reason, _msg: posted.append(reason))  # type: ignore[assignment]
        first = msgs_of(event(EventType.WORKFLOW_STARTED, None, None, workflow="wf", taskCount=2),
                        end or event(EventType.TASK_SUCCESS, output={"n": 1}))
        await m.apply_batch(first)  # type: ignore[arg-type]
        sent[:0] = first
        for _ in range(300):
            if len(sent) == len(first) + len(follow) and all(msg.settled for msg in sent):
                break
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    return kube, sent, posted


def test_the_events_a_tasks_end_causes_share_its_status_patch() -> None:
    """The next dispatch and the run's end, published by the decision on a task's end, are written in
    the same PATCH as that end (one write per hop), and every event is acknowledged after it."""
    kube, msgs, _ = urgent_write_scenario(0.05, [event(EventType.TASK_DISPATCHED, task="b", podName="run-b-1"),
                                              event(EventType.WORKFLOW_SUCCESS, None, None, output={})])
    assert len(kube.patches) == 1, kube.patches
    status = kube.patches[0]["status"]
    assert status["tasks"]["a"]["phase"] == "Succeeded" and "b" in status["tasks"] and status["phase"] == "Succeeded"
    assert [msg.settled for msg in msgs] == [[("ack", None)]] * 4


def test_a_slow_decision_does_not_hold_the_tasks_end_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """The write waits for the decision at most DECISION_WAIT: what it publishes later is written after."""
    monkeypatch.setattr(state_manager, "DECISION_WAIT", 0.1)
    kube, msgs, _ = urgent_write_scenario(0.5, [event(EventType.WORKFLOW_SUCCESS, None, None, output={})])
    assert len(kube.patches) == 2, kube.patches
    assert kube.patches[0]["status"]["tasks"]["a"]["phase"] == "Succeeded" and kube.patches[0]["status"]["phase"] == "Running"
    assert kube.patches[1]["status"]["phase"] == "Succeeded"
    assert all(msg.settled == [("ack", None)] for msg in msgs)


def test_a_failed_attempt_retried_in_the_same_write_still_makes_its_event() -> None:
    """The attempt's failure and the retry its decision scheduled share one PATCH; the status never
    shows the attempt Failed, yet its TaskFailed Event (and metrics) are observed."""
    kube, _, posted = urgent_write_scenario(
        0.01, [event(EventType.TASK_RETRY_SCHEDULED, attempt=2, notBefore="2026-01-01T00:00:05Z", delay=1.0)],
        end=event(EventType.TASK_FAILED, error={"reason": "ToolError", "message": "boom"}))
    assert len(kube.patches) == 1 and kube.patches[0]["status"]["tasks"]["a"]["attempt"] == 2, kube.patches
    assert sorted(posted) == ["Started", "TaskFailed"]


def test_events_left_unwritten_by_a_stopped_loop_are_written_when_redelivered() -> None:
    """The loop stops (its supervisor restarts it) while a task's end waits for its decision: its write
    never comes, and the redelivered event must not find the execution marked as being written."""
    kube = FakeKube()
    hang = asyncio.Event()

    async def scenario() -> None:
        async def on_status(_: dict[str, Any], __: list) -> None:
            await hang.wait()

        m = StateManager(SimpleNamespace(), kube, on_status, defer=5)  # type: ignore[arg-type]
        first = msgs_of(event(EventType.WORKFLOW_STARTED, None, None, workflow="wf", taskCount=1),
                        event(EventType.TASK_SUCCESS, output={}))
        await m.apply_batch(first)  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        m.drop_pending()
        hang.set()
        again = msgs_of(event(EventType.WORKFLOW_STARTED, None, None, workflow="wf", taskCount=1),
                        event(EventType.TASK_SUCCESS, output={}))
        for msg in again:
            msg.num_delivered = 2
        await m.apply_batch(again)  # type: ignore[arg-type]
        for _ in range(200):
            if all(msg.settled for msg in again):
                break
            await asyncio.sleep(0.01)
        assert not any(msg.settled for msg in first)
        assert [msg.settled for msg in again] == [[("ack", None)]] * 2

    asyncio.run(scenario())
    assert len(kube.patches) == 1 and kube.patches[0]["status"]["tasks"]["a"]["phase"] == "Succeeded"


@pytest.mark.parametrize("defer", [0, 5])
def test_a_decision_that_raises_is_logged_and_the_status_still_written(defer: float,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    kube = FakeKube()

    async def on_status(_: dict[str, Any], __: list) -> None:
        raise KeyError("boom")

    async def scenario() -> list[FakeMsg]:
        m = StateManager(SimpleNamespace(), kube, on_status, defer=defer)  # type: ignore[arg-type]
        msgs = msgs_of(event(EventType.WORKFLOW_STARTED, None, None, workflow="wf", taskCount=1),
                       event(EventType.TASK_SUCCESS, output={}))
        await m.apply_batch(msgs)  # type: ignore[arg-type]
        for _ in range(200):
            if all(msg.settled for msg in msgs):
                break
            await asyncio.sleep(0.01)
        return msgs

    msgs = asyncio.run(scenario())
    assert [msg.settled for msg in msgs] == [[("ack", None)]] * 2
    assert kube.patches and kube.patches[-1]["status"]["tasks"]["a"]["phase"] == "Succeeded"
    failed = [r for r in caplog.records if "failed to decide" in r.getMessage()]
    assert len(failed) == 1 and failed[0].exc_info is not None
