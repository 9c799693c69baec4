"""Static checks of a workflow's ``{{ ... }}`` templates (pure; no template is rendered).

What a template may use depends on where it sits (the executor builds the context, see
:mod:`compozy_operator.executor`):

* everywhere: ``workflow.input``, ``workflow.id``, ``env.<name>`` (``spec.env``), ``tasks.<id>``
  with ``output``, ``status`` and ``error``;
* agents' ``instructions`` and actions' ``prompt``: also ``input`` (the task's rendered ``with``);
* a collection's ``filter`` and its ``task`` (and that task's agent prompts): also ``item`` and
  ``index``; its ``items`` is rendered before any item exists, so not there.

``tasks.<id>`` is only defined once ``<id>`` has a status entry: the task ran (or was cancelled)
before the template is rendered. The walk runs one top-level task at a time from ``tasks[0]``,
so which tasks have run is a question about paths in the task graph (onSuccess, a router's
routes, onError):

* a task that does not exist, or that cannot have run before the template is rendered (a later
  task only, the task itself, a collection's own items) is an **error**: the render fails on
  every run that reaches it;
* a task that ran on some paths only (e.g. before one route of a router, or only when an earlier
  task failed) is a **warning**, unless the template guards it (``tasks.x is defined``,
  ``'x' in tasks``, ``tasks.x | default(...)``, ``tasks.get('x')``).

Syntax errors, unknown filters and tests, and names the context does not have are errors.
Templates of tasks the run can never reach are checked for syntax and names only.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from jinja2 import TemplateAssertionError, TemplateSyntaxError, meta, nodes
from jinja2.sandbox import SandboxedEnvironment

from . import templates
from .resources.models import Agent, AgentAction, Task, WorkflowSpec

ERROR, WARNING = "error", "warning"
TASK_FIELDS = frozenset({"output", "status", "error"})
_DICT_METHODS = frozenset(dir(dict))
_GUARD_TESTS = frozenset({"defined", "undefined", "none"})
_GUARD_FILTERS = frozenset({"default", "d"})
_CHILD_KEY = re.compile(r"^(?P<parent>.+)\[\d+\]$")
_MAX_LISTED = 20


@dataclass(frozen=True)
class Issue:
    severity: str  # ERROR or WARNING
    message: str  # "<field path>: <problem>"


def _environment() -> SandboxedEnvironment:
    """The engine that renders templates at run time (its filters and tests), else a plain sandbox."""
    env = getattr(templates, "_text", None)
    return env if isinstance(env, SandboxedEnvironment) else SandboxedEnvironment()


def _listed(names: list[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED else "") if names else "none"


# ---------------------------------------------------------------------------------------------
# Which tasks have a status entry before a template is rendered


@dataclass
class _Flow:
    """Per top-level task: the status names every path to it has (must) or some path has (may)."""

    order: list[str]
    must: dict[str, set[str]]
    may: dict[str, set[str]]
    reachable: set[str]
    end_must: set[str]
    end_may: set[str]


def _edges(task: Task) -> list[tuple[str, bool]]:
    """(next task, reached on success) for each transition out of ``task``."""
    if task.type == "router":
        out = [(n, True) for n in [*(task.routes or {}).values(), task.default] if n]
    else:
        nxt = task.on_success.next if task.on_success and not task.final else None
        out = [(nxt, True)] if nxt else []
    if task.on_error and task.on_error.next:
        out.append((task.on_error.next, False))
    return out


def _children(task: Task) -> list[str]:
    return [c.id for c in task.tasks or []] if task.type == "parallel" else []


def _ended_after(task: Task, success: bool) -> set[str]:
    """Status names certain to exist once ``task`` ended (successfully or not)."""
    names = {task.id}
    if success and task.type == "parallel" and (task.strategy or "waitAll") != "race":
        names.update(_children(task))  # every child ended (bestEffort) or succeeded (waitAll, failFast)
    return names


def _reach(start: str, edges: dict[str, list[str]], avoid: str | None = None) -> set[str]:
    if start == avoid:
        return set()
    seen, todo = {start}, [start]
    while todo:
        for n in edges.get(todo.pop(), []):
            if n not in seen and n != avoid:
                seen.add(n)
                todo.append(n)
    return seen


def _flow(wf: WorkflowSpec) -> _Flow:
    by_id = {t.id: t for t in wf.tasks}
    order = [t.id for t in wf.tasks]
    edges = {t.id: [(n, ok) for n, ok in _edges(t) if n in by_id] for t in wf.tasks}
    plain = {k: [n for n, _ in v] for k, v in edges.items()}
    start = order[0]
    reachable = _reach(start, plain)
    everything = set(order) | {c for t in wf.tasks for c in _children(t)}
    must: dict[str, set[str]] = {t: set(everything) for t in reachable}
    must[start] = set()
    changed = True
    while changed:  # forward must-analysis; starts from "everything" and only shrinks
        changed = False
        for tid in order:
            if tid not in reachable:
                continue
            for nxt, ok in edges[tid]:
                if nxt == start:
                    continue
                new = must[nxt] & (must[tid] | _ended_after(by_id[tid], ok))
                if new != must[nxt]:
                    must[nxt], changed = new, True
    backward: dict[str, list[str]] = {}
    for src, dsts in plain.items():
        for dst in dsts:
            backward.setdefault(dst, []).append(src)
    may: dict[str, set[str]] = {}
    for tid in reachable:
        before = _reach(start, plain, avoid=tid) & _reach(tid, backward)
        before.discard(tid)
        may[tid] = before | {c for b in before for c in _children(by_id[b])}
    ends = [t for t in wf.tasks if t.id in reachable and t.type != "router"
            and (t.final or not (t.on_success and t.on_success.next))]
    end_must: set[str] = set(everything) if ends else set()
    end_may: set[str] = set()
    for t in ends:
        end_must &= must[t.id] | _ended_after(t, True)
        end_may |= may[t.id] | {t.id, *_children(t)}
    return _Flow(order, must, may, reachable, end_must, end_may)


# ---------------------------------------------------------------------------------------------
# One template site: where it sits, what its context holds, which tasks have run before it


@dataclass
class _Site:
    where: str
    names: frozenset[str]  # top-level names the context has
    must: set[str] | None  # None: the template is never rendered (unreachable): no flow checks
    may: set[str]
    before: str  # "before <what>" for messages
    own: dict[str, str] = field(default_factory=dict)  # status name -> why it cannot be referenced here
    siblings: dict[str, str] = field(default_factory=dict)  # status name -> why it may not have ended
    used_by: str = ""  # " (as used by ...)" for agent prompts


_BASE = frozenset({"workflow", "tasks", "env"})


@dataclass
class _Known:
    statuses: list[str]  # names that can have a status entry (top-level ids, parallel children)
    collection_children: dict[str, str]  # a collection's task id -> the collection's id
    collections: set[str]
    env: set[str]
    input_properties: set[str] | None  # declared properties of spec.input, None: anything goes
    input_closed: bool  # additionalProperties: false


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{where}[{i}]")


def _is_tasks_ref(node: nodes.Node) -> str | None:
    """``tasks.x`` / ``tasks['x']`` -> ``x``."""
    if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and node.node.name == "tasks":
        return node.attr
    if (isinstance(node, nodes.Getitem) and isinstance(node.node, nodes.Name) and node.node.name == "tasks"
            and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str)):
        return node.arg.value
    return None


def _attr(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        return node.arg.value
    return None


class _Checker:
    def __init__(self, wf: WorkflowSpec, prefix: str) -> None:
        self.wf, self.prefix = wf, prefix
        self.env = _environment()
        self.issues: list[Issue] = []
        self._seen: set[tuple[str, str]] = set()
        self._parsed: dict[str, nodes.Template | None] = {}
        schema = wf.input if isinstance(wf.input, dict) else {}
        props = schema.get("properties") if schema.get("type") in (None, "object") else None
        self.known = _Known(
            statuses=[*(t.id for t in wf.tasks), *(c.id for t in wf.tasks if t.type == "parallel" for c in t.tasks or [])],
            collection_children={t.task.id: t.id for t in wf.tasks if t.type == "collection" and t.task},
            collections={t.id for t in wf.tasks if t.type == "collection"},
            env=set(wf.env or {}),
            input_properties=set(props) if isinstance(props, dict) and not any(
                k in schema for k in ("patternProperties", "allOf", "anyOf", "oneOf", "$ref", "dependentSchemas",
                                      "if")) else None,
            input_closed=schema.get("additionalProperties") is False,
        )

    def add(self, severity: str, message: str) -> None:
        if (severity, message) not in self._seen:
            self._seen.add((severity, message))
            self.issues.append(Issue(severity, message))

    # -- parsing ------------------------------------------------------------------------------

    def parse(self, where: str, text: str) -> nodes.Template | None:
        """The template's tree, or None (not a template, or broken: reported once per text)."""
        if "{{" not in text and "{%" not in text:
            return None
        key = f"{where}\0{text}"
        if key in self._parsed:
            return self._parsed[key]
        tree = None
        try:
            tree = self.env.parse(text)
            self.env.compile(tree)  # unknown filters and tests are found here
        except TemplateAssertionError as e:
            self.add(ERROR, f"{where}: {e.message} (in {text.strip()!r})")
            tree = None
        except TemplateSyntaxError as e:
            line = f" (line {e.lineno} of the template)" if e.lineno and "\n" in text.strip() else ""
            self.add(ERROR, f"{where}: template syntax error: {e.message}{line} (in {text.strip()!r})")
            tree = None
        except RecursionError:
            self.add(ERROR, f"{where}: template nested too deeply to parse")
            tree = None
        self._parsed[key] = tree
        return tree

    # -- one template ---------------------------------------------------------------------------

    def check(self, site: _Site, text: str) -> None:
        tree = self.parse(site.where, text)
        if tree is None:
            return
        where = site.where
        for name in sorted(meta.find_undeclared_variables(tree) - site.names - set(self.env.globals)):
            self.add(ERROR, f"{where}: {self._unknown_name(name, site)}")
        parents: dict[int, nodes.Node] = {}
        for node in tree.find_all(nodes.Node):
            for child in node.iter_child_nodes():
                parents[id(child)] = node
        guarded = self._guarded(tree, parents)
        for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
            ref = _is_tasks_ref(node)
            if ref is not None:
                parent = parents.get(id(node))
                attr = _attr(parent) if parent is not None and getattr(parent, "node", None) is node else None
                self._task_ref(site, ref, attr, ref in guarded)
            elif isinstance(node.node, nodes.Name) and node.node.name in ("workflow", "env"):
                attr = _attr(node)
                if attr is not None:
                    self._name_ref(site, node.node.name, attr, node, parents)

    def _unknown_name(self, name: str, site: _Site) -> str:
        have = ", ".join(sorted(site.names))
        if name in ("item", "index"):
            return (f"{name} is only defined in a collection's filter and task (the context here has: {have})"
                    f"{site.used_by}")
        if name == "input":
            return (f"input is only defined in agents' instructions and prompts (the task's rendered with); "
                    f"here use workflow.input or tasks.<id>.output{site.used_by}")
        return f"{name!r} is not defined (the context here has: {have}){site.used_by}"

    def _guarded(self, tree: nodes.Template, parents: dict[int, nodes.Node]) -> set[str]:
        """Tasks the template tests for before use: ``is defined``, ``in tasks``, ``default``, ``get``."""
        out: set[str] = set()
        for node in tree.find_all(nodes.Test):
            if node.name in _GUARD_TESTS and (ref := _is_tasks_ref(node.node)) is not None:
                out.add(ref)
        for node in tree.find_all(nodes.Filter):
            if node.name in _GUARD_FILTERS and node.node is not None and (ref := _is_tasks_ref(node.node)):
                out.add(ref)
        for node in tree.find_all(nodes.Compare):
            if (isinstance(node.expr, nodes.Const) and isinstance(node.expr.value, str) and node.ops
                    and node.ops[0].op in ("in", "notin") and isinstance(node.ops[0].expr, nodes.Name)
                    and node.ops[0].expr.name == "tasks"):
                out.add(node.expr.value)
        for node in tree.find_all(nodes.Call):
            fn = node.node
            if (isinstance(fn, nodes.Getattr) and fn.attr == "get" and isinstance(fn.node, nodes.Name)
                    and fn.node.name == "tasks" and node.args and isinstance(node.args[0], nodes.Const)):
                out.add(str(node.args[0].value))
        return out

    def _name_ref(self, site: _Site, name: str, attr: str, node: nodes.Node, parents: dict[int, nodes.Node]) -> None:
        where, used = site.where, site.used_by
        if name == "workflow" and "workflow" in site.names:
            if attr not in ("input", "id") and attr not in _DICT_METHODS:
                self.add(ERROR, f"{where}: workflow has input and id, not {attr!r}{used}")
            elif attr == "input":
                parent = parents.get(id(node))
                prop = _attr(parent) if parent is not None and getattr(parent, "node", None) is node else None
                props = self.known.input_properties
                if prop is not None and props is not None and prop not in props and prop not in _DICT_METHODS:
                    declared = _listed(sorted(props))
                    if self.known.input_closed:
                        self.add(ERROR, f"{where}: workflow.input.{prop} can never be set: spec.input allows only "
                                        f"{declared}{used}")
                    else:
                        self.add(WARNING, f"{where}: workflow.input.{prop} is not declared in spec.input.properties "
                                          f"({declared}){used}")
        elif name == "env" and "env" in site.names and attr not in self.known.env and attr not in _DICT_METHODS:
            self.add(ERROR, f"{where}: env.{attr} is not defined in spec.env (env: {_listed(sorted(self.known.env))})"
                            f"{used}")

    def _task_ref(self, site: _Site, ref: str, attr: str | None, guarded: bool) -> None:
        where, used, known = site.where, site.used_by, self.known
        if "tasks" not in site.names or (ref in _DICT_METHODS and ref not in known.statuses):
            return  # tasks.get(...), tasks.items(): the dict's methods
        listed = _listed(known.statuses)
        if attr is not None and attr not in TASK_FIELDS and attr not in _DICT_METHODS:
            self.add(ERROR, f"{where}: tasks.{ref}.{attr}: a task has output, status and error, not {attr!r}{used}")
        status_name = ref
        child = _CHILD_KEY.match(ref)
        if ref in known.collection_children:
            parent = known.collection_children[ref]
            self.add(ERROR, f"{where}: tasks.{ref} does not exist: {ref} is the task of collection {parent}; "
                            f"each item's run is tasks['{parent}[<index>]'], and tasks.{parent}.output lists "
                            f"their outputs{used}")
            return
        if child and child.group("parent") in known.collections:
            status_name = child.group("parent")  # an item's run exists once its collection ran
        elif ref not in known.statuses:
            self.add(WARNING if guarded else ERROR, f"{where}: tasks.{ref} does not exist (tasks: {listed}){used}")
            return
        if status_name in site.own:
            self.add(ERROR, f"{where}: tasks.{ref}: {site.own[status_name]}{used}")
            return
        if site.must is None or guarded or status_name in site.must:
            return
        if status_name in site.siblings:
            self.add(WARNING, f"{where}: tasks.{ref}: {site.siblings[status_name]}{used}")
        elif status_name in site.may:
            self.add(WARNING, f"{where}: tasks.{ref} may not have run {site.before}: it is not on every path from "
                              f"tasks[0] to here (guard it with `tasks.{ref} is defined`){used}")
        else:
            self.add(ERROR, f"{where}: tasks.{ref} cannot have run {site.before}: no path from tasks[0] runs it "
                            f"first{used}")

    # -- the workflow ---------------------------------------------------------------------------

    def run(self) -> list[Issue]:
        wf, prefix = self.wf, self.prefix
        flow = _flow(wf)
        agents = {a.id: (i, a) for i, a in enumerate(wf.agents or [])}
        used_actions: set[tuple[str, str]] = set()
        for i, task in enumerate(wf.tasks):
            where = f"{prefix}.tasks[{i}] ({task.id})"
            reached = task.id in flow.reachable
            must = flow.must.get(task.id) if reached else None
            may = flow.may.get(task.id, set())
            own = {task.id: f"refers to its own task: {task.id} has no status before it ends"}
            base = _Site(where, _BASE, must, may, f"before {task.id}", own)
            if task.type == "basic":
                self._basic(task, base, agents, used_actions)
            elif task.type == "router":
                if task.condition is not None:
                    self.check(_site(base, f"{where}.condition"), task.condition)
            elif task.type == "parallel":
                self._parallel(task, base, agents, used_actions)
            elif task.type == "collection":
                self._collection(task, base, agents, used_actions)
        if wf.output is not None:
            site = _Site(f"{prefix}.output", _BASE, flow.end_must if flow.reachable else None, flow.end_may,
                         "before the run ends")
            for w, text in _strings(wf.output, site.where):
                self.check(_site(site, w), text)
        for aid, (i, agent) in agents.items():  # prompts no task uses: syntax and names only
            for j, action in enumerate(agent.actions):
                if (aid, action.id) not in used_actions:
                    site = _Site("", _BASE | {"input"}, None, set(), "")
                    for w, text in self._prompts(i, agent, j, action):
                        self.check(_site(site, w), text)
        return self.issues

    def _prompts(self, i: int, agent: Agent, j: int, action: AgentAction) -> list[tuple[str, str]]:
        where = f"{self.prefix}.agents[{i}] ({agent.id})"
        out = [(f"{where}.instructions", agent.instructions)] if agent.instructions else []
        return [*out, (f"{where}.actions[{j}] ({action.id}).prompt", action.prompt)]

    def _basic(self, task: Task, site: _Site, agents: dict[str, tuple[int, Agent]],
               used_actions: set[tuple[str, str]]) -> None:
        for w, text in _strings(task.with_ or {}, f"{site.where}.with"):
            self.check(_site(site, w), text)
        if task.agent in agents:
            i, agent = agents[task.agent]
            for j, action in enumerate(agent.actions):
                if action.id == task.action:
                    used_actions.add((agent.id, action.id))
                    for w, text in self._prompts(i, agent, j, action):
                        self.check(_site(site, w, names=site.names | {"input"},
                                         used_by=f" (as used by {site.where})"), text)

    def _parallel(self, task: Task, site: _Site, agents: dict[str, tuple[int, Agent]],
                  used_actions: set[tuple[str, str]]) -> None:
        children = task.tasks or []
        one_at_a_time = task.max_workers == 1
        for j, child in enumerate(children):
            cwhere = f"{site.where}.tasks[{j}] ({child.id})"
            own = {task.id: f"refers to its parallel task {task.id}, which has no status before all its children "
                            "end",
                   child.id: f"refers to its own task: {child.id} has no status before it ends"}
            siblings: dict[str, str] = {}
            for k, other in enumerate(children):
                if other.id == child.id:
                    continue
                if one_at_a_time and k > j:
                    own[other.id] = (f"{other.id} runs after {child.id} in parallel task {task.id} "
                                     "(maxWorkers: 1 runs the children in order)")
                elif not one_at_a_time:
                    siblings[other.id] = (f"{other.id} runs alongside {child.id} in parallel task {task.id}; it may "
                                          f"not have ended when {child.id} starts (maxWorkers: 1 runs them in order)")
            must = None if site.must is None else site.must | (
                {c.id for c in children[:j]} if one_at_a_time else set())
            csite = _Site(cwhere, site.names, must, site.may | {c.id for c in children}, f"before {child.id}",
                          own, siblings)
            self._basic(child, csite, agents, used_actions)

    def _collection(self, task: Task, site: _Site, agents: dict[str, tuple[int, Agent]],
                    used_actions: set[tuple[str, str]]) -> None:
        own = {task.id: f"refers to its own collection: {task.id} has no status before all its items end"}
        if task.items is not None:
            for w, text in _strings(task.items, f"{site.where}.items"):
                self.check(_site(site, w, own=own), text)
        scope = site.names | {"item", "index"}
        if task.filter is not None:
            self.check(_site(site, f"{site.where}.filter", names=scope, own=own), task.filter)
        if task.task is not None:
            child = _Site(f"{site.where}.task ({task.task.id})", scope, site.must, site.may, f"before {task.id}", own)
            self._basic(task.task, child, agents, used_actions)


def _site(base: _Site, where: str, **changes: Any) -> _Site:
    return _Site(**{**base.__dict__, "where": where, **changes})


def check_templates(wf: WorkflowSpec, prefix: str = "spec") -> list[Issue]:
    """Every problem of the workflow's templates (errors and warnings), in spec order."""
    if not wf.tasks:
        return []
    return _Checker(wf, prefix).run()
