"""system.Runtime: python and command tools, their failures."""

from __future__ import annotations

import sys

import pytest

from compozy_operator.runtime import ToolContext, ToolError, run_tool

CTX = ToolContext(attempt=2, task="count", execution="run-1", namespace="ns", env={"STYLE": "x"})


def test_python_tool_gets_input_and_ctx() -> None:
    code = "def run(input, ctx):\n    return {'words': len(input['text'].split()), 'attempt': ctx.attempt}\n"
    assert run_tool({"id": "wc", "python": code}, {"text": "a b"}, CTX) == {"words": 2, "attempt": 2}


@pytest.mark.parametrize("code, reason, fragment", [
    ("def run(input, ctx):\n    raise ValueError('nope')\n", "ToolError", "ValueError: nope (line 2)"),
    ("x = 1\n", "ToolLoadError", "must define run(input, ctx)"),
    ("def run(:\n", "ToolLoadError", "SyntaxError"),
    ("def run(input, ctx):\n    return [1]\n", "InvalidOutput", "must be a JSON object, got list"),
    ("def run(input, ctx):\n    return {'x': object()}\n", "InvalidOutput", "not JSON-serialisable"),
])
def test_python_tool_failures(code: str, reason: str, fragment: str) -> None:
    with pytest.raises(ToolError) as err:
        run_tool({"id": "t", "python": code}, {}, CTX)
    assert err.value.reason == reason and fragment in err.value.message


def test_command_tool_reads_stdin_and_sees_the_facts() -> None:
    script = ("import json, os, sys; d = json.load(sys.stdin); "
              "print(json.dumps({'up': d['m'].upper(), 'task': os.environ['COMPOZY_TASK'], "
              "'attempt': os.environ['COMPOZY_ATTEMPT'], 'style': os.environ['STYLE']}))")
    out = run_tool({"id": "c", "command": [sys.executable, "-c", script]}, {"m": "hi"}, CTX)
    assert out == {"up": "HI", "task": "count", "attempt": "2", "style": "x"}


@pytest.mark.parametrize("command, reason, fragment", [
    ([sys.executable, "-c", "import sys; sys.stderr.write('bad input'); sys.exit(4)"], "CommandFailed",
     "exit code 4: bad input"),
    ([sys.executable, "-c", "print('not json')"], "InvalidOutput", "stdout is not JSON"),
    (["/no/such/binary"], "CommandNotFound", "cannot run '/no/such/binary'"),
])
def test_command_tool_failures(command, reason, fragment) -> None:
    with pytest.raises(ToolError) as err:
        run_tool({"id": "c", "command": command}, {}, CTX)
    assert err.value.reason == reason and fragment in err.value.message
