"""system.Runtime: runs a tool (inline ``python`` or a ``command``) inside the task pod.

A python tool defines ``run(input, ctx)`` returning a JSON-serialisable dict; an exception
fails the attempt with its message. A command tool gets the input JSON on stdin and the facts
of the attempt as ``COMPOZY_*`` environment variables, prints its output JSON on stdout, and
fails with a non-zero exit (stderr becomes the message). Agents (:mod:`.agents`) call these same
tools through function calling.

A command's output lines are not lost: its stderr is copied, line by line as it comes, to this
process's stderr, and stdout lines before the result (when the whole stdout is not one JSON value,
the result is its last line) to this process's stdout; in a task pod both become log lines
(:mod:`.task_logs`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any

MAX_ERROR_CHARS = 2000
STDERR_TAIL_LINES = 200  # of a failed command's stderr kept for its error message (then cut to MAX_ERROR_CHARS)
NATS_TOKEN_FILE_ENV = "COMPOZY_NATS_TOKEN_FILE"


class TaskFailure(Exception):
    """An attempt failed for ``reason`` (which decides whether the task's retry policy applies)."""

    def __init__(self, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message[-MAX_ERROR_CHARS:]
        self.retry_after = retry_after

    def info(self) -> dict[str, Any]:
        out: dict[str, Any] = {"reason": self.reason, "message": self.message}
        if self.retry_after is not None:
            out["retryAfter"] = self.retry_after
        return out


class ToolError(TaskFailure):
    """A tool failed (load error, exception, non-zero exit, output not a JSON object)."""


@dataclass
class ToolContext:
    """What a tool knows about the attempt it runs in (``ctx`` of ``run(input, ctx)``)."""

    attempt: int
    task: str
    execution: str
    namespace: str
    env: dict[str, str] = field(default_factory=dict)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("compozy.tool"))

    def environ(self) -> dict[str, str]:
        return {"COMPOZY_ATTEMPT": str(self.attempt), "COMPOZY_TASK": self.task,
                "COMPOZY_EXECUTION": self.execution, "COMPOZY_NAMESPACE": self.namespace}


def _json_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ToolError("InvalidOutput", f"{what} must be a JSON object, got {type(value).__name__}")
    try:
        json.dumps(value)
    except (TypeError, ValueError) as e:
        raise ToolError("InvalidOutput", f"{what} is not JSON-serialisable: {e}") from e
    return value


def run_python(code: str, tool_id: str, value: Any, ctx: ToolContext) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": f"compozy_tool_{tool_id.replace('-', '_')}"}
    try:
        exec(compile(code, f"<tool {tool_id}>", "exec"), namespace)  # noqa: S102 - the workflow's own code, in its own pod
    except Exception as e:  # noqa: BLE001
        raise ToolError("ToolLoadError", f"tool {tool_id}: {type(e).__name__}: {e}") from e
    run = namespace.get("run")
    if not callable(run):
        raise ToolError("ToolLoadError", f"tool {tool_id}: the python code must define run(input, ctx)")
    try:
        result = run(value, ctx)
    except Exception as e:  # noqa: BLE001
        tb = traceback.extract_tb(e.__traceback__)
        where = next((f" (line {f.lineno})" for f in reversed(tb) if f.filename == f"<tool {tool_id}>"), "")
        raise ToolError("ToolError", f"{type(e).__name__}: {e}{where}") from e
    return _json_object(result, f"tool {tool_id}: run() result")


def run_command(command: list[str], tool_id: str, value: Any, ctx: ToolContext,
                extra_env: dict[str, str] | None = None) -> dict[str, Any]:
    env = {**os.environ, **ctx.env, **(extra_env or {}), **ctx.environ()}
    env.pop(NATS_TOKEN_FILE_ENV, None)  # the runner's NATS login (callout mode) is not the tool's
    try:
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    except OSError as e:
        raise ToolError("CommandNotFound", f"tool {tool_id}: cannot run {command[0]!r}: {e}") from None
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin, stderr = proc.stdin, proc.stderr
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)

    def feed() -> None:
        try:
            stdin.write(json.dumps(value).encode())
        except OSError:  # the command does not read its input: its business
            pass
        finally:
            try:
                stdin.close()
            except OSError:
                pass

    def copy_stderr() -> None:
        for raw in stderr:
            line = raw.decode(errors="replace")
            tail.append(line)
            sys.stderr.write(line if line.endswith("\n") else line + "\n")
            sys.stderr.flush()

    threads = [threading.Thread(target=feed, daemon=True), threading.Thread(target=copy_stderr, daemon=True)]
    for t in threads:
        t.start()
    stdout = proc.stdout.read()
    code = proc.wait()
    for t in threads:
        t.join()
    if code != 0:
        _show_stdout(stdout.decode(errors="replace").splitlines())
        message = "".join(tail).strip()
        raise ToolError("CommandFailed", f"tool {tool_id}: exit code {code}: {message or '(no stderr)'}")
    return _json_object(command_result(stdout.decode(errors="replace"), tool_id), f"tool {tool_id}: stdout")


def command_result(out: str, tool_id: str) -> Any:
    """A command's result: its whole stdout as JSON, else its last line, the lines before it shown
    on this process's stdout (a tool's own messages)."""
    text = out.strip()
    if not text:
        return {}
    try:
        return json.loads(text)
    except json.JSONDecodeError as whole:
        lines = text.splitlines()
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            _show_stdout(lines)
            raise ToolError("InvalidOutput", f"tool {tool_id}: stdout is not JSON ({whole}), nor is its last line: "
                            f"{lines[-1][:200]!r}") from None
        _show_stdout(lines[:-1])
        return result


def _show_stdout(lines: list[str]) -> None:
    for line in lines:
        sys.stdout.write(line + "\n")
    sys.stdout.flush()


def run_tool(tool: dict[str, Any], value: Any, ctx: ToolContext) -> dict[str, Any]:
    """Run the tool described by ``tool`` (its spec as in the Workflow) on ``value``."""
    if tool.get("python"):
        return run_python(tool["python"], tool["id"], value, ctx)
    if tool.get("command"):
        return run_command(tool["command"], tool["id"], value, ctx)
    raise ToolError("InvalidTool", f"tool {tool.get('id')}: needs python or command")
