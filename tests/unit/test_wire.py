"""The task pod's side of the wire: the envelopes it publishes without pydantic are exactly the
events the operator's model reads, and the runner's start loads none of the heavy modules."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compozy_operator import wire
from compozy_operator.events import Event, make_event, parse_state_event
from compozy_operator.wire import ATTEMPT_TYPES, EventType, Publisher, encode, envelope

# What a task attempt's event data holds: tool outputs (any JSON, non-finite floats included, as a
# model's reply parsed by json.loads may hold), error texts in any script, counts.
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 63) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
NAMES = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)


def pydantic_bytes(body: dict[str, Any]) -> bytes:
    """What the envelope published as before: the model's JSON."""
    return Event(**body).model_dump_json().encode()


@settings(max_examples=200, deadline=None)
@given(etype=st.sampled_from(sorted(ATTEMPT_TYPES)), namespace=NAMES, execution=NAMES, task=NAMES,
       attempt=st.integers(1, 100), output=JSON, message=st.text())
def test_the_runner_envelope_is_the_event_the_model_reads(etype: EventType, namespace: str, execution: str,
                                                          task: str, attempt: int, output: Any, message: str) -> None:
    body = envelope(etype, "compozy/runtime", namespace, execution, "uid-1", task, attempt,
                    publisher=Publisher.ATTEMPT, podName="pod", output=output, error={"message": message})
    ours = Event.model_validate_json(encode(body))
    assert ours == Event.model_validate_json(pydantic_bytes(body))
    assert json.loads(encode(body)) == json.loads(pydantic_bytes(body))  # the same JSON, value for value
    # and the state manager takes it, from the subject the envelope names
    assert parse_state_event(body["subject"], encode(body)) == ours


def test_make_event_is_the_envelope_validated() -> None:
    body = envelope(EventType.TASK_SUCCESS, "compozy/task-executor", "ns", "run", "uid", "t", 2,
                    publisher=Publisher.ATTEMPT, output={"x": 1})
    event = make_event(EventType.TASK_SUCCESS, "compozy/task-executor", "ns", "run", "uid", "t", 2,
                       publisher=Publisher.ATTEMPT, output={"x": 1})
    assert event.model_dump(exclude={"time"}) == {k: v for k, v in body.items() if k != "time"}
    assert set(Event.model_fields) == set(body)  # one definition of the fields


def test_non_finite_floats_become_null_as_pydantic_writes_them() -> None:
    body = envelope(EventType.TOOL_SUCCESS, "compozy/runtime", "ns", "run", "uid", "t", 1,
                    output={"a": math.nan, "b": [math.inf, 1.5], "c": "NaN"})
    assert json.loads(encode(body))["data"]["output"] == {"a": None, "b": [None, 1.5], "c": "NaN"}


def loaded_modules(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


HEAVY = ("aiohttp", "pydantic", "kubernetes", "yaml", "jsonschema", "jinja2", "openai", "anthropic",
         "compozy_operator.events", "compozy_operator.resources")


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY))


def test_the_runner_loads_none_of_the_heavy_modules() -> None:
    """What ``compozy task run`` imports before it talks to NATS (the attempt's own imports are
    checked end to end in tests/testenv/test_task_runner_nats.py)."""
    modules = loaded_modules("from compozy_operator.cli.local import load_nats_without_aiohttp\n"
                             "load_nats_without_aiohttp('nats://127.0.0.1:4222')\n"
                             "import compozy_operator.cli, compozy_operator.task_executor")
    assert "nats.aio.client" in modules
    assert heavy(modules) == []


def test_aiohttp_is_hidden_only_while_nats_loads() -> None:
    modules = loaded_modules("from compozy_operator.cli.local import load_nats_without_aiohttp\n"
                             "load_nats_without_aiohttp('tls://nats:4222')\n"
                             "import nats.aio.transport as t\nassert t.aiohttp is None\n"
                             "import aiohttp  # a tool's own import still works")
    assert "aiohttp" in modules


@pytest.mark.parametrize("url", ["ws://nats:8080", "WSS://nats:443"])
def test_a_websocket_url_loads_nats_with_its_transport(url: str) -> None:
    modules = loaded_modules("from compozy_operator.cli.local import load_nats_without_aiohttp\n"
                             f"load_nats_without_aiohttp({url!r})\n"
                             "import nats.aio.transport as t\nassert t.aiohttp is not None")
    assert "aiohttp" in modules


def test_the_wire_module_and_the_bus_need_no_pydantic() -> None:
    modules = loaded_modules("import compozy_operator.wire, compozy_operator.bus")
    assert "pydantic" not in modules and "compozy_operator.events" not in modules
    assert wire.STATE_TYPES >= {t.value for t in ATTEMPT_TYPES}
