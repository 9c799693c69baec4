"""The CustomResourceDefinitions, generated from the pydantic models in ``models.py``.

``python -m compozy_operator.resources.crd`` writes ``crds/*.yaml``; ``--check`` fails when they are
stale. The pydantic JSON schema is turned into a Kubernetes *structural* schema:

- every ``$ref`` is inlined; the recursive ``Task`` is inlined :data:`TASK_SCHEMA_DEPTH` levels
  deep, below that a task is an object whose fields are kept unchecked;
- ``Optional[X]`` (``anyOf: [X, {type: null}]``) becomes ``X``;
- ``Any`` becomes ``x-kubernetes-preserve-unknown-fields`` without a type, ``dict[str, Any]`` an
  object with ``x-kubernetes-preserve-unknown-fields``;
- ``default`` and ``title`` are dropped (the apiserver must not write defaults into user objects;
  the models apply them when the operator reads an object);
- ``additionalProperties: false`` is dropped (structural schemas prune or, with kubectl's strict
  field validation, refuse unknown fields anyway).

CEL rules (``x-kubernetes-validations``) add the cross-field checks a schema cannot say. Their
estimated cost must stay within the apiserver's budget, which is why every list in a spec has
``maxItems`` and every id a ``maxLength`` (both declared in the models).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from .models import (DURATION_PATTERN, GROUP, ISOLATED_POOL_MESSAGE, POD_FIELDS, POOLED_AGENT_KEY_MESSAGE,
                     UNPOOLED_KEY_ENV_MESSAGE, VERSION, RunnerPoolSpec, RunnerPoolStatus, WorkflowExecutionSpec,
                     WorkflowExecutionStatus, WorkflowSpec, pooled_field_message)

JSON = dict[str, Any]

#: Levels of ``Task`` with a full schema: top-level tasks and their children (a parallel's
#: ``tasks``, a collection's ``task``). Grandchildren are accepted as unchecked objects; the
#: operator validates them with the models.
TASK_SCHEMA_DEPTH = 2

COMMAND = "python -m compozy_operator.resources.crd"
HEADER = f"# Generated from compozy_operator/resources/models.py by `{COMMAND}`. Do not edit.\n"
CATEGORIES = ["compozy"]

PRESERVE = "x-kubernetes-preserve-unknown-fields"
VALIDATIONS = "x-kubernetes-validations"

# Keys copied from the JSON schema as they are (after conversion of their values where needed).
_SCALAR_KEYS = (
    "enum", "format", "pattern", "minLength", "maxLength", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "minItems", "maxItems", "minProperties", "maxProperties",
)
# Keys dropped on purpose.
_DROPPED_KEYS = {"title", "default", "examples"}
# Output key order (stable, readable YAML).
_ORDER = ("description", "type", "properties", "required", "additionalProperties", "items", *_SCALAR_KEYS,
          PRESERVE, "anyOf", VALIDATIONS)


#: Patterns whose failure the API server reports with a message in words (a CEL rule) rather than
#: by printing the regex; the same words as ``compozy validate`` and the webhook.
FRIENDLY_PATTERNS = {
    DURATION_PATTERN: "must be a duration: a number with ms, s, m or h, e.g. 90s, 5m, 1h30m",
}
PATTERN_MAX_LENGTH = 64


def _rule(rule: str, message: str, field_path: str | None = None) -> JSON:
    out: JSON = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    return out


def _not_type(t: str) -> str:
    return f"!has(self.type) || self.type != '{t}'"


#: CEL rules for each task item (of the levels with a full schema).
TASK_RULES = [
    _rule("(has(self.type) && self.type != 'basic') || has(self.tool) != has(self.agent)",
          "a basic task needs exactly one of tool or agent"),
    _rule("has(self.agent) == has(self.action)", "agent requires action (and action requires agent)"),
    _rule(f"{_not_type('router')} || (has(self.condition) && has(self.routes))",
          "a router task needs condition and routes"),
    _rule(f"{_not_type('parallel')} || (has(self.tasks) && size(self.tasks) > 0)",
          "a parallel task needs tasks"),
    # CEL cannot see `items` (a field without a type, Any, is left out of the CEL object type), so
    # "a collection needs items" is said by the admission webhook and the run's start instead.
    _rule(f"{_not_type('collection')} || has(self.task)",
          "a collection task needs task (the task to run for each item)"),
]


def task_extras(path: str) -> JSON:
    return {VALIDATIONS: TASK_RULES}


#: CEL rules for each agent: where its API key comes from, in a pod of its own or on a pool.
AGENT_RULES = [
    _rule("!has(self.pool) || !has(self.model.apiKeySecretRef)", f"model.apiKeySecretRef: {POOLED_AGENT_KEY_MESSAGE}",
          ".model.apiKeySecretRef"),
    _rule("has(self.pool) || !has(self.model.apiKeyEnv)", f"model.apiKeyEnv: {UNPOOLED_KEY_ENV_MESSAGE}",
          ".model.apiKeyEnv"),
]


def agent_extras(path: str) -> JSON:
    return {VALIDATIONS: AGENT_RULES}


#: CEL rules for each tool: a tool on a pool has the pool's settings, and no pod of its own.
TOOL_RULES = [
    _rule("!has(self.pool) || !has(self.isolation)", ISOLATED_POOL_MESSAGE, ".isolation"),
    *[_rule(f"!has(self.pool) || !has(self.{field})", pooled_field_message(field), f".{field}") for field in POD_FIELDS],
]


def tool_extras(path: str) -> JSON:
    return {VALIDATIONS: TOOL_RULES}


def workflow_spec_rules(path: str) -> list[JSON]:
    """CEL rules on a WorkflowSpec found at ``path`` (``spec`` or ``spec.workflow``)."""
    return [
        _rule("self.tasks.all(t, self.tasks.exists_one(u, u.id == t.id))",
              f"{path}.tasks: task ids must be unique", ".tasks"),
        _rule("!has(self.timeout) || duration(self.timeout) > duration('0s')",
              f"{path}.timeout must be greater than zero", ".timeout"),
    ]


def _same(field: str) -> str:
    """CEL: ``field`` is unchanged between the old and the new object (set in both and equal, or in neither)."""
    return f"(has(self.{field}) ? has(oldSelf.{field}) && self.{field} == oldSelf.{field} : !has(oldSelf.{field}))"


#: The text of the admission webhook's refusal too (admission.IMMUTABLE): CEL compares the typed
#: fields, the webhook the whole spec (``input`` is any JSON, which CEL cannot see).
IMMUTABLE_MESSAGE = ("spec is immutable once the run is created; only spec.cancel, spec.retry and "
                     "spec.ttlSecondsAfterFinished may change — "
                     "create a new WorkflowExecution (or resubmit) to run again")
#: Also said by validation.py (the webhook, `compozy validate`): a history is a Workflow's runs.
INLINE_HISTORY_MESSAGE = ("spec.workflow.historyLimit: only a Workflow keeps a history of runs; set it on a Workflow "
                          "(an inline workflow's run can use spec.ttlSecondsAfterFinished)")
#: The texts of the retry rules, shared with the admission webhook (admission.py).
RETRY_UP_MESSAGE = "spec.retry can only go up, by one at a time (each raise asks for one more retry)"
CANCEL_FINAL_MESSAGE = ("spec.cancel: a cancelled run stays cancelled (cannot go from true back to false), except "
                        "in the patch that retries it (spec.retry raised)")
RETRY_CANCEL_MESSAGE = ("spec.cancel: remove it (or set it false) in the patch that raises spec.retry, or the "
                        "retried run would be cancelled at once")


def _retry_of(obj: str) -> str:
    return f"(has({obj}.retry) ? {obj}.retry : 0)"


_RAISED = f"{_retry_of('self')} > {_retry_of('oldSelf')}"

EXECUTION_SPEC_RULES = [
    _rule("has(self.workflowRef) != has(self.workflow)",
          "exactly one of spec.workflowRef or spec.workflow must be set"),
    _rule("!has(self.workflow) || !has(self.workflow.historyLimit)", INLINE_HISTORY_MESSAGE, ".workflow.historyLimit"),
    _rule(" && ".join(_same(f) for f in ("workflowRef", "workflow", "timeout")), IMMUTABLE_MESSAGE),
    _rule(f"!has(oldSelf.cancel) || !oldSelf.cancel || (has(self.cancel) && self.cancel) || {_RAISED}",
          CANCEL_FINAL_MESSAGE, ".cancel"),
    _rule(f"{_retry_of('self')} >= {_retry_of('oldSelf')} && {_retry_of('self')} <= {_retry_of('oldSelf')} + 1",
          RETRY_UP_MESSAGE, ".retry"),
    _rule(f"!({_RAISED}) || !has(self.cancel) || !self.cancel", RETRY_CANCEL_MESSAGE, ".cancel"),
]

_PHASE = "(has(self.status) && has(self.status.phase) ? self.status.phase : 'Pending')"
#: On the whole object, so that they see the status (which an update of the object cannot change):
#: only a run that ended without success is retried, and only once its previous retry has begun.
EXECUTION_RULES = [
    {**_rule(f"!({_retry_of('self.spec')} > {_retry_of('oldSelf.spec')}) || "
             f"{_PHASE} in ['Failed', 'TimedOut', 'Cancelled']",
             "spec.retry: only a run that ended Failed, TimedOut or Cancelled can be retried", ".spec.retry"),
     "messageExpression": "'spec.retry: only a run that ended Failed, TimedOut or Cancelled can be retried; this "
                          f"one is ' + {_PHASE}"},
    _rule(f"!({_retry_of('self.spec')} > {_retry_of('oldSelf.spec')}) || "
          f"(has(self.status) && has(self.status.retries) ? self.status.retries : 0) >= {_retry_of('oldSelf.spec')}",
          "spec.retry: the previous retry has not begun yet (status.retries is below it); raise it once it has",
          ".spec.retry"),
]

#: Written by the operator (workflow_status.py): is the Workflow valid, for which generation.
WORKFLOW_STATUS_SCHEMA: JSON = {
    "description": "Whether the Workflow is valid, written by the operator (workflow_status.py).",
    "type": "object",
    "properties": {
        "observedGeneration": {"description": "The metadata.generation the conditions describe.",
                               "type": "integer"},
        "taskCount": {"description": "Number of top-level tasks.", "type": "integer"},
        "conditions": {
            "description": "Ready: True when the spec passes every check (the problems otherwise).",
            "type": "array",
            "maxItems": 8,
            "items": {
                "type": "object",
                "properties": {
                    "type": {"type": "string"},
                    "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
                    "reason": {"type": "string"},
                    "message": {"type": "string"},
                    "lastTransitionTime": {"type": "string", "format": "date-time"},
                    "observedGeneration": {"type": "integer"},
                },
                "required": ["type", "status"],
            },
        },
    },
}


class SchemaError(ValueError):
    """The JSON schema uses something a structural schema cannot express (or we do not handle yet)."""


class _Converter:
    """Turns one pydantic JSON schema into a structural schema."""

    def __init__(self, root: JSON, path: str, def_extras: dict[str, Callable[[str], JSON]]) -> None:
        self.defs: dict[str, JSON] = root.get("$defs", {})
        self.path = path
        self.def_extras = def_extras
        self.root = root

    def convert(self) -> JSON:
        return self._node(self.root, self.path, ())

    def _node(self, node: JSON, path: str, stack: tuple[str, ...]) -> JSON:
        node = dict(node)
        node.pop("$defs", None)
        if "anyOf" in node:
            branches = [b for b in node.pop("anyOf") if b != {"type": "null"}]
            if len(branches) != 1:
                raise SchemaError(f"{path}: anyOf with several non-null branches is not structural: {branches}")
            # the field's own description (and constraints) win over the referenced model's
            return self._node({**branches[0], **node}, path, stack)
        if "$ref" in node:
            name = node.pop("$ref").removeprefix("#/$defs/")
            if name not in self.defs:
                raise SchemaError(f"{path}: unknown $ref {name}")
            if name == "Task" and stack.count(name) >= TASK_SCHEMA_DEPTH:
                desc = node.get("description") or self.defs[name].get("description")
                out: JSON = {"type": "object", PRESERVE: True}
                return {"description": desc, **out} if desc else out
            target = {**self.defs[name], **node}
            converted = self._node(target, path, (*stack, name))
            if name in self.def_extras:
                converted.update(self.def_extras[name](path))
            return self._ordered(converted)
        if "const" in node:
            node["enum"] = [node.pop("const")]

        out = {}
        for key in list(node):
            if key in _DROPPED_KEYS:
                node.pop(key)
        if desc := node.pop("description", None):
            out["description"] = desc
        typ = node.pop("type", None)
        if typ is not None:
            if not isinstance(typ, str):
                raise SchemaError(f"{path}: a list of types is not structural: {typ}")
            out["type"] = typ
        props = node.pop("properties", None)
        required = node.pop("required", None)
        addl = node.pop("additionalProperties", None)
        items = node.pop("items", None)
        if props is not None:
            out["properties"] = {k: self._node(v, f"{path}.{k}", stack) for k, v in props.items()}
            if required:
                out["required"] = list(required)
            # structural schemas do not allow properties and additionalProperties together
            if addl is True:
                out[PRESERVE] = True
            elif isinstance(addl, dict):
                raise SchemaError(f"{path}: properties with an additionalProperties schema are not structural")
        elif typ == "object":
            if addl is None or addl is True or addl == {}:
                out[PRESERVE] = True
            elif isinstance(addl, dict):
                out["additionalProperties"] = self._node(addl, f"{path}.*", stack)
            else:
                raise SchemaError(f"{path}: an object without properties must allow additional properties")
        if items is not None:
            out["items"] = self._node(items, f"{path}[*]", stack)
        for key in _SCALAR_KEYS:
            if key in node:
                out[key] = node.pop(key)
        if out.get("pattern") in FRIENDLY_PATTERNS:  # said in words, not as the regex (CEL's matches is RE2)
            pattern = out.pop("pattern")
            out.setdefault("maxLength", PATTERN_MAX_LENGTH)  # bounds CEL's cost estimate
            rule = _rule(f"self.matches(r'{pattern}')", FRIENDLY_PATTERNS[pattern])
            rule["messageExpression"] = f"'\"' + self + '\" ' + '{FRIENDLY_PATTERNS[pattern]}'"
            out[VALIDATIONS] = [rule]
        if typ is None:
            if props is not None or items is not None:
                raise SchemaError(f"{path}: properties or items without a type")
            out[PRESERVE] = True  # Any
        if node:
            raise SchemaError(f"{path}: unsupported JSON schema keys {sorted(node)}")
        for key in ("exclusiveMinimum", "exclusiveMaximum"):  # JSON Schema 2020 numbers -> OpenAPI 3.0 booleans
            if key in out and not isinstance(out[key], bool):
                out[key.replace("exclusiveM", "m")] = out.pop(key)
                out[key] = True
        return self._ordered(out)

    @staticmethod
    def _ordered(node: JSON) -> JSON:
        known = [k for k in _ORDER if k in node]
        return {**{k: node[k] for k in known}, **{k: v for k, v in node.items() if k not in known}}


def structural_schema(model: type[BaseModel], path: str,
                      def_extras: dict[str, Callable[[str], JSON]] | None = None) -> JSON:
    """The structural OpenAPI v3 schema of ``model`` (placed at ``path``, e.g. ``spec``).

    ``def_extras`` maps a model name to a function of the path where the model is inlined that
    returns keys to add there (CEL rules, value validations).
    """
    return _Converter(model.model_json_schema(by_alias=True), path, def_extras or {}).convert()


def _with_rules(schema: JSON, rules: list[JSON], description: str | None = None) -> JSON:
    out = dict(schema)
    if description:
        out["description"] = description
    out[VALIDATIONS] = [*out.get(VALIDATIONS, []), *rules]
    return _Converter._ordered(out)


def workflow_spec_schema() -> JSON:
    schema = structural_schema(WorkflowSpec, "spec", {"Task": task_extras, "Agent": agent_extras, "Tool": tool_extras})
    return _with_rules(schema, workflow_spec_rules("spec"),
                       "The workflow: its tools, agents and tasks. tasks[0] starts the run.")


def workflow_execution_spec_schema() -> JSON:
    schema = structural_schema(
        WorkflowExecutionSpec, "spec",
        {"Task": task_extras, "Agent": agent_extras, "Tool": tool_extras,
         "WorkflowSpec": lambda path: {VALIDATIONS: workflow_spec_rules(path)}},
    )
    return _with_rules(schema, EXECUTION_SPEC_RULES,
                       "What to run: a Workflow by name (workflowRef) or inline (workflow), with its input.")


def workflow_execution_status_schema() -> JSON:
    schema = structural_schema(WorkflowExecutionStatus, "status")
    schema["description"] = "Progress and results of the run, written by the operator."
    return _Converter._ordered(schema)


def _object_schema(description: str, spec: JSON, status: JSON | None = None) -> JSON:
    props: JSON = {
        "apiVersion": {
            "description": "Versioned schema of this object (compozy.dev/v1alpha1).",
            "type": "string",
        },
        "kind": {"description": "Kind of this object.", "type": "string"},
        "metadata": {"type": "object"},
        "spec": spec,
    }
    if status is not None:
        props["status"] = status
    return {"description": description, "type": "object", "properties": props, "required": ["spec"]}


def _crd(kind: str, plural: str, short: list[str], schema: JSON, columns: list[JSON], status: bool,
         selectable: tuple[str, ...] = ()) -> JSON:
    version: JSON = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": schema},
    }
    if status:
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = columns
    if selectable:
        version["selectableFields"] = [{"jsonPath": path} for path in selectable]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": short,
                "categories": CATEGORIES,
            },
            "scope": "Namespaced",
            "versions": [version],
        },
    }


def _column(name: str, path: str, typ: str = "string", description: str | None = None) -> JSON:
    col: JSON = {"name": name, "type": typ, "jsonPath": path}
    if description:
        col["description"] = description
    return col


def workflow_crd() -> JSON:
    schema = _object_schema(
        "Workflow is a reusable definition of tools, LLM agents and tasks (compozy.dev). "
        "Run it by creating a WorkflowExecution whose spec.workflowRef names it.",
        workflow_spec_schema(),
        WORKFLOW_STATUS_SCHEMA,
    )
    columns = [
        _column("Ready", '.status.conditions[?(@.type=="Ready")].status'),
        _column("Tasks", ".status.taskCount", "integer"),
        _column("Age", ".metadata.creationTimestamp", "date"),
        _column("Description", ".spec.description"),
        {**_column("Message", '.status.conditions[?(@.type=="Ready")].message'), "priority": 1},
    ]
    return _crd("Workflow", "workflows", ["czwf"], schema, columns, status=True)


def workflow_execution_crd() -> JSON:
    schema = _object_schema(
        "WorkflowExecution is one run of a Workflow (compozy.dev): spec says what to run with which "
        "input, status shows the phase, each task's progress and the output.",
        workflow_execution_spec_schema(),
        workflow_execution_status_schema(),
    )
    schema[VALIDATIONS] = EXECUTION_RULES
    columns = [
        _column("Workflow", ".status.workflow"),
        _column("Phase", ".status.phase"),
        _column("Progress", ".status.progress"),
        _column("Age", ".metadata.creationTimestamp", "date"),
        _column("Duration", ".status.duration"),
        _column("Message", ".status.message"),
    ]
    # `kubectl get wfx --field-selector status.phase=Failed`, and api.Service's phase filter: the API
    # server selects on the status itself, so no label has to be kept in step with it (no extra write)
    return _crd("WorkflowExecution", "workflowexecutions", ["wfx"], schema, columns, status=True,
                selectable=(".status.phase",))


def runner_pool_crd() -> JSON:
    spec = _with_rules(structural_schema(RunnerPoolSpec, "spec"),
                       [_rule("!has(self.minReplicas) || !has(self.maxReplicas) || "
                              "self.minReplicas <= self.maxReplicas",
                              "spec.minReplicas must not be greater than spec.maxReplicas")],
                       "The pool's runners: image, resources, service account, env, concurrency and bounds.")
    status = structural_schema(RunnerPoolStatus, "status")
    status["description"] = "The pool's size and queue at the operator's last look."
    schema = _object_schema(
        "RunnerPool is a set of warm runner pods of one namespace (compozy.dev): tools that name it run as "
        "processes forked on its runners, not in a pod each (docs/pools.md).", spec, _Converter._ordered(status))
    columns = [
        _column("Replicas", ".status.replicas", "integer"),
        _column("Min", ".spec.minReplicas", "integer"),
        _column("Max", ".spec.maxReplicas", "integer"),
        _column("Pending", ".status.pending", "integer"),
        _column("Age", ".metadata.creationTimestamp", "date"),
    ]
    return _crd("RunnerPool", "runnerpools", ["rp"], schema, columns, status=True)


def crds() -> list[JSON]:
    return [workflow_crd(), workflow_execution_crd(), runner_pool_crd()]


class _Dumper(yaml.SafeDumper):
    """Writes shared sub-schemas out in full (no YAML anchors/aliases)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump(doc: JSON) -> str:
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)


def generate() -> dict[str, str]:
    """File name -> YAML text of each CRD."""
    return {f"{doc['metadata']['name']}.yaml": _dump(doc) for doc in crds()}


def default_dir() -> Path:
    """``crds/`` of the source checkout (operator/compozy_operator/resources/crd.py -> repo root)."""
    return Path(__file__).resolve().parents[3] / "crds"


def default_dirs() -> list[Path]:
    """``crds/`` and, in a checkout that has it, the Helm chart's copy."""
    chart = default_dir().parent / "charts" / "compozy-operator" / "crds"
    return [default_dir(), *([chart] if chart.is_dir() else [])]


def stale_files(directory: Path) -> list[str]:
    """Names of the generated files that are missing or differ in ``directory``."""
    out = []
    for name, text in generate().items():
        path = directory / name
        if not path.is_file() or path.read_text() != text:
            out.append(name)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description="Generate the CRDs from the API models.")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: crds/ of the checkout and the Helm chart's crds/)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the files differ from the generated text")
    args = parser.parse_args(argv)
    directories = [args.out] if args.out else default_dirs()
    if args.check:
        failed = 0
        for directory in directories:
            if stale := stale_files(directory):
                print(f"stale CRDs in {directory}: {', '.join(stale)}; run `{COMMAND}`", file=sys.stderr)
                failed = 1
            else:
                print(f"CRDs in {directory} are up to date")
        return failed
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in generate().items():
            (directory / name).write_text(text)
            print(f"wrote {directory / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
