"""Property tests of `compozy validate`: random Workflow and WorkflowExecution manifests, valid and
mutated. validate never crashes (every problem is a finding), and its verdict is the verdict of the
pure checks the cluster runs (parse_workflow, check_workflow, check_input) on the same JSON."""

from __future__ import annotations

import io
import json
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compozy_operator.manifests import validate
from compozy_operator.validation import (SpecError, apply_defaults, check_input, check_workflow, parse_workflow)

IDS = ["a", "b", "c", "d"]
TEMPLATES = ["{{ workflow.input.text }}", "{{ tasks.a.output }}", "{{ tasks.b.output.x }}", "{{ tasks.zz.output }}",
             "{{ item }}", "{{ input.x }}", "{{ x | nope }}", "{{ oops", "plain", "{{ env.E }}",
             "{{ tasks.c.output if tasks.c is defined }}"]
SCALARS = st.one_of(st.sampled_from(["y", "n", "on", "off", "yes", "0755", "1e3", "1:30", "2024-01-01", "~", ""]),
                    st.integers(-5, 5), st.booleans(), st.none(), st.text(max_size=5))


@st.composite
def tasks(draw: st.DrawFn) -> list[dict[str, Any]]:
    ids = draw(st.lists(st.sampled_from(IDS), min_size=1, max_size=4, unique=True))
    out = []
    for tid in ids:
        kind = draw(st.sampled_from(["basic", "basic", "router", "parallel", "collection"]))
        t: dict[str, Any] = {"id": tid}
        if kind == "basic":
            t |= {"tool": draw(st.sampled_from(["t", "t", "missing"])),
                  "with": {"v": draw(st.sampled_from(TEMPLATES))}}
        elif kind == "router":
            t |= {"type": "router", "condition": draw(st.sampled_from(TEMPLATES)),
                  "routes": {"x": draw(st.sampled_from(IDS))}}
        elif kind == "parallel":
            t |= {"type": "parallel", "tasks": [{"id": f"{tid}{i}", "tool": "t",
                                                 "with": {"v": draw(st.sampled_from(TEMPLATES))}} for i in range(2)]}
        else:
            t |= {"type": "collection", "items": draw(st.sampled_from(TEMPLATES + [[1, 2]])),
                  "task": {"id": f"{tid}-each", "tool": "t", "with": {"v": draw(st.sampled_from(TEMPLATES))}}}
        if draw(st.booleans()):
            t["onSuccess"] = {"next": draw(st.sampled_from(IDS))}
        if draw(st.integers(0, 3)) == 0:
            t["onError"] = {"next": draw(st.sampled_from(IDS))}
        out.append(t)
    return out


@st.composite
def manifests(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    spec: dict[str, Any] = {
        "input": {"type": "object", "properties": {"text": {"type": "string", "default": "d"},
                                                   "n": {"type": "integer"}}, "required": ["text"]},
        "env": {"E": "e"}, "tools": [{"id": "t", "python": "def run(i, c): return {}"}], "tasks": draw(tasks())}
    if draw(st.integers(0, 4)) == 0:  # a mutation: a wrong type or an unknown field somewhere
        key = draw(st.sampled_from(["timeout", "tools", "bogus", "tasks"]))
        spec[key] = draw(SCALARS)
    wf = {"apiVersion": "compozy.dev/v1alpha1", "kind": "Workflow", "metadata": {"name": "w"}, "spec": spec}
    inp = draw(st.one_of(st.none(), st.fixed_dictionaries({}, optional={"text": SCALARS, "n": SCALARS})))
    ex = {"apiVersion": "compozy.dev/v1alpha1", "kind": "WorkflowExecution", "metadata": {"name": "e"},
          "spec": {"workflowRef": {"name": "w"}, **({"input": inp} if inp is not None else {})}}
    return wf, ex


def cluster_verdict(wf: dict[str, Any], ex: dict[str, Any]) -> bool:
    """What the operator decides: the Workflow refused, or the run refused, or neither."""
    try:
        spec = parse_workflow(wf["spec"])
    except SpecError:
        return False
    if check_workflow(spec):
        return False
    value = ex["spec"].get("input")
    return not check_input(spec.input, apply_defaults(spec.input, value))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_verdict_agrees_with_the_cluster_checks(docs: tuple[dict[str, Any], dict[str, Any]]) -> None:
    wf, ex = docs
    text = json.dumps(wf) + "\n---\n" + json.dumps(ex)  # JSON: read the same by every YAML reader
    report = validate(["-"], stdin=io.StringIO(text))
    assert report.valid == cluster_verdict(wf, ex), [str(f) for f in report.findings]
    assert all(f.line for f in report.findings if f.severity == "error")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests(), st.sampled_from(["yaml", "flow"]))
def test_never_crashes_on_yaml(docs: tuple[dict[str, Any], dict[str, Any]], style: str) -> None:
    text = yaml.safe_dump_all(list(docs), default_flow_style=style == "flow", sort_keys=False)
    report = validate(["-"], stdin=io.StringIO(text))  # PyYAML leaves y/n unquoted: kubectl reads booleans
    assert all(str(f).startswith("<stdin>") for f in report.findings)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab:-[]{}&*!|>'\"\n #yn01.,?~", max_size=60))
def test_never_crashes_on_garbage(text: str) -> None:
    report = validate(["-"], stdin=io.StringIO(text))
    assert all(f.severity in ("error", "warning", "note") for f in report.findings)
