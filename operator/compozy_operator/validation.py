"""Checks a workflow must pass before any pod starts. Pure; each problem names its field."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import jsonschema
from pydantic import ValidationError

from .resources.crd import FRIENDLY_PATTERNS, INLINE_HISTORY_MESSAGE
from .resources.models import DURATION_PATTERN, ID_PATTERN, Task, WorkflowSpec
from .template_check import ERROR, WARNING, check_templates

# The fields each task type uses (besides id and type); any other field set is a mistake.
_TRANSITIONS = {"on_success", "on_error", "final"}
_FIELDS: dict[str, set[str]] = {
    "basic": {"tool", "agent", "action", "with_", "retry", "timeout", *_TRANSITIONS},
    "router": {"condition", "routes", "default", "on_error"},  # routes replace onSuccess
    "parallel": {"strategy", "max_workers", "tasks", *_TRANSITIONS},
    "collection": {"items", "mode", "max_workers", "filter", "task", *_TRANSITIONS},
}
SUPPORTED_TYPES = set(_FIELDS)
MAX_INPUT_DEPTH = 64  # deepest execution input accepted (JSON levels)
MAX_INPUT_BYTES = 1024 * 1024  # largest execution input accepted at apply (bytes of compact JSON; a setting)
# metadata.name of our objects: a DNS subdomain (RFC 1123), as the API server requires
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class SpecError(ValueError):
    """One or more problems, each ``<field path>: <problem>``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def _loc(prefix: str, loc: tuple[Any, ...]) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


_MESSAGES = {  # pydantic's error types said for a manifest's author
    "extra_forbidden": "unknown field (a typo? `kubectl explain` lists the fields)",
    "missing": "required field is missing",
}
_PATTERNS = {
    ID_PATTERN: "must be lowercase letters, digits and '-', starting and ending with a letter or digit "
                "(like a Kubernetes name), at most 63 characters",
    DURATION_PATTERN: FRIENDLY_PATTERNS[DURATION_PATTERN],
}


def model_problems(e: ValidationError, prefix: str = "spec") -> list[str]:
    """A pydantic error as ``<field path>: <problem>`` lines, in words a manifest's author reads."""
    out = []
    for err in e.errors():
        message = _MESSAGES.get(err["type"]) or err["msg"].removeprefix("Value error, ")
        if err["type"] == "string_pattern_mismatch":
            message = _PATTERNS.get((err.get("ctx") or {}).get("pattern", ""), message)
        out.append(f"{_loc(prefix, err['loc'])}: {message}")
    return out


def parse_workflow(raw: Any, prefix: str = "spec") -> WorkflowSpec:
    try:
        return WorkflowSpec.model_validate(raw)
    except ValidationError as e:
        raise SpecError(model_problems(e, prefix)) from None


def _unused_fields(task: Task, where: str, allowed: set[str], kind: str | None = None) -> list[str]:
    return [f"{where}.{info.alias or name}: not used by {kind or task.type + ' tasks'}"
            for name, info in Task.model_fields.items()
            if name not in ("id", "type") and name not in allowed and getattr(task, name) is not None]


def _check_basic(task: Task, where: str, tools: set[str], agents: dict[str, set[str]]) -> list[str]:
    problems = []
    if bool(task.tool) == bool(task.agent):
        problems.append(f"{where}: a basic task needs exactly one of tool or agent")
    if task.tool and task.tool not in tools:
        problems.append(f"{where}.tool: tool {task.tool!r} is not defined in spec.tools")
    if task.agent:
        if task.agent not in agents:
            problems.append(f"{where}.agent: agent {task.agent!r} is not defined in spec.agents")
        elif task.action not in agents[task.agent]:
            problems.append(f"{where}.action: agent {task.agent!r} has no action {task.action!r}")
    elif task.action:
        problems.append(f"{where}.action: only agent tasks have an action")
    return problems


def _schema_problem(schema: dict[str, Any] | None, where: str) -> list[str]:
    if not schema:
        return []
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as e:
        return [f"{where}: not a valid JSON Schema: {e.message}"]
    return []


# Kubernetes' resource.Quantity syntax (k8s.io/apimachinery/pkg/api/resource), as the API server checks it
_QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[KMGTPE]i|[numkMGTPE])?$")


def _resources_problems(resources: dict[str, Any] | None, where: str) -> list[str]:
    """A tool's ``resources`` as the API server would check them in the pod (else every attempt's
    pod is refused at run time)."""
    problems = []
    for key, value in (resources or {}).items():
        if key not in ("limits", "requests"):
            problems.append(f"{where}.{key}: unknown field (resources have limits and requests)")
        elif not isinstance(value, dict):
            problems.append(f"{where}.{key}: must be a map of resource name to quantity")
        else:
            problems += [f"{where}.{key}.{name}: {q!r} is not a Kubernetes quantity (e.g. 512Mi, 2, 500m)"
                         for name, q in value.items() if not (isinstance(q, str | int | float) and not
                                                               isinstance(q, bool) and _QUANTITY.match(str(q)))]
    return problems


def _check_agents(wf: WorkflowSpec, prefix: str, tools: set[str]) -> list[str]:
    problems: list[str] = []
    seen: set[str] = set()
    for i, agent in enumerate(wf.agents or []):
        where = f"{prefix}.agents[{i}] ({agent.id})"
        if agent.id in seen:
            problems.append(f"{where}.id: duplicate agent id {agent.id!r}")
        seen.add(agent.id)
        problems += [f"{where}.tools[{j}]: tool {t!r} is not defined in spec.tools"
                     for j, t in enumerate(agent.tools or []) if t not in tools]
        if agent.pool:
            problems += _pooled_agent_tools(wf, agent.tools or [], where, agent.pool)
        if agent.model.provider == "anthropic" and agent.model.temperature is not None:
            problems.append(f"{where}.model.temperature: not supported by provider anthropic "
                            "(its Messages API takes no sampling temperature)")
        actions: set[str] = set()
        for j, action in enumerate(agent.actions):
            if action.id in actions:
                problems.append(f"{where}.actions[{j}].id: duplicate action id {action.id!r}")
            actions.add(action.id)
            problems += _schema_problem(action.output_schema, f"{where}.actions[{j}] ({action.id}).outputSchema")
    return problems


def _pooled_agent_tools(wf: WorkflowSpec, names: list[str], where: str, pool: str) -> list[str]:
    """An agent calls its tools in its own process: on a pool, that is a process of the pool's
    runners, so a tool's own pod settings could never apply."""
    defined = {t.id: t for t in wf.tools or []}
    return [f"{where}.tools[{j}]: tool {name!r} sets {field}, but the agent runs its tools in its own process on "
            f"pool {pool!r}'s runners, which have the pool's {field}; drop {field} from the tool or pool from the agent"
            for j, name in enumerate(names) if name in defined
            for field in ("image", "env", "resources") if getattr(defined[name], field) is not None]


def _check_child(child: Task, where: str, tools: set[str], agents: dict[str, set[str]]) -> list[str]:
    """A parallel task's child or a collection's task: a basic task without transitions."""
    if child.type != "basic":
        return [f"{where}.type: a child task must be a basic task, not {child.type}"]
    unused = _unused_fields(child, where, _FIELDS["basic"] - _TRANSITIONS, "child tasks (a child ends with its parent)")
    return [*unused, *_check_basic(child, where, tools, agents)]


def _check_parallel(task: Task, where: str, ids: set[str], children: set[str], tools: set[str],
                    agents: dict[str, set[str]]) -> list[str]:
    """Children's ids share one namespace with the top-level ids (they are status keys too);
    ``children`` collects them across the workflow."""
    problems = [] if task.tasks else [f"{where}.tasks: a parallel task needs at least one child task"]
    for j, child in enumerate(task.tasks or []):
        cwhere = f"{where}.tasks[{j}] ({child.id})"
        if child.id in ids or child.id in children:
            problems.append(f"{cwhere}.id: duplicate task id {child.id!r}")
        children.add(child.id)
        problems += _check_child(child, cwhere, tools, agents)
    return problems


def _check_router(task: Task, where: str, ids: set[str]) -> list[str]:
    problems = []
    if task.condition is None:
        problems.append(f"{where}.condition: a router needs a condition")
    if not task.routes:
        problems.append(f"{where}.routes: a router needs at least one route")
    for value, target in (task.routes or {}).items():
        if target not in ids:
            problems.append(f"{where}.routes.{value}: no task with id {target!r}")
    if task.default is not None and task.default not in ids:
        problems.append(f"{where}.default: no task with id {task.default!r}")
    return problems


def _check_collection(task: Task, where: str, tools: set[str], agents: dict[str, set[str]]) -> list[str]:
    problems = []
    if task.items is None:
        problems.append(f"{where}.items: a collection needs items (a list, or a template giving one)")
    elif not isinstance(task.items, list) and not (isinstance(task.items, str) and "{{" in task.items):
        problems.append(f"{where}.items: must be a list or a template such as '{{{{ workflow.input.urls }}}}'")
    if task.task is None:
        problems.append(f"{where}.task: a collection needs the task to run for each item")
    else:
        problems += _check_child(task.task, f"{where}.task ({task.task.id})", tools, agents)
    if task.mode == "sequential" and (task.max_workers or 1) > 1:
        problems.append(f"{where}.maxWorkers: a sequential collection runs one item at a time")
    return problems


def _successors(task: Task) -> list[str]:
    if task.type == "router":
        nexts = [*(task.routes or {}).values(), task.default]
    else:
        nexts = [task.on_success.next if task.on_success else None]
    return [n for n in (*nexts, task.on_error.next if task.on_error else None) if n]


def _ends_run(task: Task) -> bool:
    """Whether this task's success can end the run (a router always continues at a route)."""
    return task.type != "router" and bool(task.final or not (task.on_success and task.on_success.next))


def _closure(start: set[str], edges: dict[str, list[str]]) -> set[str]:
    seen, todo = set(start), list(start)
    while todo:
        for n in edges.get(todo.pop(), []):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def _dead_ends(wf: WorkflowSpec) -> set[str]:
    """Tasks the run can reach from tasks[0] but from which it can never succeed.

    A task runs at most once, so from such a task every path ends in a failure or returns to a
    task that already ran (the executor then fails the run with reason Cycle)."""
    forward = {t.id: _successors(t) for t in wf.tasks}
    backward: dict[str, list[str]] = {}
    for src, dsts in forward.items():
        for dst in dsts:
            backward.setdefault(dst, []).append(src)
    reachable = _closure({wf.tasks[0].id}, forward)
    can_succeed = _closure({t.id for t in wf.tasks if _ends_run(t)}, backward)
    return reachable - can_succeed


def check_workflow(wf: WorkflowSpec, prefix: str = "spec") -> list[str]:
    """Reference, graph and template checks the schema cannot express: each problem refuses the
    workflow (see :func:`workflow_warnings` for what may be fine)."""
    problems: list[str] = []
    if prefix == "spec.workflow" and wf.history_limit is not None:  # an inline workflow: one run, no history
        problems.append(INLINE_HISTORY_MESSAGE)
    ids = {t.id for t in wf.tasks}
    tools = {t.id for t in wf.tools or []}
    agents = {a.id: {x.id for x in a.actions} for a in wf.agents or []}
    seen: set[str] = set()
    children: set[str] = set()  # ids of parallel tasks' children so far
    for i, task in enumerate(wf.tasks):
        where = f"{prefix}.tasks[{i}] ({task.id})"
        if task.id in seen:
            problems.append(f"{where}.id: duplicate task id {task.id!r}")
        seen.add(task.id)
        problems += _unused_fields(task, where, _FIELDS[task.type])
        if task.type == "basic":
            problems += _check_basic(task, where, tools, agents)
        elif task.type == "router":
            problems += _check_router(task, where, ids)
        elif task.type == "collection":
            problems += _check_collection(task, where, tools, agents)
        else:
            problems += _check_parallel(task, where, ids, children, tools, agents)
        for kind, tr in (("onSuccess", task.on_success), ("onError", task.on_error)):
            if tr and tr.next and tr.next not in ids:
                problems.append(f"{where}.{kind}.next: no task with id {tr.next!r}")
    tool_ids: set[str] = set()
    for j, tool in enumerate(wf.tools or []):
        if tool.id in tool_ids:
            problems.append(f"{prefix}.tools[{j}] ({tool.id}).id: duplicate tool id {tool.id!r}")
        tool_ids.add(tool.id)
        if bool(tool.python) == bool(tool.command):
            problems.append(f"{prefix}.tools[{j}] ({tool.id}): a tool needs exactly one of python or command")
        problems += _schema_problem(tool.input_schema, f"{prefix}.tools[{j}] ({tool.id}).inputSchema")
        problems += _resources_problems(tool.resources, f"{prefix}.tools[{j}] ({tool.id}).resources")
    problems += _check_agents(wf, prefix, tools)
    if not problems:  # the graph check needs every reference resolved
        dead = _dead_ends(wf)
        problems += [f"{prefix}.tasks[{i}] ({t.id}): the run can never succeed from here: every path after "
                     f"this task fails or returns to a task that already ran (a task runs at most once)"
                     for i, t in enumerate(wf.tasks) if t.id in dead]
    if not problems:  # templates are checked against resolved references only
        problems += [i.message for i in check_templates(wf, prefix) if i.severity == ERROR]
    return problems


def workflow_warnings(wf: WorkflowSpec, prefix: str = "spec") -> list[str]:
    """What may fail on some runs but not all (e.g. a template using a task that ran on some paths
    only): worth telling the author (``compozy validate``, an admission warning), never a refusal."""
    if check_workflow(wf, prefix):
        return []
    return [i.message for i in check_templates(wf, prefix) if i.severity == WARNING]


def check_input(schema: dict[str, Any] | None, value: Any, prefix: str = "spec.input") -> list[str]:
    """Validate the execution's input against the workflow's JSON Schema."""
    if not schema:
        return []
    if bad := _schema_problem(schema, "workflow input schema"):
        return bad
    validator = jsonschema.validators.validator_for(schema)(schema)
    if value is None and not validator.is_valid(None):
        needs = ", ".join(schema.get("required") or []) if isinstance(schema.get("required"), list) else ""
        return [f"{prefix}: missing: the Workflow's input schema requires an input"
                + (f" (with {needs})" if needs else "")]
    problems = []
    for err in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path)):
        problems.append(f"{_loc(prefix, tuple(err.absolute_path))}: {err.message}")
    return problems


def apply_defaults(schema: Any, value: Any) -> Any:
    """``value`` with the JSON Schema ``default`` values of ``schema`` filled in (a new value; the
    argument is not changed).

    A missing input (None) takes the schema's own ``default``, else ``{}`` when the schema is an
    object with defaults to fill. Missing properties take their ``default``; present ones that are
    objects (arrays: their items) get their own defaults, level by level, and so does a default
filled in (``opts: {default: {}}`` gets the defaults of ``opts``'s properties). ``allOf`` branches are
    applied in turn; ``anyOf``/``oneOf``/``if`` are left alone (which branch applies is not known
    before validation). A present value is never replaced, even ``null``. Defaults are taken as
    written: they are not validated here (the validation that follows sees them)."""
    return _defaults(schema, value, 0)


_MAX_DEFAULT_DEPTH = 64


def _defaults(schema: Any, value: Any, depth: int) -> Any:
    if not isinstance(schema, dict) or depth > _MAX_DEFAULT_DEPTH:
        return value
    if value is None and "default" in schema:
        value = copy.deepcopy(schema["default"])  # then its own missing properties' defaults, below
    props = schema.get("properties")
    if value is None and isinstance(props, dict) and any(
            isinstance(p, dict) and "default" in p for p in props.values()) and schema.get("type") == "object":
        value = {}
    if isinstance(value, dict):
        out = dict(value)
        if isinstance(props, dict):
            for name, sub in props.items():
                if name in out:
                    out[name] = out[name] if out[name] is None else _defaults(sub, out[name], depth + 1)
                elif isinstance(sub, dict) and "default" in sub:
                    out[name] = _defaults(sub, None, depth + 1)
        value = out
    elif isinstance(value, list):
        items = schema.get("items")
        prefix = schema.get("prefixItems")
        value = [v if v is None else _defaults(prefix[i] if isinstance(prefix, list) and i < len(prefix) else items,
                                               v, depth + 1)
                 for i, v in enumerate(value)]
    for sub in schema.get("allOf") or []:
        value = _defaults(sub, value, depth + 1)
    return value


def json_depth(value: Any) -> int:
    """How deeply a JSON value nests (a scalar is 0), counted without recursion: the value may be
    too deep for Python's own recursion limit."""
    depth, level = 0, [value]
    while level:
        nested = [v for x in level for v in (x.values() if isinstance(x, dict) else x if isinstance(x, list) else ())
                  if isinstance(v, dict | list)]
        if any(isinstance(x, dict | list) for x in level):
            depth += 1
        level = nested
    return depth


def input_problems(value: Any, max_bytes: int | None = None) -> list[str]:
    """An execution's ``spec.input``: its depth (counted without recursion), then, when
    ``max_bytes`` is given (at apply), its size."""
    depth = json_depth(value)
    if depth > MAX_INPUT_DEPTH:
        return [f"spec.input: nested {depth} levels deep; at most {MAX_INPUT_DEPTH} are allowed"]
    if max_bytes is not None:
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            return [f"spec.input: {size} bytes of JSON; at most {max_bytes} are allowed "
                    "(pass a reference to large data, such as a URL, instead of the data)"]
    return []


def name_problems(meta: dict[str, Any]) -> list[str]:
    """``metadata.name`` as the API server checks it (a DNS subdomain)."""
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return []
    if len(name) > 253 or not _NAME.match(name):
        return [f"metadata.name: {name[:80]!r} is not a valid name: lowercase letters, digits, '-' and '.', "
                "starting and ending with a letter or digit, at most 253 characters"]
    return []
