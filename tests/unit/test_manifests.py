"""`compozy validate`: YAML read as kubectl reads it, the operator's checks, file:line findings."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from pathlib import Path

import pytest

from compozy_operator.manifests import go_resolve, load_yaml, message_path, validate

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
WF = """\
apiVersion: compozy.dev/v1alpha1
kind: Workflow
metadata: {name: w}
spec:
  input:
    type: object
    properties:
      text: {type: string}
      mode: {type: string, default: short}
    required: [text]
  tools:
    - id: t
      python: "def run(i, c): return {}"
  tasks:
    - id: count
      tool: t
      with: {text: "{{ workflow.input.text }}"}
      onSuccess: {next: summarize}
    - id: summarize
      tool: t
      with: {text: "{{ tasks.frist.output }}"}
"""
EXEC = """\
apiVersion: compozy.dev/v1alpha1
kind: WorkflowExecution
metadata: {name: e}
spec:
  workflowRef: {name: %s}
  input:
    text: %s
"""


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "compozy_operator.cli", "validate", *args],
                          capture_output=True, text=True, input=stdin)


def lines(report) -> list[str]:
    return [str(f) for f in report.findings]


# kubectl's own reading (sigs.k8s.io/yaml v1.6.0 over go.yaml.in/yaml/v2 v2.4.2, the versions of
# the cluster's kubectl): each value was printed by a Go program calling yaml.YAMLToJSON.
@pytest.mark.parametrize("text, value", [
    ("y", True), ("Y", True), ("yes", True), ("on", True), ("ON", True), ("n", False), ("No", False),
    ("off", False), ("true", True), ("False", False), ("tRue", "tRue"), ("~", None), ("null", None), ("", None),
    ("0755", 493), ("08", 8.0), ("0o17", 15), ("0x1F", 31), ("0b101", 5), ("-0b101", -5), ("1e3", 1000.0),
    ("1_000", 1000), (".5", 0.5), ("1.", 1.0), ("1:30", "1:30"), ("190:20:30", "190:20:30"),
    ("2024-01-01", "2024-01-01"), ("2024-01-01T10:00:00Z", "2024-01-01T10:00:00Z"), ("12abc", "12abc"),
    ("0b2", "0b2"), ("1e400", "1e400"), ("18446744073709551615", 18446744073709551615), ("inf", "inf"),
    ("-", "-"), ("yeS", "yeS"), ("0.1_0", 0.1), ("+12", 12),
])
def test_scalars_resolve_as_kubectl_resolves_them(text: str, value) -> None:
    got = go_resolve(text)
    assert got == value and type(got) is type(value), (text, got)


def test_keys_become_strings_as_kubectl_makes_them() -> None:
    docs, findings = load_yaml("n: 1\n'y': 2\n3: 3\n1.5: 4\n1e6: 5\ntrue: 6\n", "f")
    assert docs[0].value == {"false": 1, "y": 2, "3": 3, "1.5": 4, "1e+06": 5, "true": 6}
    assert [str(f) for f in findings] == [
        "f:1: warning: key `n` is read as the boolean false by kubectl, so the field is named 'false'; "
        "quote it if you meant the string"]


@pytest.mark.parametrize("text, problem", [
    ("a: .inf\n", "f:1: error: .inf is not a JSON number"),
    ("? [1]\n: 2\n", "f:1: error: a map key must be a scalar"),
    ("~: 1\n", "f:1: error: a null map key"),
    ("a: !!int abc\n", "f:1: error: cannot decode !!str `abc` as a !!int"),
    ("a: &x [*x]\n", "error: an anchor's value contains itself"),
    ("a: [unclosed\n", "f:2: error: not valid YAML"),
    ("a: *nope\n", "error: not valid YAML: found undefined alias 'nope'"),
])
def test_what_kubectl_refuses_is_an_error(text: str, problem: str) -> None:
    _, findings = load_yaml(text, "f")
    assert any(str(f).startswith(problem) or problem in str(f) for f in findings), findings


def test_merge_keys_tags_anchors_and_duplicates() -> None:
    docs, findings = load_yaml("a: &x {k: 1, j: 2}\nb:\n  k: 0\n  <<: *x\nc: !!str yes\nd: 'on'\ne: &x 3\nf: *x\n"
                               "g: 1\ng: 2\n", "f")
    assert docs[0].value == {"a": {"k": 1, "j": 2}, "b": {"k": 1, "j": 2}, "c": "yes", "d": "on", "e": 3, "f": 3,
                             "g": 2}  # a merge overrides the keys before it, as in go-yaml
    assert [str(f) for f in findings] == ["f:10: warning: duplicate key 'g' (also on line 9); kubectl keeps the last one"]


def test_excessive_aliasing_is_refused() -> None:
    bomb = "a: &a [" + ",".join(["x"] * 10) + "]\n"
    for i in range(1, 8):
        bomb += f"{'abcdefgh'[i]}: &{'abcdefgh'[i]} [" + ",".join([f"*{'abcdefgh'[i - 1]}"] * 10) + "]\n"
    _, findings = load_yaml(bomb, "f")
    assert [f.message for f in findings] == ["document contains excessive aliasing (kubectl refuses it)"]


def test_message_path() -> None:
    assert message_path("spec.tasks[1] (summarize).with.text: tasks.frist ...") == (
        "spec", "tasks", 1, "with", "text")
    assert message_path("something else") == ()


def test_every_example_is_valid() -> None:
    out = cli(str(EXAMPLES))
    files = len(list(EXAMPLES.glob("*.yaml")))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{files} file(s) valid"
    assert out.stderr.count("note: not checked offline:") == 1 and "Secret llm-credentials (key api-key)" in out.stderr


def test_findings_name_file_line_path_and_problem(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(WF + "---\n" + EXEC % ("w", "n"))
    report = validate([str(tmp_path)])
    f = str(tmp_path / "wf.yaml")
    assert lines(report) == [
        f"{f}:21: error: spec.tasks[1] (summarize).with.text: tasks.frist does not exist (tasks: count, summarize)",
        f"{f}:29: warning: `n` is read as a boolean (false) by kubectl; quote it if you meant the string",
        f"{f}:29: error: spec.input.text: False is not of type 'string'",
    ]
    assert not report.valid


def test_boolean_key_breaks_the_schema_with_its_path(tmp_path: Path) -> None:
    good = WF.replace("tasks.frist", "tasks.count")
    report = validate(["-"], stdin=io.StringIO(good + "---\n" + EXEC.replace("text: %s", "n: %s") % ("w", "'x'")))
    assert lines(report) == [
        "<stdin>:28: error: spec.input: 'text' is a required property",
        "<stdin>:29: warning: key `n` is read as the boolean false by kubectl, so the field is named 'false'; "
        "quote it if you meant the string",
    ]


def test_execution_whose_workflow_is_elsewhere_is_a_note_or_with_strict_an_error(tmp_path: Path) -> None:
    (tmp_path / "e.yaml").write_text(EXEC % ("x", "hi"))
    out = cli(str(tmp_path / "e.yaml"))
    assert out.returncode == 0, out.stderr
    assert (f"{tmp_path / 'e.yaml'}:5: note: spec.workflowRef: Workflow 'x' not in the given files: input not checked "
            "against its schema") in out.stderr
    assert cli("--strict", str(tmp_path / "e.yaml")).returncode == 1


def test_workflow_in_another_file_and_list_kind(tmp_path: Path) -> None:
    good = WF.replace("tasks.frist", "tasks.count")
    (tmp_path / "a.yaml").write_text(good)
    listed = ("apiVersion: v1\nkind: List\nitems:\n  - apiVersion: compozy.dev/v1alpha1\n    kind: WorkflowExecution\n"
              "    metadata: {name: e}\n    spec:\n      workflowRef: {name: w}\n      input: {text: 3}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yml").write_text(listed)
    (tmp_path / "notes.txt").write_text("ignored")
    report = validate([str(tmp_path)])
    assert report.files == 2
    assert lines(report) == [f"{tmp_path / 'sub' / 'b.yml'}:9: error: spec.input.text: 3 is not of type 'string'"]


def test_defaults_are_applied_before_the_input_is_checked() -> None:
    good = WF.replace("tasks.frist", "tasks.count").replace("required: [text]", "required: [text, mode]")
    report = validate(["-"], stdin=io.StringIO(good + "---\n" + EXEC % ("w", "hi")))
    assert report.valid and lines(report) == []


def test_execution_shape_errors() -> None:
    head = "apiVersion: compozy.dev/v1alpha1\nkind: WorkflowExecution\nmetadata: {name: e}\n"
    report = validate(["-"], stdin=io.StringIO(head + "spec: {}\n---\n" + head + "spec: {workflowRef: {name: x}, "
                                               "timeout: soon}\n"))
    assert lines(report)[0] == ("<stdin>:4: error: spec: exactly one of spec.workflowRef or spec.workflow must be "
                                "set")
    assert "<stdin>:9: error: spec.timeout: invalid duration 'soon': use a number with ms, s, m or h" in lines(report)[1]


def test_deep_input_is_refused_like_the_cluster_refuses_it() -> None:
    head = "apiVersion: compozy.dev/v1alpha1\nkind: WorkflowExecution\nmetadata: {name: e}\n"
    report = validate(["-"], stdin=io.StringIO(head + "spec:\n  workflowRef: {name: x}\n  input: " + "[" * 70 +
                                               "]" * 70 + "\n"))
    assert [f.message for f in report.errors] == ["spec.input: nested 70 levels deep; at most 64 are allowed"]


def test_usage_and_unreadable_files(tmp_path: Path) -> None:
    assert cli().returncode == 2
    out = cli(str(tmp_path / "missing.yaml"))
    assert out.returncode == 1 and "missing.yaml: error: no such file or directory" in out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: [unclosed\n")
    out = cli(str(bad))
    assert out.returncode == 1 and f"{bad}:2: error: not valid YAML" in out.stderr
    assert "1 error(s), 0 warning(s) in 1 file(s)" in out.stderr


def test_stdin_and_warnings_keep_exit_zero() -> None:
    wf = WF.replace("tasks.frist", "tasks.count").replace('{text: "{{ workflow.input.text }}"}', "{flag: on}")
    out = cli("-", stdin=wf)
    assert out.returncode == 0, out.stderr
    assert "<stdin>:17: warning: `on` is read as a boolean (true) by kubectl" in out.stderr
    assert out.stdout.strip() == "1 file(s) valid, 1 warning(s)"


def test_not_ours_is_skipped_and_nan_is_not() -> None:
    report = validate(["-"], stdin=io.StringIO("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n---\n---\n"
                                               "apiVersion: compozy.dev/v1beta9\nkind: Workflow\n"))
    assert [f.message for f in report.findings] == [
        "apiVersion: 'compozy.dev/v1beta9' is not served (use compozy.dev/v1alpha1)"]
    assert math.isnan(go_resolve(".nan"))


def test_validate_bounds_a_catastrophic_regex(tmp_path) -> None:
    """`compozy validate` ran forever on a ReDoS pattern with a hostile input; now 2 s of CPU."""
    from compozy_operator.cli import main

    path = tmp_path / "redos.yaml"
    path.write_text("""apiVersion: compozy.dev/v1alpha1
kind: Workflow
metadata: {name: w}
spec:
  input: {type: object, properties: {s: {type: string, pattern: '^(a+)+$'}}}
  tools: [{id: t, command: ["true"]}]
  tasks: [{id: a, tool: t}]
---
apiVersion: compozy.dev/v1alpha1
kind: WorkflowExecution
metadata: {name: e}
spec: {workflowRef: {name: w}, input: {s: 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa!'}}
""")
    assert main(["validate", str(path)]) == 1


def test_validate_checks_names_and_input_size_as_the_cluster_does(tmp_path) -> None:
    from compozy_operator.cli import main

    doc = ("apiVersion: compozy.dev/v1alpha1\nkind: WorkflowExecution\nmetadata: {name: NAME}\n"
           "spec: {workflow: {tools: [{id: t, command: ['true']}], tasks: [{id: a, tool: t}]}, input: INPUT}\n")
    bad_name = tmp_path / "name.yaml"
    bad_name.write_text(doc.replace("NAME", "'bad;rm -rf /'").replace("INPUT", "{}"))
    big = tmp_path / "big.yaml"
    big.write_text(doc.replace("NAME", "ok").replace("INPUT", "{pad: " + "x" * 1_100_000 + "}"))
    fine = tmp_path / "fine.yaml"
    fine.write_text(doc.replace("NAME", "ok").replace("INPUT", "{pad: x}"))
    assert main(["validate", str(bad_name)]) == 1
    assert main(["validate", str(big)]) == 1
    assert main(["validate", str(fine)]) == 0
