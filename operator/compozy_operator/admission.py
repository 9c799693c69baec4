"""The validating admission webhook: ``kubectl apply`` refuses what ``compozy validate`` refuses.

Served by the operator process with Kopf's admission support (``kopf.on.validate`` handlers and a
``kopf.WebhookServer``). Kopf does not manage the ``ValidatingWebhookConfiguration``: the Helm chart
creates it (and the serving certificate), the local cluster's tests register one pointing at the
process (``testenv/admission.py``). See docs/admission.md for what is checked where.

The checks are :func:`review_workflow`, :func:`review_execution_create` and
:func:`review_execution_update`, built on ``validation`` (the same checks as ``compozy validate`` and
the orchestrator's start, with the same messages: ``<field path>: <problem>``). What evaluates an
author's expressions (templates, the input schema's regexes) runs in the evaluation pool, bounded
(``sandbox.EvalPool.validate``): a catastrophic regex must not stall the operator's event loop.

An object nested deeper than Python's recursion limit cannot even be parsed by Kopf's server
(``json.loads`` raises ``RecursionError``); :class:`GuardedWebhookServer` turns that into a clear
refusal instead of an HTTP 500 (which the API server would report as "failed calling webhook").
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp.web
import kopf
from pydantic import ValidationError

from .execution_requests import requested_retries
from .resources.crd import CANCEL_FINAL_MESSAGE, IMMUTABLE_MESSAGE, RETRY_CANCEL_MESSAGE, RETRY_UP_MESSAGE
from .resources.models import GROUP, VERSION, WorkflowExecutionSpec, WorkflowSpec
from .kube import ApiException, Kube
from .sandbox import EvaluationError
from .settings import Settings
from .validation import MAX_INPUT_DEPTH, SpecError, apply_defaults, input_problems, model_problems, parse_workflow

log = logging.getLogger("compozy.admission")

#: Kopf handler ids; Kopf serves each at ``https://<host>:<port>/<id>``.
WORKFLOW_HOOK = "validate-workflow"
EXECUTION_HOOK = "validate-workflowexecution"
#: The same texts as the CRD's CEL rules (crd.py), which cover the typed fields; the webhook also
#: covers ``spec.input`` (any JSON, which CEL cannot see).
IMMUTABLE = IMMUTABLE_MESSAGE
CANCEL_FINAL = CANCEL_FINAL_MESSAGE
MESSAGE_LIMIT = 4000
REQUEST_LIMIT = 16 * 1024 * 1024  # bytes of an AdmissionReview the server reads (the API server sends at most ~2x 3 MiB)  # characters of a refusal (the API server passes it to kubectl as is)

JSON = dict[str, Any]


#: The evaluation pool's start checks: (workflow, field prefix, input, whether to check the input)
#: -> (problems, reason).
Validate = Callable[[WorkflowSpec, str, Any, bool], Awaitable[tuple[list[str], str]]]


async def review_workflow(obj: JSON, validate: Validate) -> list[str]:
    """Problems of a Workflow, as ``compozy validate`` reports them (empty: valid)."""
    try:
        wf = parse_workflow((obj or {}).get("spec") or {})
    except SpecError as e:
        return e.problems
    return (await validate(wf, "spec", None, False))[0]


async def review_execution_create(obj: JSON, workflow: JSON | None, max_input_bytes: int,
                                  validate: Validate) -> list[str]:
    """Problems of a new WorkflowExecution. ``workflow`` is the Workflow its ``workflowRef`` names
    (None: inline, or not found; then only the execution itself is checked). The input is checked
    with the schema's defaults applied, as the run's start applies them."""
    raw = (obj or {}).get("spec") or {}
    if problems := input_problems(raw.get("input"), max_input_bytes):
        return problems
    try:
        spec = WorkflowExecutionSpec.model_validate(raw)
    except ValidationError as e:
        return model_problems(e)
    if (spec.workflow is None) == (spec.workflow_ref is None):
        return ["spec: exactly one of spec.workflowRef or spec.workflow must be set"]
    if spec.workflow is not None:
        wf, prefix = spec.workflow, "spec.workflow"
    elif workflow is None:
        return []
    else:
        try:  # the referenced Workflow's problems, named as the run's start would name them
            wf, prefix = parse_workflow(workflow.get("spec") or {}, "workflow.spec"), "workflow.spec"
        except SpecError as e:
            return e.problems
    return (await validate(wf, prefix, apply_defaults(wf.input, spec.input), True))[0]


def review_execution_update(old: JSON, new: JSON) -> list[str]:
    """A run's spec may change only in ``cancel`` (towards true, or cleared by the patch that retries
    it) and ``retry`` (up by one; docs/retry.md)."""
    old_spec, new_spec = (old or {}).get("spec") or {}, (new or {}).get("spec") or {}
    problems = []
    mutable = ("cancel", "retry", "ttlSecondsAfterFinished")  # the TTL: keep a run longer, or let it go sooner
    if {k: v for k, v in old_spec.items() if k not in mutable} != {k: v for k, v in new_spec.items()
                                                                   if k not in mutable}:
        problems.append(IMMUTABLE)
    old_retry, new_retry = requested_retries(old_spec), requested_retries(new_spec)
    raised = new_retry > old_retry
    if not old_retry <= new_retry <= old_retry + 1:
        problems.append(RETRY_UP_MESSAGE)
    if old_spec.get("cancel") is True and new_spec.get("cancel") is not True and not raised:
        problems.append(CANCEL_FINAL)
    if raised and new_spec.get("cancel") is True:
        problems.append(RETRY_CANCEL_MESSAGE)
    return problems


def spec_changed(old: JSON | None, new: JSON | None) -> bool:
    return old is None or (old.get("spec") != (new or {}).get("spec"))


def refusal(problems: list[str]) -> str:
    text = "; ".join(problems)
    return text if len(text) <= MESSAGE_LIMIT else f"{text[:MESSAGE_LIMIT - 40]} ... ({len(problems)} problems in all)"

# -- what Kopf cannot parse --------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_BRACKET = re.compile(r"[\[\]{}]")
_UID = re.compile(r'"uid"\s*:\s*"([^"\\]*)"')


def text_depth(text: str) -> int:
    """How deeply a JSON text nests, counted on the text (no parsing, no recursion)."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub('""', text)):
        depth += 1 if m.group() in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def too_deep_response(text: str) -> JSON:
    """An AdmissionReview refusing a request too deep to parse. The request's uid is the first
    ``uid`` of the review (Go writes ``request.uid`` before the object)."""
    uid = m.group(1) if (m := _UID.search(text)) else ""
    depth = max(0, text_depth(text) - 2)  # the review and its request wrap the object
    message = (f"the object nests {depth} levels deep, too deep to check (spec.input: at most "
               f"{MAX_INPUT_DEPTH} levels are allowed)")
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "response": {"uid": uid, "allowed": False, "status": {"code": 422, "reason": "Invalid",
                                                                   "message": message}}}


class GuardedWebhookServer(kopf.WebhookServer):
    """Kopf's webhook server, refusing (not failing on) a body nested too deep to parse."""

    @staticmethod
    async def _serve(fn: Any, request: aiohttp.web.Request) -> aiohttp.web.Response:
        # aiohttp refuses bodies over 1 MiB (HTTP 413) by default, and Kopf builds the application
        # without a way to change it: an object near the API server's own 3 MiB request limit must
        # still reach the handler (to be refused with the field's name, e.g. spec.input too large).
        request._client_max_size = REQUEST_LIMIT  # noqa: SLF001
        try:
            return await kopf.WebhookServer._serve(fn, request)
        except RecursionError:
            text = await request.text()  # aiohttp keeps the body read once
            response = too_deep_response(text)
            log.warning("refused an admission request nested too deep to parse: %s",
                        response["response"]["status"]["message"])
            return aiohttp.web.json_response(response)


def webhook_server(settings: Settings) -> GuardedWebhookServer:
    return GuardedWebhookServer(addr=settings.webhook_host, port=settings.webhook_port,
                                certfile=settings.webhook_cert_file, pkeyfile=settings.webhook_key_file)


# -- Kopf wiring -------------------------------------------------------------------------------

def register(registry: kopf.OperatorRegistry, settings: Settings, kube: Callable[[], Kube],
             validate: Callable[[], Validate]) -> None:
    """The two validating handlers, and the server (set at startup by :func:`configure`)."""

    @kopf.on.validate(GROUP, VERSION, "workflows", id=WORKFLOW_HOOK, registry=registry)
    async def validate_workflow(body: kopf.Body, old: kopf.Body | None, operation: str, **_: Any) -> None:
        new = dict(body)
        if operation == "UPDATE" and not spec_changed(dict(old) if old else None, new):
            return  # metadata only: a Workflow stored before the webhook was on may still be relabelled
        try:
            problems = await review_workflow(new, validate())
        except EvaluationError as e:
            raise kopf.AdmissionError(f"could not check the Workflow: {e}", code=422) from None
        if problems:
            raise kopf.AdmissionError(refusal(problems), code=422)

    @kopf.on.validate(GROUP, VERSION, "workflowexecutions", id=EXECUTION_HOOK, registry=registry)
    async def validate_execution(body: kopf.Body, old: kopf.Body | None, operation: str, warnings: list[str],
                                 **_: Any) -> None:
        new = dict(body)
        if operation == "UPDATE":
            problems = review_execution_update(dict(old) if old else {}, new)
        else:
            workflow = await _referenced_workflow(kube(), new, warnings)
            try:
                problems = await review_execution_create(new, workflow, settings.max_input_bytes, validate())
            except EvaluationError as e:
                raise kopf.AdmissionError(f"could not check the WorkflowExecution: {e}", code=422) from None
        if problems:
            raise kopf.AdmissionError(refusal(problems), code=422)


async def _referenced_workflow(kube: Kube, obj: JSON, warnings: list[str]) -> JSON | None:
    ref = ((obj.get("spec") or {}).get("workflowRef") or {}).get("name")
    ns = (obj.get("metadata") or {}).get("namespace")
    if not ref or not ns or not isinstance(ref, str):
        return None
    try:
        return await asyncio.to_thread(kube.get, f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/workflows/{ref}")
    except ApiException as e:
        if e.status != 404:  # e.g. 403 for a namespace the operator does not watch: the run's start checks again
            log.warning("cannot read Workflow %s/%s to check an execution's input: %s", ns, ref, e.reason)
            return None
    warnings.append(f"spec.workflowRef.name: Workflow {ref!r} not found in namespace {ns}; "
                    "the run fails unless it exists when the run starts")
    return None


def configure(kopf_settings: kopf.OperatorSettings, settings: Settings) -> None:
    """Serve the handlers; no webhook configuration is written by Kopf (the chart owns it)."""
    kopf_settings.admission.server = webhook_server(settings)
    kopf_settings.admission.managed = None
