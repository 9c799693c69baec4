"""The agent loop with the real provider SDKs against the stand-in LLM endpoint (no cluster)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from compozy_operator.agents.loop import AgentLoop, check_answer
from compozy_operator.agents.providers import AgentError, AnthropicChat, OpenAIChat, Reply, ToolCall, ToolSpec
from tests.fakellm import FakeLLM, anthropic_reply, error, openai_reply

SCHEMA = {"type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}
COUNT_SCHEMA = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    server = FakeLLM()
    yield server
    server.close()


class Recorder:
    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    async def model_replied(self, iteration: int, reply: Reply) -> None:
        self.seen.append(("reply", str(iteration), str(len(reply.tool_calls))))

    async def tool_started(self, key: str, call: ToolCall) -> None:
        self.seen.append(("start", key, call.name))

    async def tool_ended(self, key: str, call: ToolCall, output: Any, problem: str | None) -> None:
        self.seen.append(("end", key, call.name, problem or json.dumps(output)))


async def count_words(name: str, value: Any) -> dict[str, Any]:
    if value["text"] == "boom":
        raise RuntimeError("the tool broke")
    return {"words": len(value["text"].split())}


def run(chat: Any, observer: Recorder | None = None, **kw: Any) -> Any:
    loop = AgentLoop(chat, count_words, {"word-count": COUNT_SCHEMA}, observer or Recorder(), **kw)
    return asyncio.run(loop.run()), loop


def openai_chat(llm: FakeLLM, schema: dict | None = None, **model: Any) -> OpenAIChat:
    return OpenAIChat({"name": "m", "baseURL": llm.url, **model}, "sk-test", "Be brief.", "Summarize: a b c",
                      [ToolSpec("word-count", "Count words", COUNT_SCHEMA)], schema)


def anthropic_chat(llm: FakeLLM, schema: dict | None = None, **model: Any) -> AnthropicChat:
    return AnthropicChat({"name": "claude", "baseURL": llm.anthropic_url, **model}, "sk-ant", "Be brief.",
                         "Summarize: a b c", [ToolSpec("word-count", "Count words", COUNT_SCHEMA)], schema)


def test_plain_answer_is_text_with_usage(llm: FakeLLM) -> None:
    llm.add(openai_reply("a short summary", prompt_tokens=20, completion_tokens=4))
    output, loop = run(openai_chat(llm))
    assert output == {"text": "a short summary"}
    assert loop.usage.dump() == {"inputTokens": 20, "outputTokens": 4, "modelCalls": 1}
    body = llm.requests[0].body
    assert body["messages"] == [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Summarize: a b c"}]
    assert body["tools"][0]["function"] == {"name": "word-count", "description": "Count words",
                                            "parameters": COUNT_SCHEMA}
    assert "response_format" not in body
    assert llm.requests[0].headers["authorization"] == "Bearer sk-test"


@pytest.mark.parametrize("make", [openai_chat, anthropic_chat])
def test_structured_output_valid_at_once_uses_native_mode(llm: FakeLLM, make: Any) -> None:
    reply = openai_reply if make is openai_chat else anthropic_reply
    llm.add(reply('```json\n{"summary": "s"}\n```'))
    output, _ = run(make(llm, SCHEMA), output_schema=SCHEMA)
    assert output == {"summary": "s"}
    body = llm.requests[0].body
    if make is openai_chat:
        assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA}}
    else:
        assert body["output_config"] == {"format": {"type": "json_schema", "schema": SCHEMA}}
        assert body["system"] == "Be brief." and body["max_tokens"] == 4096


def test_prompt_mode_puts_the_schema_in_the_system_prompt(llm: FakeLLM) -> None:
    llm.add(openai_reply('{"summary": "s"}'))
    run(openai_chat(llm, SCHEMA, structuredOutput="prompt"), output_schema=SCHEMA)
    body = llm.requests[0].body
    assert "response_format" not in body
    assert json.dumps(SCHEMA, sort_keys=True) in body["messages"][0]["content"]


@pytest.mark.parametrize("make", [openai_chat, anthropic_chat])
def test_invalid_answer_is_corrected_with_the_validation_error(llm: FakeLLM, make: Any) -> None:
    reply = openai_reply if make is openai_chat else anthropic_reply
    llm.add(reply('{"summary": 42}'), reply('{"summary": "fixed"}'))
    output, loop = run(make(llm, SCHEMA), output_schema=SCHEMA)
    assert output == {"summary": "fixed"} and loop.usage.model_calls == 2
    feedback = llm.requests[1].body["messages"][-1]
    assert feedback["role"] == "user" and "at summary: 42 is not of type 'string'" in feedback["content"]


def test_never_valid_fails_after_the_bounded_retries(llm: FakeLLM) -> None:
    llm.add(*[openai_reply("not json") for _ in range(5)])
    with pytest.raises(AgentError) as e:
        run(openai_chat(llm, SCHEMA), output_schema=SCHEMA, output_retries=1)
    assert e.value.reason == "OutputSchemaNotSatisfied"
    assert "after 2 tries" in e.value.message and "not JSON" in e.value.message
    assert len(llm.requests) == 2


@pytest.mark.parametrize("make", [openai_chat, anthropic_chat])
def test_parallel_tool_calls_round_trip(llm: FakeLLM, make: Any) -> None:
    if make is openai_chat:
        llm.add(openai_reply(tool_calls=[("word-count", {"text": "a b c"}), ("word-count", {"text": "boom"})]),
                openai_reply("done"))
    else:
        llm.add(anthropic_reply(tool_uses=[("word-count", {"text": "a b c"}), ("word-count", {"text": "boom"})]),
                anthropic_reply("done"))
    observer = Recorder()
    output, loop = run(make(llm), observer)
    assert output == {"text": "done"}
    calls = loop.call_records("configured")
    assert [(c["model"], c["finishReason"], c["toolCalls"]) for c in calls] == [  # as each provider says it
        ("fake", "tool_calls" if make is openai_chat else "tool_use", ["word-count", "word-count"]),
        ("fake", "stop" if make is openai_chat else "end_turn", [])]
    assert all(c["inputTokens"] > 0 and c["outputTokens"] > 0 and c["seconds"] >= 0 for c in calls), calls
    assert ("end", "1.0", "word-count", '{"words": 3}') in observer.seen
    assert ("end", "1.1", "word-count", "the tool broke") in observer.seen
    second = llm.requests[1].body["messages"]
    if make is openai_chat:
        results = [m for m in second if m["role"] == "tool"]
        assert [json.loads(m["content"]) for m in results] == [{"words": 3}, {"error": "the tool broke"}]
        assert [m["tool_call_id"] for m in results] == [c["id"] for c in second[-3]["tool_calls"]]
    else:
        blocks = second[-1]["content"]
        assert [(json.loads(b["content"]), b["is_error"]) for b in blocks] == [
            ({"words": 3}, False), ({"error": "the tool broke"}, True)]


def test_bad_tool_calls_go_back_to_the_model(llm: FakeLLM) -> None:
    llm.add(openai_reply(tool_calls=[("nope", {}), ("word-count", {"words": 1})]), openai_reply("ok"))
    observer = Recorder()
    run(openai_chat(llm), observer)
    problems = [s[3] for s in observer.seen if s[0] == "end"]
    assert problems[0] == "there is no tool named 'nope'; the tools are: word-count"
    assert problems[1].startswith("the arguments do not match the tool's inputSchema: 'text' is a required")


def test_max_iterations_exceeded(llm: FakeLLM) -> None:
    llm.add(*[openai_reply(tool_calls=[("word-count", {"text": "x"})]) for _ in range(3)])
    with pytest.raises(AgentError) as e:
        run(openai_chat(llm), max_iterations=3)
    assert e.value.reason == "MaxIterationsExceeded" and "3 model calls" in e.value.message
    assert len(llm.requests) == 3


@pytest.mark.parametrize("status, headers, reason, retry_after", [
    (429, {"retry-after": "7"}, "RateLimited", 7.0),
    (429, {"retry-after-ms": "1500"}, "RateLimited", 1.5),
    (503, {}, "ProviderUnavailable", None),
    (401, {}, "ProviderAuthError", None),
    (403, {}, "ProviderAuthError", None),
    (400, {}, "ProviderBadRequest", None),
])
def test_provider_errors_are_classified(llm: FakeLLM, status: int, headers: dict, reason: str,
                                        retry_after: float | None) -> None:
    llm.add(error(status, "Incorrect API key provided: sk-test", headers))
    with pytest.raises(AgentError) as e:
        asyncio.run(openai_chat(llm, maxRetries=0).send())
    assert (e.value.reason, e.value.retry_after) == (reason, retry_after)
    assert "sk-test" not in e.value.message


def test_sdk_retries_a_429_in_place_honouring_retry_after(llm: FakeLLM) -> None:
    llm.add(error(429, "slow down", {"retry-after": "1"}), openai_reply("fine"))
    output, _ = run(openai_chat(llm))  # default maxRetries: 2
    assert output == {"text": "fine"} and len(llm.requests) == 2


def test_unreachable_endpoint_is_named() -> None:
    """Issue 11.9: the message names the URL (without any credentials in it)."""
    chat = OpenAIChat({"name": "m", "baseURL": "http://user:pw@127.0.0.1:9/v1", "maxRetries": 0}, None, None, "hi",
                      [], None)
    with pytest.raises(AgentError) as e:
        asyncio.run(chat.send())
    assert e.value.reason == "ProviderConnectionError"
    assert e.value.message.startswith("cannot reach the model endpoint http://127.0.0.1:9/v1/chat/completions: ")
    assert "pw" not in e.value.message


def test_a_slow_model_call_times_out(llm: FakeLLM) -> None:
    def slow(_: Any) -> Any:
        time.sleep(1.5)
        return openai_reply("late")

    llm.add(slow)
    with pytest.raises(AgentError) as e:
        asyncio.run(openai_chat(llm, timeout="300ms", maxRetries=0).send())
    assert e.value.reason == "ProviderTimeout" and "/chat/completions timed out" in e.value.message


def test_check_answer() -> None:
    assert check_answer('{"summary": "x"}', SCHEMA) == ({"summary": "x"}, None)
    assert check_answer("```\n{\"summary\": \"x\"}\n```", SCHEMA) == ({"summary": "x"}, None)
    assert check_answer("{}", SCHEMA)[1] == "at (root): 'summary' is a required property"
    assert check_answer("", SCHEMA)[1].startswith("the answer is not JSON")
