"""The CLI's pure parts: -p parsing, input merging, exit codes, the get tree, watch's change lines."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from compozy_operator.cli import main
from compozy_operator.cli.logs import error_message, logs_url
from compozy_operator.cli.render import (Style, UsageError, changes, exit_code, list_table, merge_input, parse_labels,
                                         parse_params, render_get, tree_rows)

NOW = datetime(2026, 1, 1, 12, 0, 30, tzinfo=timezone.utc)


def test_params_are_json_where_they_parse_else_strings():
    got = parse_params(["n=3", "ok=true", "xs=[1, 2]", "o={\"a\": null}", "text=hello world", "v=null",
                        "eq=a=b", "empty=", "quoted=\"3\""])
    assert got == {"n": 3, "ok": True, "xs": [1, 2], "o": {"a": None}, "text": "hello world", "v": None,
                   "eq": "a=b", "empty": "", "quoted": "3"}


@pytest.mark.parametrize("bad", ["novalue", "=3", " =x"])
def test_a_bad_param_is_named(bad):
    with pytest.raises(UsageError, match=f"-p {bad!r}: expected key=value"):
        parse_params([bad])


def test_labels():
    assert parse_labels(["team=ml", "x="]) == {"team": "ml", "x": ""}
    with pytest.raises(UsageError, match="-l 'team'"):
        parse_labels(["team"])


def test_params_go_over_the_input_file():
    assert merge_input({"a": 1, "b": 2}, {"b": 3}) == {"a": 1, "b": 3}
    assert merge_input(None, {"b": 3}) == {"b": 3}
    assert merge_input([1], {}) == [1]
    assert merge_input(None, {}) is None
    with pytest.raises(UsageError, match="holds a list, not an object"):
        merge_input([1], {"b": 3})


@pytest.mark.parametrize(("phase", "code"), [("Succeeded", 0), ("Failed", 1), ("TimedOut", 1), ("Cancelled", 1)])
def test_exit_codes_follow_the_result(phase, code):
    assert exit_code(phase) == code


def _run(tasks: dict, spec_tasks: list | None = None, **status) -> dict:
    st = {"phase": "Running", "tasks": tasks, **status}
    if spec_tasks is not None:
        st["snapshot"] = {"spec": {"tasks": spec_tasks}}
    return {"metadata": {"name": "r", "namespace": "ns", "creationTimestamp": "2026-01-01T12:00:00Z"},
            "spec": {"workflowRef": {"name": "wf"}}, "status": st}


def _t(phase: str, attempt: int = 1, **kw) -> dict:
    return {"phase": phase, "attempt": attempt, "startedAt": "2026-01-01T12:00:00Z", **kw}


SPEC = [{"id": "count", "tool": "x"},
        {"id": "fan", "type": "parallel", "tasks": [{"id": "a", "tool": "x"}, {"id": "b", "tool": "x"}]},
        {"id": "each", "type": "collection", "items": [1, 2, 3], "task": {"id": "one", "tool": "x"}},
        {"id": "never", "tool": "x"}]


def test_tree_follows_the_workflow_order_with_children():
    obj = _run({"each[1]": _t("Failed", 2, error={"message": "boom\nsecond line"}),
                "each[0]": _t("Succeeded", finishedAt="2026-01-01T12:00:01.500Z"),
                "each[2]": _t("Running"), "b": _t("Running"), "a": _t("Succeeded", finishedAt="2026-01-01T12:00:20Z"),
                "count": _t("Succeeded", finishedAt="2026-01-01T12:01:12Z")}, SPEC)
    rows = tree_rows(obj, NOW)
    assert [(r.depth, r.task, r.phase) for r in rows] == [
        (0, "count", "Succeeded"), (0, "fan", "Running"), (1, "a", "Succeeded"), (1, "b", "Running"),
        (0, "each", "Running")]
    assert rows[0].duration == "1m12s" and rows[2].duration == "20s" and rows[3].duration == "30s"
    assert rows[4].message == "3 children: 1 Running, 1 Succeeded, 1 Failed"
    expanded = tree_rows(obj, NOW, expand=True)
    assert [(r.depth, r.task, r.phase, r.attempt) for r in expanded[4:]] == [
        (0, "each", "Running", ""), (1, "each[0]", "Succeeded", "1"), (1, "each[1]", "Failed", "2"),
        (1, "each[2]", "Running", "1")]
    assert expanded[5].duration == "1.5s"
    assert expanded[6].message == "boom second line"  # one line


def test_tree_without_a_snapshot_groups_collection_children_by_key():
    obj = _run({"first": _t("Succeeded"), "each[10]": _t("Succeeded"), "each[2]": _t("Failed"),
                "each": _t("Failed", error={"reason": "ChildFailed", "message": "each[2] failed"})})
    rows = tree_rows(obj, NOW, expand=True)
    assert [(r.depth, r.task) for r in rows] == [(0, "first"), (0, "each"), (1, "each[2]"), (1, "each[10]")]
    assert rows[1].phase == "Failed" and rows[1].message == "each[2] failed"


def test_get_shows_the_facts_and_the_tree_without_colour_off_a_terminal():
    obj = _run({"count": _t("Failed", 3, error={"message": "exit code 1"})}, SPEC, phase="Failed",
               progress="1/1", message="task count failed", output=None,
               error={"task": "count", "reason": "CommandFailed"}, startedAt="2026-01-01T12:00:00Z",
               duration="4s")
    text = render_get(obj, NOW)
    assert "\x1b[" not in text
    assert "Phase:       Failed (1/1)" in text and "Error:       count: CommandFailed" in text
    assert "Output:      null" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("TASK"))
    assert lines[header].split() == ["TASK", "PHASE", "ATTEMPT", "DURATION", "MESSAGE"]
    assert lines[header + 1].split()[:3] == ["count", "Failed", "3"]
    coloured = render_get(obj, NOW, style=Style(colour=True))
    assert "\x1b[31mFailed" in coloured


def test_list_table():
    a = _run({}, phase="Succeeded", progress="2/2", duration="1s", message="succeeded")
    text = list_table([a], NOW, all_namespaces=True)
    header, row = text.splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "WORKFLOW", "PHASE", "PROGRESS", "AGE", "DURATION", "MESSAGE"]
    assert row.split() == ["ns", "r", "wf", "Succeeded", "2/2", "30s", "1s", "succeeded"]


def test_watch_prints_one_line_per_change():
    first = _run({}, phase="Pending")
    second = _run({"count": _t("Running")}, SPEC, progress="0/2")
    third = _run({"count": _t("Failed", 1, error={"message": "boom"})}, SPEC, progress="0/2")
    fourth = _run({"count": _t("Waiting", 2)}, SPEC, progress="0/2")
    fifth = _run({"count": _t("Succeeded", 2)}, SPEC, phase="Failed", progress="1/2", message="later failed")
    assert changes(None, first, "T") == ["T r Pending"]
    assert changes(first, second, "T") == ["T task count Running attempt 1", "T r Running 0/2"]
    assert changes(second, third, "T") == ["T task count Failed attempt 1: boom"]
    assert changes(third, third, "T") == []
    assert changes(third, fourth, "T") == ["T task count Waiting attempt 2"]
    assert changes(fourth, fifth, "T") == ["T task count Succeeded attempt 2", "T r Failed 1/2: later failed"]


def test_logs_request_and_errors():
    url = logs_url("http://h:8090", "my ns", "r", "each[1]", 2, True)
    assert url == "http://h:8090/api/v1/namespaces/my%20ns/executions/r/logs?task=each%5B1%5D&attempt=2&follow=true"
    assert logs_url("http://h", "ns", "r", None, None, False) == "http://h/api/v1/namespaces/ns/executions/r/logs"
    body = json.dumps({"error": {"reason": "Forbidden", "message": "cannot get executions"}}).encode()
    assert error_message(403, body) == "cannot get executions (HTTP 403)"
    assert error_message(502, b"<html>bad gateway</html>") == "HTTP 502: <html>bad gateway</html>"


def test_usage_errors_exit_2(capsys):
    assert main(["submit", "wf", "-p", "oops"]) == 2
    assert "-p 'oops': expected key=value" in capsys.readouterr().err
    assert main(["signal", "r", "go"]) == 2
    assert main(["list", "--phase", "Done"]) == 2
    assert "--phase Done: not a phase" in capsys.readouterr().err
    assert main(["submit", "wf", "--timeout", "soon"]) == 2
    with pytest.raises(SystemExit) as e:  # argparse's own errors
        main(["submit"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["submit", "wf", "--watch", "--wait"])
    assert e.value.code == 2


def test_both_entry_points_run():
    out = subprocess.run([sys.executable, "-m", "compozy_operator.cli", "version", "-o", "json"], capture_output=True,
                         text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["clientVersion"], out.stderr
    plugin = Path(sys.executable).with_name("kubectl-compozy")  # kubectl finds plugins on the PATH by this name
    out = subprocess.run([str(plugin), "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("usage: kubectl compozy"), out.stderr


def test_live_redraws_on_a_terminal_and_prints_changes_on_a_pipe(monkeypatch):
    import io

    from compozy_operator.cli.runs import Live

    first, second = _run({}, phase="Pending"), _run({"count": _t("Running")}, SPEC, progress="0/2")
    screen = io.StringIO()
    live = Live(stream=screen, redraw=True)
    live(first)
    live(second)
    frames = screen.getvalue().split("\x1b[H\x1b[2J")
    assert frames[0] == "" and len(frames) == 3 and "count" in frames[2] and "Name:        r" in frames[1]
    pipe = io.StringIO()
    live = Live(stream=pipe)  # not a terminal: a line per change, no escape codes
    live(first)
    live(second)
    live(second)
    assert [line.split(" ", 1)[1] for line in pipe.getvalue().splitlines()] == [
        "r Pending", "task count Running attempt 1", "r Running 0/2"]
    monkeypatch.setenv("NO_COLOR", "1")

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True
    assert Live(stream=Tty()).style == Style(colour=False) and Live(stream=Tty()).tty
    monkeypatch.delenv("NO_COLOR")
    assert Live(stream=Tty()).style == Style(colour=True)
