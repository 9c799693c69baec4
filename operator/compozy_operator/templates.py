"""``{{ ... }}`` templates, rendered by Jinja2's sandbox.

A string that is exactly one ``{{ expr }}`` keeps the expression's JSON type (number, bool,
list, object); any other string renders to a string. Undefined names are errors, never silent
empty strings. Jinja2's ``SandboxedEnvironment`` blocks attribute access to Python internals,
so a workflow author cannot reach the operator's process through a template.

Templates are untrusted: each is bounded here, wherever it runs. A rendered value larger than
``LIMITS.rendered_bytes`` fails (a text template is stopped as soon as its output passes the
limit), and the obviously explosive operations (``'x' * 10**9``, ``2 ** 10**9``, ``'x'.center(10**9)``)
fail before they run. Time and memory are bounded by the process that renders: the operator
renders in its evaluation workers (:mod:`compozy_operator.sandbox`), which install a
:data:`guard` that stops a template running longer than its limit; a ``MemoryError`` or a
``RecursionError`` while rendering is reported like any other limit, naming the field.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, Undefined
from jinja2 import TemplateError as JinjaError
from jinja2.nativetypes import NativeEnvironment
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import consume

_SINGLE = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}).)*)\}\}\s*$", re.DOTALL)
_WIDTH = re.compile(r"\d{7,}")  # a width of a million or more in a format string


@dataclass
class Limits:
    rendered_bytes: int = 1 << 20  # largest value one template may render (bytes of text / JSON, about)
    collection_items: int = 10_000  # most items a collection may expand to


LIMITS = Limits()


def configure(rendered_bytes: int | None = None, collection_items: int | None = None) -> None:
    """Set the limits of this process (the operator and its workers read them from settings)."""
    if rendered_bytes is not None:
        LIMITS.rendered_bytes = rendered_bytes
    if collection_items is not None:
        LIMITS.collection_items = collection_items


class TemplateTimeout(BaseException):
    """Raised (by a worker's timer) inside a template that ran longer than its limit. A
    BaseException, so no ``except Exception`` in the template machinery swallows it."""

    def __init__(self, seconds: float) -> None:
        super().__init__(seconds)
        self.seconds = seconds


# Around every render: a context manager given the field's path. The evaluation worker installs
# one that arms a CPU timer raising TemplateTimeout; in-process it does nothing.
guard: Callable[[str], contextlib.AbstractContextManager[Any]] = lambda where: contextlib.nullcontext()
# The run being evaluated (set by the worker per request): a template of a run that ran out of
# time or memory fails again at once on the next decision, instead of burning its limit once more
# until the status shows the failure. Empty: nothing is remembered.
scope = ""
_spent: dict[tuple[str, str, str], str] = {}
CACHED_SOURCE = 4096  # templates up to this long are compiled once; longer ones each time


class _TooLarge(Exception):
    pass


def _too_large(what: str) -> _TooLarge:
    return _TooLarge(f"{what} would be larger than the limit of {LIMITS.rendered_bytes} bytes")


def _size(value: Any, budget: int) -> int:
    """About the size of ``value`` as JSON, counted only up to ``budget`` (then it stops)."""
    total, stack = 0, [value]
    while stack and total <= budget:
        v = stack.pop()
        if isinstance(v, str | bytes):
            total += len(v) + 2
        elif isinstance(v, Mapping):
            total += 2
            for k, x in v.items():
                total += len(str(k)) + 4
                stack.append(x)
        elif isinstance(v, list | tuple | set | frozenset):
            total += 2 + len(v)
            stack.extend(v)
        elif isinstance(v, int) and v.bit_length() > 14_000:  # ~4,300 digits: JSON (Python's) refuses it
            raise _TooLarge("a number of more than 4,300 digits is not allowed")
        else:
            total += 8
    return total


def _given(value: Any, context: Mapping[str, Any], budget: int = 1_000_000) -> bool:
    """Whether ``value`` is itself one of the context's values (``{{ tasks.make.output.blob }}``):
    passing a large input or output on is no new data, whatever its size. Visits at most ``budget``
    values (only asked about a value past the limit)."""
    stack: list[Any] = list(context.values())
    while stack and budget > 0:
        budget -= 1
        v = stack.pop()
        if v is value:
            return True
        if isinstance(v, Mapping):
            stack.extend(v.values())
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return False


def _check_size(value: Any, what: str = "the rendered value") -> Any:
    if _size(value, LIMITS.rendered_bytes) > LIMITS.rendered_bytes:
        raise _too_large(what)
    return value


def _repeat(left: Any, right: Any) -> Any:
    """``*``, refused when a sequence would grow past the limit."""
    for seq, n in ((left, right), (right, left)):
        if isinstance(seq, str | list | tuple) and isinstance(n, int) and len(seq) * n > LIMITS.rendered_bytes:
            raise _too_large(f"repeating a {type(seq).__name__} of {len(seq)} {n} times")
    return left * right


def _power(left: Any, right: Any) -> Any:
    """``**``, refused when an integer result would have more digits than the limit allows."""
    if isinstance(left, int) and isinstance(right, int) and right > 0 and abs(left) > 1:
        if right * abs(left).bit_length() > 8 * LIMITS.rendered_bytes:
            raise _too_large(f"{left} ** {right}")
    return left**right


_WIDE_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def _wide(args: tuple[Any, ...]) -> None:
    for a in args:
        if isinstance(a, int) and a > LIMITS.rendered_bytes:
            raise _too_large(f"a width of {a}")
        if isinstance(a, str) and _WIDTH.search(a):
            raise _too_large(f"the format {a[:40]!r}")


class TaskFacts(dict):  # type: ignore[type-arg]
    """The ``tasks`` of a template context: the facts of the tasks that have a status, and the ids
    of every task of the workflow, so that ``tasks.frist`` says what is wrong."""

    def __init__(self, facts: Mapping[str, Any], known: list[str]) -> None:
        super().__init__(facts)
        self.known = known

    def missing(self, name: str) -> str:
        if name in self.known:
            return f"tasks.{name} has not run yet"
        return f"tasks.{name}: no task {name!r} (tasks: {', '.join(self.known) or 'none'})"


class _Sandbox(SandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("center", "indent", "format", "wordwrap", "truncate"):
            self.filters[name] = self._bounded(self.filters[name], 0 if name == "format" else 1)

    @staticmethod
    def _bounded(f: Callable[..., Any], first: int) -> Callable[..., Any]:
        """A filter whose arguments (from ``first``: ``format``'s value is its format) may not ask
        for a width past the limit, and whose result may not pass it."""
        @functools.wraps(f)
        def bounded(*args: Any, **kwargs: Any) -> Any:
            _wide(args[first:] + tuple(kwargs.values()))
            return _check_size(f(*args, **kwargs))
        return bounded

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            return _repeat(left, right)
        if operator == "**":
            return _power(left, right)
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if getattr(__obj, "__name__", None) in _WIDE_METHODS and isinstance(getattr(__obj, "__self__", None), str):
            _wide(args + tuple(kwargs.values()))
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """``'{:>N}'.format(...)``: the sandbox's own str.format, with the width bounded."""
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        _wide((value.__self__,))
        return lambda *args, **kwargs: _check_size(wrapped(*args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        """``input.items`` is the input's field ``items``, not the dict method of that name (the data
        is JSON: its keys come first)."""
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        if isinstance(obj, TaskFacts) and not hasattr(dict, attribute):
            return self.undefined(obj.missing(attribute), obj=obj, name=attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, TaskFacts) and isinstance(argument, str) and argument not in obj:
            return self.undefined(obj.missing(argument), obj=obj, name=argument)
        return super().getitem(obj, argument)


class _NativeSandbox(_Sandbox, NativeEnvironment):
    pass


_text = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_native = _NativeSandbox(undefined=StrictUndefined, autoescape=False)


@functools.lru_cache(maxsize=1024)
def _compiled_expression(source: str) -> Any:
    return _native.compile_expression(source, undefined_to_none=False)


@functools.lru_cache(maxsize=1024)
def _compiled_template(source: str) -> Any:
    return _text.from_string(source)


def _expression(source: str) -> Any:
    if len(source) > CACHED_SOURCE:
        return _native.compile_expression(source, undefined_to_none=False)
    return _compiled_expression(source)


def _template(source: str) -> Any:
    return _text.from_string(source) if len(source) > CACHED_SOURCE else _compiled_template(source)


_NATIVE_GLOBALS = dict(_native.globals)


def _evaluate(source: str, context: Mapping[str, Any]) -> Any:
    """A compiled expression's value. What ``TemplateExpression.__call__`` does, with the context
    built from one plain dict: merging the environment's globals per call cost most of a
    collection's per-item filter (3x faster)."""
    expression = _expression(source)
    template = getattr(expression, "_template", None)
    if template is None:  # another Jinja2 than the one pinned
        return expression(**context)
    ctx = template.new_context({**_NATIVE_GLOBALS, **context}, shared=True)
    consume(template.root_render_func(ctx))
    return ctx.vars["result"]


class TemplateError(ValueError):
    """A template failed; the message names where it sits (e.g. ``tasks.count.with.text``)."""

    reason = "TemplateError"

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


class TemplateLimit(TemplateError):
    """A template went past a limit (time, memory, output size, collection items)."""

    reason = "TemplateLimit"


def _bounded_text(chunks: Iterator[str]) -> str:
    out, size = [], 0
    for chunk in chunks:
        size += len(chunk)
        if size > LIMITS.rendered_bytes:
            raise _too_large("the rendered text")
        out.append(chunk)
    return "".join(out)


def _shown(text: str) -> str:
    text = text.strip()
    return repr(text if len(text) <= 200 else text[:200] + "...")


def _spent_limit(where: str, text: str, problem: str) -> TemplateLimit:
    if scope:
        if len(_spent) >= 1024:
            _spent.clear()
        _spent[(scope, where, text)] = problem
    return TemplateLimit(where, problem)


def render_string(text: str, context: Mapping[str, Any], where: str = "template") -> Any:
    if "{{" not in text and "{%" not in text:
        return text
    if scope and (known := _spent.get((scope, where, text))):
        raise TemplateLimit(where, known)
    try:
        with guard(where):
            single = _SINGLE.match(text)
            if single and "{%" not in text:
                value = _evaluate(single.group("expr"), context)
                if isinstance(value, Undefined):
                    str(value)  # raises UndefinedError with the name that is missing
                return value if _size(value, LIMITS.rendered_bytes) <= LIMITS.rendered_bytes or \
                    _given(value, context) else _check_size(value)
            return _bounded_text(_template(text).generate(**context))
    except TemplateTimeout as e:
        raise _spent_limit(where, text, f"the template took longer than {e.seconds:g}s (in {_shown(text)})") from None
    except _TooLarge as e:
        raise TemplateLimit(where, f"{e} (in {_shown(text)})") from None
    except MemoryError:
        raise _spent_limit(where, text, f"the template needs more memory than allowed (in {_shown(text)})") from None
    except RecursionError:
        raise TemplateLimit(where, f"the template nests or recurses too deeply (in {_shown(text)})") from None
    except JinjaError as e:
        raise TemplateError(where, f"{e.message or e.__class__.__name__} (in {_shown(text)})") from e
    except (TypeError, ValueError, ArithmeticError, LookupError) as e:
        raise TemplateError(where, f"{e} (in {_shown(text)})") from e


def render(value: Any, context: Mapping[str, Any], where: str = "template") -> Any:
    """Render every string inside ``value`` (dicts and lists are walked)."""
    if isinstance(value, str):
        return render_string(value, context, where)
    if isinstance(value, Mapping):
        return {k: render(v, context, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context, f"{where}[{i}]") for i, v in enumerate(value)]
    return value
