"""system.Runtime: python and command tools, their failures."""

from __future__ import annotations

import sys

import pytest

from compozy_operator.runtime import ToolContext, ToolError, command_result, run_tool
from compozy_operator.task_logs import MAX_LINE, pieces

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


def test_command_output_lines_are_copied_not_lost(capfd) -> None:
    script = ("import sys\nfor i in range(300):\n    sys.stderr.write(f'progress {i}\\n')\n"
              "print('a message of the tool')\nprint('{\"done\": true}')\n")
    out = run_tool({"id": "c", "command": [sys.executable, "-c", script]}, {}, CTX)
    assert out == {"done": True}
    copied = capfd.readouterr()
    assert copied.err.splitlines() == [f"progress {i}" for i in range(300)]  # every line, in order
    assert copied.out.splitlines() == ["a message of the tool"]  # the result is not shown


def test_a_failed_command_shows_its_output_and_names_its_stderr_tail(capfd) -> None:
    script = "import sys\nprint('partial')\nsys.stderr.write('line 1\\nthe cause\\n')\nsys.exit(3)\n"
    with pytest.raises(ToolError) as err:
        run_tool({"id": "c", "command": [sys.executable, "-c", script]}, {}, CTX)
    assert err.value.message == "tool c: exit code 3: line 1\nthe cause"
    copied = capfd.readouterr()
    assert copied.out == "partial\n" and copied.err == "line 1\nthe cause\n"


@pytest.mark.parametrize("stdout, result, shown", [
    ('{"a": 1}', {"a": 1}, []),
    ('{\n  "a": 1\n}\n', {"a": 1}, []),  # pretty-printed: the whole stdout is the result
    ('starting\n{"a": 1}\n', {"a": 1}, ["starting"]),
    ("", {}, []),
])
def test_command_result_is_the_whole_stdout_else_its_last_line(stdout, result, shown, capsys) -> None:
    assert command_result(stdout, "c") == result
    assert capsys.readouterr().out.splitlines() == shown


def test_a_command_without_a_json_line_shows_what_it_printed(capsys) -> None:
    with pytest.raises(ToolError, match="nor is its last line: 'two'"):
        command_result("one\ntwo\n", "c")
    assert capsys.readouterr().out == "one\ntwo\n"


def test_log_lines_are_cut_into_pieces() -> None:
    assert pieces("a\nb\r\n\nc\n") == ["a", "b", "", "c"]
    long = pieces("x" * (MAX_LINE * 2 + 1))
    assert [len(p) for p in long] == [MAX_LINE, MAX_LINE, 1]
