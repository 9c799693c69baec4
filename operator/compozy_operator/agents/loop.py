"""The agent loop: call the model, run the tools it asks for, repeat; then check the answer.

No I/O of its own: the conversation (:class:`~.providers.Chat`), the tools and the observer
(events, logs) are passed in, so tests can drive it with a scripted chat.

* Each model call is one iteration; ``max_iterations`` calls without a final answer fail the
  attempt with ``MaxIterationsExceeded``.
* Tool calls of one reply run concurrently; each result (the tool's output, or its error as
  ``{"error": ...}``) goes back to the model, which decides what to do with a failure.
* With an output schema the final answer must be JSON matching it. A mismatch is sent back with
  the validation error, at most ``output_retries`` times; then ``OutputSchemaNotSatisfied``.
  Without a schema the output is ``{"text": <answer>}``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import jsonschema

from .providers import AgentError, Chat, Reply, ToolCall, ToolResult

DEFAULT_MAX_ITERATIONS = 10
DEFAULT_OUTPUT_RETRIES = 2
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)

# Runs tool ``name`` on ``input`` and returns its output; raises on failure (the message goes to the model).
RunTool = Callable[[str, Any], Awaitable[dict[str, Any]]]


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    model_calls: int = 0

    def add(self, reply: Reply) -> None:
        self.input_tokens += reply.input_tokens
        self.output_tokens += reply.output_tokens
        self.model_calls += 1

    def dump(self) -> dict[str, int]:
        return {"inputTokens": self.input_tokens, "outputTokens": self.output_tokens, "modelCalls": self.model_calls}


MAX_REPORTED_TOOL_CALLS = 64  # tool calls of one model call named in its record


def call_record(reply: Reply, model: str) -> dict[str, Any]:
    """One model call as the attempt reports it (api.Service's ``/attempt``, the UI's panel): who
    answered, tokens, time, why it stopped and the tools it asked for, by name (no text, no arguments)."""
    record: dict[str, Any] = {"model": reply.model or model, "inputTokens": reply.input_tokens,
                              "outputTokens": reply.output_tokens, "seconds": round(reply.seconds, 4),
                              "toolCalls": [c.name for c in reply.tool_calls[:MAX_REPORTED_TOOL_CALLS]]}
    if reply.finish_reason:
        record["finishReason"] = reply.finish_reason
    return record


class Observer(Protocol):
    """What the loop reports as it goes (events and log lines in the task pod)."""

    async def model_replied(self, iteration: int, reply: Reply) -> None: ...

    async def tool_started(self, key: str, call: ToolCall) -> None: ...

    async def tool_ended(self, key: str, call: ToolCall, output: Any, error: str | None) -> None: ...


def check_answer(text: str | None, schema: dict[str, Any]) -> tuple[Any, str | None]:
    """The answer parsed and validated: ``(value, None)``, or ``(None, what is wrong)``."""
    raw = (text or "").strip()
    if m := _FENCE.match(raw):
        raw = m.group(1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as e:
        return None, f"the answer is not JSON ({e.msg} at line {e.lineno} column {e.colno})"
    errors = sorted(jsonschema.validators.validator_for(schema)(schema).iter_errors(value), key=lambda e: [str(p) for p in e.absolute_path])
    if errors:
        where = lambda e: "/".join(map(str, e.absolute_path)) or "(root)"  # noqa: E731
        return None, "; ".join(f"at {where(e)}: {e.message}" for e in errors[:5])
    return value, None


def _arguments(call: ToolCall, schemas: dict[str, dict[str, Any] | None]) -> tuple[Any, str | None]:
    if call.name not in schemas:
        return None, f"there is no tool named {call.name!r}; the tools are: {', '.join(sorted(schemas)) or 'none'}"
    try:
        value = json.loads(call.arguments or "{}")
    except json.JSONDecodeError as e:
        return None, f"the arguments are not JSON: {e.msg}"
    if schema := schemas[call.name]:
        errors = list(jsonschema.validators.validator_for(schema)(schema).iter_errors(value))
        if errors:
            return None, f"the arguments do not match the tool's inputSchema: {errors[0].message}"
    return value, None


class AgentLoop:
    def __init__(self, chat: Chat, run_tool: RunTool, tool_schemas: dict[str, dict[str, Any] | None],
                 observer: Observer, *, max_iterations: int | None = None, output_schema: dict[str, Any] | None = None,
                 output_retries: int | None = None) -> None:
        self.chat, self.run_tool, self.tool_schemas, self.observer = chat, run_tool, tool_schemas, observer
        self.max_iterations = max_iterations or DEFAULT_MAX_ITERATIONS
        self.output_schema = output_schema
        self.output_retries = DEFAULT_OUTPUT_RETRIES if output_retries is None else output_retries
        self.usage = Usage()
        self.replies: list[Reply] = []  # every model call's, in order (the attempt's report)

    async def run(self) -> Any:
        """The task output; raises :class:`AgentError` (provider errors come from the chat)."""
        corrections = 0
        for iteration in range(1, self.max_iterations + 1):
            reply = await self.chat.send()
            self.usage.add(reply)
            self.replies.append(reply)
            await self.observer.model_replied(iteration, reply)
            if reply.tool_calls:
                self.chat.add_tool_results(list(await asyncio.gather(
                    *(self._call(f"{iteration}.{i}", c) for i, c in enumerate(reply.tool_calls)))))
                continue
            if self.output_schema is None:
                return {"text": reply.text or ""}
            value, problem = check_answer(reply.text, self.output_schema)
            if problem is None:
                return value
            if corrections >= self.output_retries:
                raise AgentError("OutputSchemaNotSatisfied",
                                 f"no answer matched the outputSchema after {corrections + 1} tries; last: {problem}")
            corrections += 1
            self.chat.add_user(f"Your answer does not match the required JSON Schema: {problem}. "
                               "Reply again with only JSON that matches the schema.")
        raise AgentError("MaxIterationsExceeded",
                         f"no final answer after {self.max_iterations} model calls (the agent's maxIterations)")

    def call_records(self, model: str) -> list[dict[str, Any]]:
        """The model calls made so far (:func:`call_record`; ``model``: the configured name)."""
        return [call_record(r, model) for r in self.replies]

    async def _call(self, key: str, call: ToolCall) -> ToolResult:
        await self.observer.tool_started(key, call)
        value, problem = _arguments(call, self.tool_schemas)
        output: Any = None
        if problem is None:
            try:
                output = await self.run_tool(call.name, value)
            except Exception as e:  # noqa: BLE001 - any tool failure is the model's to handle
                problem = str(getattr(e, "message", None) or e) or type(e).__name__
        await self.observer.tool_ended(key, call, output, problem)
        if problem is not None:
            return ToolResult(call, json.dumps({"error": problem}), True)
        return ToolResult(call, json.dumps(output, default=str), False)
