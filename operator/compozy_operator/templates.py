"""``{{ ... }}`` templates, rendered by Jinja2's sandbox.

A string that is exactly one ``{{ expr }}`` keeps the expression's JSON type (number, bool,
list, object); any other string renders to a string. Undefined names are errors, never silent
empty strings. Jinja2's ``SandboxedEnvironment`` blocks attribute access to Python internals,
so a workflow author cannot reach the operator's process through a template.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, Undefined
from jinja2 import TemplateError as JinjaError
from jinja2.nativetypes import NativeEnvironment
from jinja2.sandbox import SandboxedEnvironment

_SINGLE = re.compile(r"^\s*\{\{(?P<expr>(?:(?!\}\}).)*)\}\}\s*$", re.DOTALL)


class _Sandbox(SandboxedEnvironment):
    def getattr(self, obj: Any, attribute: str) -> Any:
        """``input.items`` is the input's field ``items``, not the dict method of that name (the data
        is JSON: its keys come first)."""
        if isinstance(obj, dict) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


class _NativeSandbox(_Sandbox, NativeEnvironment):
    pass


_text = _Sandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_native = _NativeSandbox(undefined=StrictUndefined, autoescape=False)


class TemplateError(ValueError):
    """A template failed; the message names where it sits (e.g. ``tasks.count.with.text``)."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


def render_string(text: str, context: Mapping[str, Any], where: str = "template") -> Any:
    if "{{" not in text and "{%" not in text:
        return text
    try:
        single = _SINGLE.match(text)
        if single and "{%" not in text:
            value = _native.compile_expression(single.group("expr"), undefined_to_none=False)(**context)
            if isinstance(value, Undefined):
                str(value)  # raises UndefinedError with the name that is missing
            return value
        return _text.from_string(text).render(**context)
    except JinjaError as e:
        raise TemplateError(where, f"{e.message or e.__class__.__name__} (in {text.strip()!r})") from e
    except (TypeError, ValueError, ArithmeticError, LookupError) as e:
        raise TemplateError(where, f"{e} (in {text.strip()!r})") from e


def render(value: Any, context: Mapping[str, Any], where: str = "template") -> Any:
    """Render every string inside ``value`` (dicts and lists are walked)."""
    if isinstance(value, str):
        return render_string(value, context, where)
    if isinstance(value, Mapping):
        return {k: render(v, context, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context, f"{where}[{i}]") for i, v in enumerate(value)]
    return value
