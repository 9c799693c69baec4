"""LLM providers behind one small interface: a :class:`Chat` holds one conversation.

* ``openai``: any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, LiteLLM,
  Groq, Mistral, ...) through the official ``openai`` SDK.
* ``anthropic``: Anthropic's Messages API through the official ``anthropic`` SDK.

The SDKs do the wire protocol, and retry one call in place (``maxRetries``) on 429 (honouring
Retry-After), 5xx, timeouts and connection errors. What still fails is turned into an
:class:`AgentError` whose reason says whether another attempt could help (see
:func:`provider_error`). The SDKs are imported on first use: only agent pods pay for them.
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from ..resources.models import parse_duration
from ..runtime import TaskFailure

DEFAULT_TIMEOUT = "60s"
DEFAULT_MAX_RETRIES = 2
ANTHROPIC_DEFAULT_MAX_TOKENS = 4096
API_KEY_ENV = "COMPOZY_MODEL_API_KEY"  # the task pod's variable holding the API key (from its Secret)
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class AgentError(TaskFailure):
    """An agent attempt failed (provider error, schema never satisfied, too many iterations)."""


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as the model wrote it


@dataclass(frozen=True)
class Reply:
    """One model call's answer: final text, or tool calls to make first."""

    text: str | None
    tool_calls: list[ToolCall]
    input_tokens: int
    output_tokens: int
    seconds: float
    finish_reason: str | None = None  # as the provider says it (OpenAI's finish_reason, Anthropic's stop_reason)
    model: str | None = None  # the model that answered, as the provider names it (e.g. a dated version)


def _text(value: Any) -> str | None:
    """A provider's string field (an endpoint may leave it out, or send something else)."""
    return value[:200] if isinstance(value, str) and value else None


@dataclass(frozen=True)
class ToolResult:
    call: ToolCall
    content: str  # JSON text given back to the model
    is_error: bool


@dataclass(frozen=True)
class ToolSpec:
    """A tool as the model sees it (function calling)."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: dict(NO_PARAMETERS))


class Chat(Protocol):
    """One conversation with a model; ``send`` appends the model's reply to it."""

    async def send(self) -> Reply: ...

    def add_tool_results(self, results: list[ToolResult]) -> None: ...

    def add_user(self, text: str) -> None: ...


def schema_instruction(schema: dict[str, Any]) -> str:
    return ("Answer with only a JSON value (no prose, no code fence) that matches this JSON Schema:\n"
            + json.dumps(schema, sort_keys=True))


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` or ``retry-after`` (seconds or an HTTP date)."""
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _endpoint(exc: Exception) -> str:
    """The URL the failed call went to (from the SDK's request; credentials and query left out)."""
    url = getattr(getattr(exc, "request", None), "url", None)
    if url is None:
        return "(unknown URL: check the agent's model.baseURL)"
    parsed = urlsplit(str(url))
    host = parsed.hostname or ""
    netloc = f"{host}:{parsed.port}" if parsed.port else host
    return urlunsplit((parsed.scheme, netloc, parsed.path, "", ""))


def provider_error(exc: Exception, secret: str | None = None) -> AgentError:
    """Map an SDK exception (either SDK: they share the shape) to an :class:`AgentError`.

    Retryable: ``RateLimited`` (429, with Retry-After), ``ProviderUnavailable`` (5xx, 408, 409),
    ``ProviderTimeout``, ``ProviderConnectionError``. Not retryable: ``ProviderAuthError``
    (401/403; the provider's text is dropped, since some echo part of the key) and
    ``ProviderBadRequest`` (other 4xx). The API key is masked in every message."""
    name = type(exc).__name__
    status = getattr(exc, "status_code", None)
    response = getattr(exc, "response", None)
    text = str(getattr(exc, "message", None) or exc)
    if secret:
        text = text.replace(secret, "***")
    text = text[:500]
    if status is None:
        where = _endpoint(exc)
        if "Timeout" in name:
            return AgentError("ProviderTimeout", f"the model call to {where} timed out: {text}")
        if "Connection" in name:
            return AgentError("ProviderConnectionError", f"cannot reach the model endpoint {where}: {text}")
        return AgentError("ProviderError", f"{name}: {text}")
    if status in (401, 403):
        return AgentError("ProviderAuthError", f"HTTP {status}: the provider refused the credentials "
                                               "(check the agent's model.apiKeySecretRef)")
    if status == 429:
        wait = _retry_after(getattr(response, "headers", None))
        after = f" (Retry-After {wait:g}s)" if wait is not None else ""
        return AgentError("RateLimited", f"HTTP 429: rate limited{after}: {text}", retry_after=wait)
    if status >= 500 or status in (408, 409):
        return AgentError("ProviderUnavailable", f"HTTP {status}: {text}")
    return AgentError("ProviderBadRequest", f"HTTP {status}: {text}")


#: What a first model call imports (tests/unit/test_pools.py finds any other): the transport's async
#: backend, and the anthropic SDK's trace propagation.
REQUEST_TIME_IMPORTS = ("anyio._backends._asyncio", "opentelemetry.propagate")
#: The TLS context of this process's model clients, made once by :func:`warm` (a pool runner's fork
#: server; its attempts' processes inherit a copy each). Without it each client loads the CA bundle
#: itself, about 20 ms of CPU.
_TLS: list[Any] = []


def _client_options(model: dict[str, Any], http_client: Callable[..., Any]) -> dict[str, Any]:
    """The SDK client's options; ``http_client``: the SDK's ``DefaultAsyncHttpxClient`` (its own
    defaults), used on the warm TLS context where there is one."""
    options: dict[str, Any] = {"timeout": parse_duration(model.get("timeout") or DEFAULT_TIMEOUT),
                               "max_retries": model.get("maxRetries", DEFAULT_MAX_RETRIES)}
    if model.get("baseURL"):
        options["base_url"] = model["baseURL"]
    if _TLS:
        options["http_client"] = http_client(verify=_TLS[0])
    return options


def _schema_mode(model: dict[str, Any], system: str | None,
                 output_schema: dict[str, Any] | None) -> tuple[str | None, bool]:
    """The system prompt, and whether the API's own JSON-schema mode asks for ``output_schema``
    (in ``prompt`` mode the schema goes into the system prompt instead)."""
    native = output_schema is not None and model.get("structuredOutput", "native") == "native"
    if output_schema is not None and not native:
        system = "\n\n".join(filter(None, [system, schema_instruction(output_schema)]))
    return system, native


class _SdkChat:
    """What both providers' chats share: the conversation, the timed call, the error mapping."""

    def __init__(self, sdk_error: type[Exception], api_key: str | None) -> None:
        self.sdk_error, self.secret = sdk_error, api_key
        self.messages: list[dict[str, Any]] = []

    async def _call(self, create: Any, request: dict[str, Any]) -> tuple[Any, float]:
        start = time.monotonic()
        try:
            response = await create(messages=self.messages, **request)
        except self.sdk_error as e:
            raise provider_error(e, self.secret) from None
        return response, time.monotonic() - start

    def add_user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})


class OpenAIChat(_SdkChat):
    """Chat completions (``/chat/completions``) of any OpenAI-compatible endpoint."""

    def __init__(self, model: dict[str, Any], api_key: str | None, system: str | None, prompt: str,
                 tools: list[ToolSpec], output_schema: dict[str, Any] | None) -> None:
        from openai import AsyncOpenAI, DefaultAsyncHttpxClient, OpenAIError  # noqa: PLC0415 - only agent pods need it

        super().__init__(OpenAIError, api_key)
        # Endpoints without auth (a local vLLM or Ollama) still get a placeholder: the SDK insists.
        self.client = AsyncOpenAI(api_key=api_key or "unused", **_client_options(model, DefaultAsyncHttpxClient))
        system, native = _schema_mode(model, system, output_schema)
        if system:
            self.messages.append({"role": "system", "content": system})
        self.messages.append({"role": "user", "content": prompt})
        self.request: dict[str, Any] = {"model": model["name"]}
        if model.get("temperature") is not None:
            self.request["temperature"] = model["temperature"]
        if model.get("maxTokens"):
            self.request["max_tokens"] = model["maxTokens"]
        if tools:
            self.request["tools"] = [{"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.parameters}} for t in tools]
        if native:
            self.request["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "output", "schema": output_schema}}

    async def send(self) -> Reply:
        r, seconds = await self._call(self.client.chat.completions.create, self.request)
        msg = r.choices[0].message
        calls = [ToolCall(c.id, c.function.name, c.function.arguments or "{}") for c in msg.tool_calls or []]
        turn: dict[str, Any] = {"role": "assistant", "content": msg.content}
        if calls:
            turn["tool_calls"] = [{"id": c.id, "type": "function",
                                   "function": {"name": c.name, "arguments": c.arguments}} for c in calls]
        self.messages.append(turn)
        usage = r.usage
        return Reply(msg.content, calls, getattr(usage, "prompt_tokens", 0) or 0,
                     getattr(usage, "completion_tokens", 0) or 0, seconds, _text(r.choices[0].finish_reason),
                     _text(getattr(r, "model", None)))

    def add_tool_results(self, results: list[ToolResult]) -> None:
        self.messages += [{"role": "tool", "tool_call_id": r.call.id, "content": r.content} for r in results]


class AnthropicChat(_SdkChat):
    """Anthropic's Messages API (``/v1/messages``); outputSchema through its native JSON-schema output."""

    def __init__(self, model: dict[str, Any], api_key: str | None, system: str | None, prompt: str,
                 tools: list[ToolSpec], output_schema: dict[str, Any] | None) -> None:
        from anthropic import AnthropicError, AsyncAnthropic, DefaultAsyncHttpxClient  # noqa: PLC0415 - only agent pods need it

        super().__init__(AnthropicError, api_key)
        self.client = AsyncAnthropic(api_key=api_key or "unused", **_client_options(model, DefaultAsyncHttpxClient))
        system, native = _schema_mode(model, system, output_schema)
        self.messages.append({"role": "user", "content": prompt})
        self.request: dict[str, Any] = {"model": model["name"],
                                        "max_tokens": model.get("maxTokens") or ANTHROPIC_DEFAULT_MAX_TOKENS}
        if system:
            self.request["system"] = system
        if tools:
            self.request["tools"] = [{"name": t.name, "description": t.description, "input_schema": t.parameters}
                                     for t in tools]
        if native:
            self.request["output_config"] = {"format": {"type": "json_schema", "schema": output_schema}}

    async def send(self) -> Reply:
        r, seconds = await self._call(self.client.messages.create, self.request)
        texts, calls, content = [], [], []
        for block in r.content:
            if block.type == "text":
                texts.append(block.text)
                content.append({"type": "text", "text": block.text})
            elif block.type == "tool_use":
                calls.append(ToolCall(block.id, block.name, json.dumps(block.input)))
                content.append({"type": "tool_use", "id": block.id, "name": block.name, "input": block.input})
        self.messages.append({"role": "assistant", "content": content})
        return Reply("".join(texts) if texts else None, calls, r.usage.input_tokens or 0, r.usage.output_tokens or 0,
                     seconds, _text(r.stop_reason), _text(getattr(r, "model", None)))

    def add_tool_results(self, results: list[ToolResult]) -> None:
        self.messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": r.call.id, "content": r.content, "is_error": r.is_error}
            for r in results]})


PROVIDERS: dict[str, type[OpenAIChat] | type[AnthropicChat]] = {"openai": OpenAIChat, "anthropic": AnthropicChat}


def warm() -> None:
    """Load what the SDKs load lazily on a first model call (about 0.1 s: the HTTP transport and its
    async backend, the resource modules) by building a chat of each provider without calling it, and
    make the TLS context every later client of this process shares (:data:`_TLS`). Skips an SDK that
    is not installed."""
    for provider, chat in PROVIDERS.items():
        try:
            client = chat({"name": "warm-up", "baseURL": "http://127.0.0.1:9"}, None, None, "-", [], None).client
        except ImportError:
            continue
        getattr(client, "messages" if provider == "anthropic" else "chat").__class__  # noqa: B018 - loads its module
    for module in REQUEST_TIME_IMPORTS:
        try:
            importlib.import_module(module)
        except ImportError:
            continue
    try:
        import httpx2  # noqa: PLC0415 - the SDKs' HTTP client
    except ImportError:
        return
    _TLS[:] = [httpx2.create_ssl_context()]  # as each client would make it (SSL_CERT_FILE, ... honoured)
