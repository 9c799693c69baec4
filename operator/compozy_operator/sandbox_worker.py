"""An evaluation worker: ``python -m compozy_operator.sandbox_worker LIMITS_JSON PARENT_PID`` (the
pool starts it through a few lines that first lower its CPU priority: ``sandbox.BOOT``).

Runs workflow.Executor's ``decide`` and the start checks for the operator's evaluation pool
(:mod:`compozy_operator.sandbox`), one request at a time: frames of a 4-byte big-endian length
and a body on stdin (pickles, from the operator) and stdout (JSON, to the operator). Bounds:
a CPU timer around each template and the input check (SIGPROF -> ``TemplateTimeout``, which
interrupts Jinja code and ``re`` matching), a wall timer around each request (SIGALRM), and an
address-space limit of its size at start plus ``memory_mb``.
"""

from __future__ import annotations

import collections
import ctypes
import os
import pickle
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import jsonschema

from . import templates
from .resources.models import WorkflowSpec
from .executor import decide
from .process_limits import limit_memory, oom_kill_me_first
from .sandbox import HEADER, MAX_ANSWER, dumps, encode_action
from .templates import TemplateTimeout
from .validation import check_input, check_workflow

PR_SET_PDEATHSIG = 1
SPECS_KEPT = 64  # specs a worker keeps (the pool sends one again when asked), and their bytes at most
SPECS_BYTES = 32 << 20


class RunTimeout(BaseException):
    """The whole request went past its wall time."""


class _Timer:
    """A one-shot timer (``which``: ITIMER_PROF counts CPU, ITIMER_REAL wall time) whose signal
    raises ``make()`` in whatever code runs while it is armed. As a context manager it is
    templates.guard (CPU, around one template or the input check) and the request's wall timer."""

    def __init__(self, which: int, seconds: float, make: Callable[[], BaseException]) -> None:
        self.which, self.seconds, self.make = which, seconds, make
        self.armed = False

    def __call__(self, where: str) -> _Timer:
        return self

    def __enter__(self) -> None:
        if self.seconds > 0:
            self.armed = True
            signal.setitimer(self.which, self.seconds)

    def __exit__(self, *exc: Any) -> None:
        self.armed = False
        signal.setitimer(self.which, 0)

    def fire(self, *_: Any) -> None:
        if self.armed:
            self.armed = False
            raise self.make()


# ---- the input check, with the field of a slow pattern found -------------------------------

_matching: dict[str, Any] = {}


def _watched(check: Any) -> Any:
    def keyword(validator: Any, value: Any, instance: Any, schema: Any) -> Iterator[Any]:
        _matching["instance"], _matching["pattern"] = instance, value
        yield from check(validator, value, instance, schema) or ()
    return keyword


def _watch_patterns() -> None:
    """Remember what each ``pattern``/``patternProperties`` keyword matches (in this process only):
    a timer that fires while a regex backtracks can then name the field."""
    for cls in set(jsonschema.validators._VALIDATORS.values()):  # noqa: SLF001 - the drafts' keyword tables
        for kw in ("pattern", "patternProperties"):
            if kw in cls.VALIDATORS:
                cls.VALIDATORS[kw] = _watched(cls.VALIDATORS[kw])


def _path_of(root: Any, target: Any, prefix: str) -> str:
    stack = [(root, prefix)]
    while stack:
        value, path = stack.pop()
        if value is target:
            return path
        if isinstance(value, dict):
            stack += [(v, f"{path}.{k}") for k, v in value.items()]
        elif isinstance(value, list):
            stack += [(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return prefix


def validate(wf: WorkflowSpec, prefix: str, value: Any, with_input: bool = True) -> dict[str, Any]:
    """The start checks (also used in-process when the pool is off)."""
    try:
        with templates.guard(prefix):
            problems = check_workflow(wf, prefix)
    except TemplateTimeout as e:
        return {"problems": [f"{prefix}: checking the workflow took longer than {e.seconds:g}s"],
                "reason": "EvaluationLimit"}
    if problems or not with_input:
        return {"problems": problems, "reason": "InvalidWorkflow"}
    return input_check(wf.input, value)


def input_check(schema: Any, value: Any) -> dict[str, Any]:
    """The input against its schema, under ``templates.guard``: a pattern that backtracks past the
    limit is named with the field it was matching (reason ``EvaluationLimit``)."""
    _matching.clear()
    try:
        with templates.guard("spec.input"):
            problems = check_input(schema, value)
    except (TemplateTimeout, MemoryError, RecursionError) as e:
        where = _path_of(value, _matching["instance"], "spec.input") if "instance" in _matching else "spec.input"
        what = f"matching the input schema's pattern {str(_matching.get('pattern'))[:100]!r}" \
            if "pattern" in _matching else "checking the input against the workflow's input schema"
        limit = f"took longer than {e.seconds:g}s" if isinstance(e, TemplateTimeout) else "needed too much memory"
        return {"problems": [f"{where}: {what} {limit}"], "reason": "EvaluationLimit"}
    finally:
        _matching.clear()
    return {"problems": problems, "reason": "InvalidInput"}


def install_guard(seconds: float) -> None:
    """Bound this process's templates and input checks by ``seconds`` of CPU each (main thread
    only: the timer's signal is delivered there). The workers do it; so does ``compozy validate``."""
    guard = _Timer(signal.ITIMER_PROF, seconds, lambda: TemplateTimeout(seconds))
    templates.guard = guard
    signal.signal(signal.SIGPROF, guard.fire)
    _watch_patterns()


# ---- the loop ---------------------------------------------------------------------------


class Worker:
    def __init__(self, limits: dict[str, Any]) -> None:
        self.limits = limits
        self.specs: collections.OrderedDict[str, tuple[WorkflowSpec, int]] = collections.OrderedDict()
        self.retire = False  # memory ran out outside a template: answer, then make room for a fresh worker
        self.timer = _Timer(signal.ITIMER_REAL, float(limits["run_timeout"]), RunTimeout)

    def handle(self, request: tuple[Any, ...], size: int) -> dict[str, Any]:
        op, key, spec, args = request
        if op == "validate":
            with self.timer:
                return {"ok": validate(*args)}
        if op != "decide":
            return {"error": {"kind": "internal", "message": f"unknown request {op!r}"}}
        if spec is not None:
            self.specs[key] = (spec, size)  # the request's size bounds the spec's
            while len(self.specs) > SPECS_KEPT or (len(self.specs) > 1 and
                                                   sum(n for _, n in self.specs.values()) > SPECS_BYTES):
                self.specs.popitem(last=False)
        elif key not in self.specs:
            return {"need_spec": True}
        self.specs.move_to_end(key)
        templates.scope = key
        try:
            with self.timer:
                actions = decide(self.specs[key][0], *args)
        finally:
            templates.scope = ""
        return {"ok": [encode_action(a) for a in actions]}

    def answer(self, body: bytes) -> bytes:
        try:
            try:
                result = self.handle(pickle.loads(body), len(body))  # noqa: S301 - from the operator, trusted
            except RunTimeout:
                result = {"error": {"kind": "limit", "message": f"evaluating the run took longer than "
                                    f"{self.limits['run_timeout']:g}s"}}
            except TemplateTimeout as e:  # the timer of a template that had just ended
                result = {"error": {"kind": "limit", "message": f"evaluating the run: a template took longer than "
                                    f"{e.seconds:g}s"}}
            except MemoryError:  # outside a template (which reports its own): start afresh after answering
                self.retire = True
                result = {"error": {"kind": "limit", "message": f"evaluating the run needed more than "
                                    f"{self.limits['memory_mb']} MiB"}}
            except RecursionError:
                result = {"error": {"kind": "limit", "message": "evaluating the run nested too deeply"}}
            except Exception as e:  # noqa: BLE001 - a bug: the operator ends the run with the message
                result = {"error": {"kind": "internal", "message": f"{type(e).__name__}: {e}"[:2000]}}
            out = dumps({**result, "retire": True} if self.retire else result)
            if len(out) > MAX_ANSWER:
                out = dumps({"error": {"kind": "limit", "message": f"the evaluation's answer is {len(out)} bytes; "
                                       f"at most {MAX_ANSWER} are allowed"}})
        except MemoryError:
            self.retire = True
            out = (b'{"retire":true,"error":{"kind":"limit","message":"encoding the evaluation\'s answer needed '
                   b'too much memory"}}')
        return out


def _read(stream: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _die_with(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(0)
    oom_kill_me_first()  # under the pod's memory limit: a worker before the operator


def main() -> None:
    import json  # noqa: PLC0415

    limits = json.loads(sys.argv[1])
    _die_with(int(sys.argv[2]))
    channel_in, channel_out = sys.stdin.buffer, os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # stray prints go to stderr, never into the channel
    sys.stdout = sys.stderr
    templates.configure(int(limits["rendered_bytes"]), int(limits["collection_items"]))
    install_guard(float(limits["timeout"]))
    worker = Worker(limits)
    signal.signal(signal.SIGALRM, worker.timer.fire)
    limit_memory(int(limits["memory_mb"]))

    def send(data: bytes) -> None:
        channel_out.write(HEADER.pack(len(data)) + data)
        channel_out.flush()

    send(dumps({"ready": True}))
    while True:
        try:
            (size,) = HEADER.unpack(_read(channel_in, HEADER.size))
            body = _read(channel_in, size)
        except EOFError:
            return
        send(worker.answer(body))
        if worker.retire:  # its heap may be fragmented or its caches full: the pool starts a fresh one
            return


if __name__ == "__main__":
    main()
