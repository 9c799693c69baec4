"""A stand-in LLM endpoint for tests: a real HTTP server speaking the OpenAI chat-completions and
Anthropic Messages wire protocols, answering with scripted replies and recording every request.

It is the only stand-in the tests use (a paid external service); the task pods reach it with the
real ``openai`` and ``anthropic`` SDKs.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ids = itertools.count(1)


@dataclass
class Response:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


Script = Response | Callable[[Request], Response]


def openai_reply(content: str | None = None, tool_calls: list[tuple[str, dict[str, Any]]] | None = None,
                 prompt_tokens: int = 11, completion_tokens: int = 7) -> Response:
    """A chat completion: ``content``, or tool calls given as ``(tool name, arguments)``."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = [{"id": f"call_{next(_ids)}", "type": "function",
                                  "function": {"name": name, "arguments": json.dumps(args)}}
                                 for name, args in tool_calls]
    return Response(200, {
        "id": f"chatcmpl-{next(_ids)}", "object": "chat.completion", "created": 1_700_000_000, "model": "fake",
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens}})


def anthropic_reply(text: str | None = None, tool_uses: list[tuple[str, dict[str, Any]]] | None = None,
                    input_tokens: int = 13, output_tokens: int = 5) -> Response:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text is not None else []
    content += [{"type": "tool_use", "id": f"toolu_{next(_ids)}", "name": name, "input": args}
                for name, args in tool_uses or []]
    return Response(200, {
        "id": f"msg_{next(_ids)}", "type": "message", "role": "assistant", "model": "fake", "content": content,
        "stop_reason": "tool_use" if tool_uses else "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens}})


def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    """An API error in the shape both providers use."""
    return Response(status, {"type": "error", "error": {"type": "api_error", "message": message}}, headers or {})


class FakeLLM:
    """``url``: base URL for the openai provider (``/v1``); ``anthropic_url`` for anthropic."""

    def __init__(self) -> None:
        self.scripts: dict[str | None, list[Script]] = {}  # by model name; None: any model
        self.requests: list[Request] = []
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                request = Request(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with fake.lock:
                    fake.requests.append(request)
                    model = body.get("model")
                    queue = fake.scripts.get(model) if fake.scripts.get(model) else fake.scripts.get(None)
                    step = queue.pop(0) if queue else error(500, f"the fake LLM has no reply left for {model!r}")
                reply = step(request) if callable(step) else step
                data = json.dumps(reply.body).encode()
                self.send_response(reply.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.anthropic_url = f"http://127.0.0.1:{self.server.server_port}"

    def add(self, *steps: Script, model: str | None = None) -> None:
        """Queue replies, for requests naming ``model`` (or for any request)."""
        with self.lock:
            self.scripts.setdefault(model, []).extend(steps)

    def bodies(self, model: str) -> list[dict[str, Any]]:
        return [r.body for r in self.requests if r.body.get("model") == model]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
