"""``compozy validate FILE|DIR|-``: what the cluster will see of a set of manifests, offline.

Files are read the way ``kubectl`` reads them (sigs.k8s.io/yaml over go-yaml v2, a YAML 1.1
dialect), not the way PyYAML does: plain ``y``/``n``/``yes``/``no``/``on``/``off`` are booleans,
``0755`` is octal, ``1e3`` is a number, ``1:30`` and dates stay strings, and map keys become JSON
strings (``n:`` is the key ``"false"``). Then the operator's own checks run: the models (the CRD
schema's source), :func:`~compozy_operator.validation.check_workflow` (references, graph,
templates), and each execution's input against its Workflow's schema after its defaults.

Every finding is one line ``file:line: error|warning|note: path: message``; only errors make the
manifests invalid.
"""

from __future__ import annotations

import base64
import math
import re
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.composer import Composer, ComposerError
from yaml.events import AliasEvent, MappingStartEvent, ScalarEvent, SequenceStartEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from .resources.models import API_VERSION, GROUP, WorkflowExecutionSpec, WorkflowSpec
from .sandbox_worker import input_check
from .validation import (
    MAX_INPUT_BYTES, SpecError, apply_defaults, check_workflow, input_problems, model_problems, name_problems,
    parse_workflow, workflow_warnings,
)

ERROR, WARNING, NOTE = "error", "warning", "note"
SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"

# ---------------------------------------------------------------------------------------------
# YAML as kubectl reads it (go.yaml.in/yaml/v2 resolve.go and decode.go, sigs.k8s.io/yaml)

_PLAIN = "tag:compozy.dev,2025:plain"  # a plain scalar without a tag: resolved below, like go-yaml
_TAG = "tag:yaml.org,2002:"
_BOOLS = {**dict.fromkeys(("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"), True),
          **dict.fromkeys(("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"), False)}
YAML11_BOOLS = frozenset(k for k in _BOOLS if k.lower() not in ("true", "false"))
_NULLS = frozenset(("", "~", "null", "Null", "NULL"))
_SPECIAL_FLOATS = {**dict.fromkeys((".nan", ".NaN", ".NAN"), math.nan),
                   **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), math.inf),
                   **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), -math.inf)}
_YAML_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
_GO_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_TIMESTAMP = re.compile(
    r"^\d{4}-\d{1,2}-\d{1,2}(?:(?:[Tt]| )\d{1,2}:\d{1,2}:\d{1,2}(?:\.\d{1,9})?(?:Z|[-+]\d{2}:\d{2})?)?$")
_DIGITS = {2: "01", 8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _go_int(text: str, signed: bool = True) -> int | None:
    """``strconv.ParseInt(text, 0, 64)`` (``ParseUint`` when not ``signed``), or None."""
    sign, body = 1, text
    if body[:1] in ("+", "-"):
        if not signed:
            return None
        sign, body = (-1 if body[0] == "-" else 1), body[1:]
    base = 10
    low = body[:2].lower()
    if low in ("0x", "0o", "0b"):
        base, body = {"0x": 16, "0o": 8, "0b": 2}[low], body[2:]
    elif body[:1] == "0" and len(body) > 1:
        base, body = 8, body[1:]
    if not body or any(c not in _DIGITS[base] for c in body):
        return None
    value = sign * int(body, base)
    if signed:
        return value if _INT64[0] <= value <= _INT64[1] else None
    return value if value < 1 << 64 else None


def _go_timestamp(text: str) -> bool:
    """Whether go-yaml takes ``text`` for a timestamp (kept as a string when decoded into JSON)."""
    if not _TIMESTAMP.match(text):
        return False
    date = text[:10].split("T")[0].split("t")[0].split(" ")[0]
    try:
        y, m, d = (int(p) for p in date.split("-"))
    except ValueError:
        return False
    return 1 <= m <= 12 and 1 <= d <= 31 and y >= 0


def go_resolve(text: str, tag: str = "") -> Any:
    """The value go-yaml v2 gives the scalar ``text`` (plain when ``tag`` is empty) decoded into
    ``interface{}``; raises ValueError where it fails (a value that does not fit its explicit tag)."""
    if tag not in ("", "str", "bool", "int", "float", "null", "timestamp"):
        return text  # go-yaml leaves other tags' scalars as they are
    hint = text[:1]
    if tag != "str" and (text == "" or hint in "+-0123456789yYnNtTfFoO~."):
        if text in _BOOLS:
            value: Any = _BOOLS[text]
        elif text in _NULLS:
            value = None
        elif text in _SPECIAL_FLOATS:
            value = _SPECIAL_FLOATS[text]
        else:
            value = _go_number(text, hint, tag)
        if value is not _NO:
            return _fit(value, text, tag)
    if tag in ("", "str"):
        return text
    raise ValueError(f"cannot decode !!str `{text}` as a !!{tag}")


class _No:
    pass


_NO = _No()


def _go_number(text: str, hint: str, tag: str) -> Any:
    if hint == ".":
        return _finite(text) if _GO_FLOAT.match(text) else _NO
    if hint not in "+-0123456789":
        return _NO
    if tag in ("", "timestamp") and _go_timestamp(text):
        return text  # a timestamp, kept as the string it is
    plain = text.replace("_", "")
    for signed in (True, False):
        if (n := _go_int(plain, signed)) is not None:
            return n
    if _YAML_FLOAT.match(plain):
        return _finite(plain)
    return _NO  # (go-yaml's own 0b/-0b fallbacks: ParseInt's base 0 took them already)


def _finite(text: str) -> Any:
    """``strconv.ParseFloat``: out of range (``1e400``) is an error, so go-yaml keeps the string."""
    value = float(text)
    return value if math.isfinite(value) else _NO


def _fit(value: Any, text: str, tag: str) -> Any:
    kinds = {"bool": bool, "null": type(None), "str": str, "timestamp": str}
    if tag in ("", "str") or (tag == "float" and isinstance(value, float | int) and not isinstance(value, bool)):
        return float(value) if tag == "float" else value
    if tag == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tag in kinds and isinstance(value, kinds[tag]):
        return value
    found = {bool: "bool", int: "int", float: "float", str: "str", type(None): "null"}[type(value)]
    raise ValueError(f"cannot decode !!{found} `{text}` as a !!{tag}")


def _float32_key(value: float) -> str:
    """``strconv.FormatFloat(v, 'g', -1, 32)``: how sigs.k8s.io/yaml names a float map key."""
    if math.isnan(value):
        return ".nan"
    if math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    f32 = struct.unpack("f", struct.pack("f", value))[0]
    for precision in range(0, 9):  # the shortest digits that read back as the same float32
        text = f"{f32:.{precision}e}"
        if struct.unpack("f", struct.pack("f", float(text)))[0] == f32:
            break
    sign = "-" if text.startswith("-") else ""
    mantissa, exp_text = text.lstrip("-").split("e")
    digits = mantissa.replace(".", "").rstrip("0") or "0"
    exp = int(exp_text)
    if exp < -4 or exp >= 6:
        body = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{body}e{'-' if exp < 0 else '+'}{abs(exp):02d}"
    point = exp + 1
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{sign}{digits}{'0' * (point - len(digits))}"
    return f"{sign}{digits[:point]}.{digits[point:]}"


class _Resolver(BaseResolver):
    """No implicit types: every plain scalar is marked, and resolved later the way go-yaml does."""

    def resolve(self, kind: type, value: str, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode and implicit[0]:
            return _PLAIN
        return super().resolve(kind, value, implicit)


class _Composer(Composer):
    """PyYAML's composer, but an anchor may be defined again (the later one wins, as in go-yaml)."""

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        if self.check_event(AliasEvent):
            event = self.get_event()
            if event.anchor not in self.anchors:
                raise ComposerError(None, None, f"found undefined alias {event.anchor!r}", event.start_mark)
            return self.anchors[event.anchor]
        event = self.peek_event()
        anchor = event.anchor
        self.descend_resolver(parent, index)
        if self.check_event(ScalarEvent):
            node = self.compose_scalar_node(anchor)
        elif self.check_event(SequenceStartEvent):
            node = self.compose_sequence_node(anchor)
        elif self.check_event(MappingStartEvent):
            node = self.compose_mapping_node(anchor)
        self.ascend_resolver()
        return node

    def compose_scalar_node(self, anchor: str | None) -> Node:
        self.anchors.pop(anchor, None)
        return super().compose_scalar_node(anchor)

    def compose_sequence_node(self, anchor: str | None) -> Node:
        self.anchors.pop(anchor, None)
        return super().compose_sequence_node(anchor)

    def compose_mapping_node(self, anchor: str | None) -> Node:
        self.anchors.pop(anchor, None)
        return super().compose_mapping_node(anchor)


class _Loader(Reader, Scanner, Parser, _Composer, _Resolver):
    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        _Composer.__init__(self)
        _Resolver.__init__(self)


class YAMLProblem(ValueError):
    def __init__(self, line: int | None, message: str) -> None:
        super().__init__(message)
        self.line, self.message = line, message


@dataclass
class Document:
    """One object of a file: its JSON value and the line of each path in it."""

    file: str
    value: Any
    line: int  # where it starts
    lines: dict[tuple[Any, ...], int] = field(default_factory=dict)

    def line_of(self, path: tuple[Any, ...]) -> int:
        for n in range(len(path), 0, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return self.line

    def item(self, index: int) -> Document:
        """Item ``index`` of a ``kind: List``, as a document of its own."""
        base = ("items", index)
        lines = {k[2:]: v for k, v in self.lines.items() if k[:2] == base}
        return Document(self.file, self.value["items"][index], self.lines.get(base, self.line), lines)


@dataclass(frozen=True)
class Finding:
    severity: str
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.severity}: {self.message}"


class _Converter:
    """YAML nodes -> JSON values as sigs.k8s.io/yaml gives them, with lines and warnings."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.findings: list[Finding] = []
        self.decoded = 0
        self.aliased = 0
        self.alias_depth = 0
        self.seen: set[int] = set()
        self.active: set[int] = set()

    def warn(self, node: Node, message: str) -> None:
        self.findings.append(Finding(WARNING, self.file, node.start_mark.line + 1, message))

    def _count(self) -> None:
        # go-yaml's limit on alias expansion ("document contains excessive aliasing")
        self.decoded += 1
        if self.alias_depth:
            self.aliased += 1
        if self.aliased > 100 and self.decoded > 1000 and self.aliased / self.decoded > _allowed_alias_ratio(
                self.decoded):
            raise YAMLProblem(None, "document contains excessive aliasing (kubectl refuses it)")

    def value(self, node: Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> Any:
        self._count()
        again = id(node) in self.seen  # a node met twice is reached through an alias
        if id(node) in self.active:
            raise YAMLProblem(node.start_mark.line + 1, "an anchor's value contains itself")
        self.seen.add(id(node))
        self.alias_depth += again
        self.active.add(id(node))
        try:
            if isinstance(node, ScalarNode):
                return self.scalar(node, key=False, report=not again)
            if isinstance(node, SequenceNode):
                out = []
                for i, item in enumerate(node.value):
                    lines.setdefault((*path, i), item.start_mark.line + 1)
                    out.append(self.value(item, (*path, i), lines))
                return out
            return self.mapping(node, path, lines, report=not again)
        finally:
            self.active.discard(id(node))
            self.alias_depth -= again

    def scalar(self, node: ScalarNode, key: bool, report: bool = True) -> Any:
        plain = node.tag == _PLAIN
        tag = "" if plain else node.tag[len(_TAG):] if node.tag.startswith(_TAG) else None
        if tag is None:
            return node.value  # a tag go-yaml does not resolve: the text
        if tag == "str" and not plain:
            return node.value
        if tag == "binary":
            try:
                return base64.b64decode(node.value, validate=False).decode("utf-8", "replace")
            except ValueError:
                raise YAMLProblem(node.start_mark.line + 1, "!!binary value contains invalid base64 data") from None
        if tag in ("seq", "map"):
            raise YAMLProblem(node.start_mark.line + 1, f"a scalar tagged !!{tag}")
        try:
            value = go_resolve(node.value, tag)
        except ValueError as e:
            raise YAMLProblem(node.start_mark.line + 1, str(e)) from None
        if plain and report:
            self._report(node, value, key)
        if not key and isinstance(value, float) and not math.isfinite(value):
            raise YAMLProblem(node.start_mark.line + 1, f"{node.value} is not a JSON number (kubectl cannot send it)")
        return value

    def _report(self, node: ScalarNode, value: Any, key: bool) -> None:
        text = node.value
        if text in YAML11_BOOLS:
            if key:
                self.warn(node, f"key `{text}` is read as the boolean {str(value).lower()} by kubectl, so the field "
                                f"is named {str(value).lower()!r}; quote it if you meant the string")
            else:
                self.warn(node, f"`{text}` is read as a boolean ({str(value).lower()}) by kubectl; quote it if you "
                                "meant the string")
        elif (isinstance(value, int | float) and not isinstance(value, bool)
              and re.match(r"^[-+]?0[0-9_]+$", text.replace("_", "") or "x")):
            self.warn(node, f"`{text}` is read as the number {value} by kubectl (a leading 0 means octal in YAML "
                            "1.1); quote it if you meant the string")

    def key(self, node: Node, report: bool) -> str:
        if not isinstance(node, ScalarNode):
            raise YAMLProblem(node.start_mark.line + 1, "a map key must be a scalar")
        value = self.scalar(node, key=True, report=report)
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            if value > _INT64[1]:
                raise YAMLProblem(node.start_mark.line + 1, f"map key {node.value} does not fit an int64 "
                                                            "(kubectl: unsupported map key)")
            return str(value)
        if isinstance(value, float):
            return _float32_key(value)
        if value is None:
            raise YAMLProblem(node.start_mark.line + 1, "a null map key (kubectl: unsupported map key)")
        return value

    def mapping(self, node: MappingNode, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int],
                report: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        keys: dict[str, Node] = {}
        for knode, vnode in node.value:
            if isinstance(knode, ScalarNode) and knode.value == "<<" and knode.tag in (_PLAIN, _TAG + "merge"):
                self._merge(vnode, out, path, lines)
                continue
            k = self.key(knode, report)
            if k in keys and report:
                self.warn(knode, f"duplicate key {k!r} (also on line {keys[k].start_mark.line + 1}); kubectl keeps "
                                 "the last one")
            keys[k] = knode
            lines[(*path, k)] = knode.start_mark.line + 1
            out[k] = self.value(vnode, (*path, k), lines)
        return out

    def _merge(self, node: Node, out: dict[str, Any], path: tuple[Any, ...],
               lines: dict[tuple[Any, ...], int]) -> None:
        sources = list(reversed(node.value)) if isinstance(node, SequenceNode) else [node]
        for source in sources:  # earlier mappings take precedence: applied last
            if not isinstance(source, MappingNode):
                raise YAMLProblem(node.start_mark.line + 1, "map merge requires map or sequence of maps as the value")
            merged = self.value(source, path, {})
            out.update(merged)
            for k in merged:
                lines.setdefault((*path, k), source.start_mark.line + 1)


def _allowed_alias_ratio(decoded: int) -> float:
    low, high = 400_000, 4_000_000
    if decoded <= low:
        return 0.99
    if decoded >= high:
        return 0.10
    return 0.99 - 0.89 * (decoded - low) / (high - low)


def load_yaml(text: str, file: str) -> tuple[list[Document], list[Finding]]:
    """The documents of a YAML (or JSON) stream as kubectl reads them, and what to say about it.
    A stream that does not read gives one error finding (and the documents before it)."""
    conv = _Converter(file)
    docs: list[Document] = []
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            conv.seen.clear()
            lines: dict[tuple[Any, ...], int] = {}
            value = conv.value(node, (), lines)
            if value is not None:  # empty documents are skipped, as kubectl does
                docs.append(Document(file, value, node.start_mark.line + 1, lines))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        conv.findings.append(Finding(ERROR, file, mark.line + 1 if mark else None,
                                     f"not valid YAML: {e.problem or e.context}"))
    except yaml.YAMLError as e:
        conv.findings.append(Finding(ERROR, file, None, f"not valid YAML: {e}"))
    except YAMLProblem as e:
        conv.findings.append(Finding(ERROR, file, e.line, e.message))
    except RecursionError:
        conv.findings.append(Finding(ERROR, file, None, "nested too deeply to read"))
    finally:
        loader.dispose()
    return docs, conv.findings


# ---------------------------------------------------------------------------------------------
# The checks

_PATH_HEAD = re.compile(r"^(?:spec|metadata|apiVersion|kind|status)\b")
_PATH_TOKEN = re.compile(r"\.([^.\[\s:]+)|\[(\d+)\]| \([^)]*\)")


def message_path(message: str) -> tuple[Any, ...]:
    """The field path a message starts with: ``spec.tasks[1] (b).with.x: ...`` -> (spec, tasks, 1, with, x)."""
    head = _PATH_HEAD.match(message)
    if not head:
        return ()
    out: list[Any] = [head.group(0)]
    pos = head.end()
    while (m := _PATH_TOKEN.match(message, pos)) is not None:
        if m.group(1) is not None:
            out.append(m.group(1))
        elif m.group(2) is not None:
            out.append(int(m.group(2)))
        pos = m.end()
    return tuple(out)


@dataclass
class Report:
    files: int = 0
    findings: list[Finding] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)  # what only the cluster can tell

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == WARNING]

    @property
    def valid(self) -> bool:
        return not self.errors


class _Check:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.report = Report()
        self.workflows: dict[tuple[str | None, str], WorkflowSpec] = {}
        self.broken: set[tuple[str | None, str]] = set()  # Workflows in the files that did not parse
        self.executions: list[Document] = []
        self._unchecked: dict[str, None] = {}

    def add(self, doc: Document, severity: str, message: str) -> None:
        self.report.findings.append(Finding(severity, doc.file, doc.line_of(message_path(message)), message))

    def document(self, doc: Document) -> None:
        obj = doc.value
        if not isinstance(obj, dict):
            self.add(doc, ERROR, "not a Kubernetes object (a map with apiVersion and kind)")
            return
        api, kind = obj.get("apiVersion"), obj.get("kind")
        if not api or not kind:
            self.add(doc, ERROR, f"{'apiVersion' if not api else 'kind'}: not set (kubectl refuses the object)")
            return
        if not isinstance(api, str) or not isinstance(kind, str):
            self.add(doc, ERROR, "apiVersion and kind must be strings")
            return
        if kind.endswith("List") and isinstance(obj.get("items"), list):
            for i, item in enumerate(obj.get("items") or []):
                self.document(doc.item(i))
            return
        if not api.startswith(f"{GROUP}/"):
            return  # not ours (a Secret, a ConfigMap, ...)
        if api != API_VERSION:
            self.add(doc, ERROR, f"apiVersion: {api!r} is not served (use {API_VERSION})")
            return
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        if not meta.get("name") and not meta.get("generateName"):
            self.add(doc, ERROR, "metadata.name: a name (or generateName, with kubectl create) is required")
        for problem in name_problems(meta):
            self.add(doc, ERROR, problem)
        if kind == "Workflow":
            self.workflow(doc, meta)
        elif kind == "WorkflowExecution":
            self.executions.append(doc)
        else:
            self.add(doc, ERROR, f"kind: unknown kind {kind!r} (expected Workflow or WorkflowExecution)")

    def workflow(self, doc: Document, meta: dict[str, Any]) -> None:
        key = (meta.get("namespace"), str(meta.get("name") or ""))
        try:
            wf = parse_workflow(doc.value.get("spec"))
        except SpecError as e:
            self.broken.add(key)
            for p in e.problems:
                self.add(doc, ERROR, p)
            return
        self.workflow_checks(doc, wf, "spec")
        self.workflows[key] = wf

    def workflow_checks(self, doc: Document, wf: WorkflowSpec, prefix: str) -> None:
        problems = check_workflow(wf, prefix)
        for p in problems:
            self.add(doc, ERROR, p)
        if not problems:
            for w in workflow_warnings(wf, prefix):
                self.add(doc, WARNING, w)
        self.note_unchecked(wf)

    def note_unchecked(self, wf: WorkflowSpec) -> None:
        for agent in wf.agents or []:
            ref = agent.model.api_key_secret_ref
            if ref:
                self._unchecked[f"Secret {ref.name} (key {ref.key})"] = None
            self._unchecked[f"model endpoint {agent.model.base_url or agent.model.provider + ' (public API)'}"] = None
        for tool in wf.tools or []:
            if tool.image:
                self._unchecked[f"image {tool.image}"] = None
            for var in tool.env or []:
                source = var.get("valueFrom") if isinstance(var, dict) else None
                for kind, label in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                    ref = source.get(kind) if isinstance(source, dict) else None
                    if isinstance(ref, dict):
                        self._unchecked[f"{label} {ref.get('name')} (key {ref.get('key')})"] = None

    def execution(self, doc: Document) -> None:
        raw = doc.value.get("spec")
        meta = doc.value.get("metadata") if isinstance(doc.value.get("metadata"), dict) else {}
        problems = input_problems(raw.get("input"), MAX_INPUT_BYTES) if isinstance(raw, dict) else []
        for problem in problems:
            self.add(doc, ERROR, problem)
        if problems:
            return
        try:
            spec = WorkflowExecutionSpec.model_validate(raw if raw is not None else {})
        except ValidationError as e:
            for problem in model_problems(e):
                self.add(doc, ERROR, problem)
            return
        if (spec.workflow is None) == (spec.workflow_ref is None):
            self.add(doc, ERROR, "spec: exactly one of spec.workflowRef or spec.workflow must be set")
            return
        if spec.workflow is not None:
            wf: WorkflowSpec | None = spec.workflow
            before = len(self.report.errors)
            self.workflow_checks(doc, spec.workflow, "spec.workflow")
            if len(self.report.errors) > before:
                return
        else:
            name = spec.workflow_ref.name if spec.workflow_ref else ""
            ns = meta.get("namespace")
            known = [*self.workflows, *self.broken]
            key = next((k for k in known if k[1] == name and (k[0] == ns or None in (k[0], ns))), None)
            if key in self.broken:
                return  # its own problems are reported where it is
            wf = self.workflows.get(key) if key else None
            if wf is None:
                severity = ERROR if self.strict else NOTE
                self.add(doc, severity, f"spec.workflowRef: Workflow {name!r} not in the given files: input not "
                                        "checked against its schema")
                return
        for p in input_check(wf.input, apply_defaults(wf.input, spec.input))["problems"]:  # bounded if guarded
            self.add(doc, ERROR, p)

    def finish(self) -> Report:
        for doc in self.executions:
            self.execution(doc)
        if self.workflows or self.executions:
            self.report.unchecked = [*self._unchecked, "that referenced Workflows and Secrets exist in the "
                                     "namespace, and what only the cluster decides (quotas, RBAC, pod scheduling)"]
        return self.report


def expand(targets: Iterable[str]) -> tuple[list[str], list[Finding]]:
    """FILE|DIR|- arguments -> files (a directory: every *.yaml, *.yml, *.json in it, recursively, sorted)."""
    files: list[str] = []
    problems: list[Finding] = []
    for target in targets:
        path = Path(target)
        if target == STDIN:
            files.append(STDIN)
        elif path.is_dir():
            found = sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
            if not found:
                problems.append(Finding(WARNING, target, None, "no *.yaml, *.yml or *.json files in this directory"))
            files += found
        elif path.exists():
            files.append(target)
        else:
            problems.append(Finding(ERROR, target, None, "no such file or directory"))
    return files, problems


def validate(targets: list[str], strict: bool = False, stdin: Any = None) -> Report:
    """Check the manifests of ``targets`` (files, directories, ``-`` for stdin) together: an
    execution's Workflow may be in another file."""
    files, problems = expand(targets)
    check = _Check(strict)
    check.report.findings += problems
    for file in files:
        name = "<stdin>" if file == STDIN else file
        try:
            text = (stdin or sys.stdin).read() if file == STDIN else Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            check.report.findings.append(Finding(ERROR, name, None, f"cannot read: {e}"))
            continue
        docs, findings = load_yaml(text, name)
        check.report.findings += findings
        for doc in docs:
            check.document(doc)
    report = check.finish()
    report.files = len(files)
    order = {name: i for i, name in enumerate(dict.fromkeys("<stdin>" if f == STDIN else f for f in files))}
    report.findings.sort(key=lambda f: (order.get(f.file, -1), f.line or 0))
    return report
