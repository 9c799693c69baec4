"""What each API call does, whatever carries it (HTTP or the NATS trigger): authorize, check, act.

Every call is authorized with a SubjectAccessReview of the verb kubectl would need for the same
effect, then done with the operator's own client. Created objects and patches come from
:mod:`..execution_requests` (the CLI and the UI build the same ones); a new run's input is checked
with the admission webhook's own checks (:func:`..admission.review_execution_create`), so the
caller gets a 400 naming the field instead of the API server's 422 text.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .. import execution_requests as requests
from ..admission import Validate, review_execution_create
from ..events import OUTPUT_BUCKET, output_prefix
from ..kube import ApiException, Kube
from ..resources.models import GROUP, TERMINAL_PHASES, VERSION
from ..resources.paths import executions_path, workflows_path
from ..sandbox import EvaluationError
from ..validation import name_problems
from .auth import RESOURCE, WORKFLOWS, Authorizer, User
from .models import Accepted, ApiError, Created, ResubmitRequest, SignalRequest, TriggerRequest

# where a problem's path (as validation and the API server name it) is in the request body
_FIELDS = (("spec.input", "input"), ("spec.timeout", "timeout"), ("metadata.name", "name"),
           ("metadata.labels", "labels"), ("metadata.generateName", "name"), ("workflow.spec", "workflow"))
_PATH = re.compile(r"([A-Za-z][\w.\[\]-]*)(?::|\s)")
_WEBHOOK = "denied the request: "  # the API server's prefix of a webhook's refusal


def stored_output_ref(run: dict[str, Any], task: str | None) -> dict[str, Any]:
    """Where the run's (``task`` None) or a task's offloaded output is stored. A ref whose key is not
    under the run's own prefix is refused: the status took it from a task attempt's event, and an
    attempt must not get another run's output shown through this run."""
    meta, status = run["metadata"], run.get("status") or {}
    where = "the run" if task is None else f"task {task!r}"
    holder = status if task is None else (status.get("tasks") or {}).get(task)
    if not isinstance(holder, dict):
        raise ApiError(404, "NotFound", f"{where} has no status", "task")
    ref = holder.get("outputRef")
    if not isinstance(ref, dict) or not isinstance(ref.get("key"), str) or not isinstance(ref.get("bucket"), str):
        raise ApiError(404, "NotFound", f"{where} has no stored output (a small output is in the status itself)",
                       "task" if task is not None else None)
    if not own_ref(meta, ref):
        raise ApiError(409, "ForeignOutput", f"the outputRef of {where} does not name this run's output",
                       "task" if task is not None else None)
    return ref


def own_ref(meta: dict[str, Any], ref: Any) -> bool:
    """Whether ``ref`` names an object of the run ``meta`` (under its own prefix of the outputs' bucket)."""
    return (isinstance(ref, dict) and ref.get("bucket") == OUTPUT_BUCKET and isinstance(ref.get("key"), str)
            and ref["key"].startswith(output_prefix(meta["namespace"], meta["name"], meta["uid"])))


def list_selectors(workflow: str | None, phase: str | None, label_selector: str | None,
                   created_after: datetime | None) -> tuple[str | None, str | None]:
    """The (label selector, field selector) of a list's filters (the phase: execution_requests.phase_selector)."""
    labels = [t for t in (label_selector, f"{requests.LABEL_WORKFLOW}={workflow}" if workflow else None,
                          requests.created_after_selector(created_after) if created_after else None) if t]
    fields = requests.phase_selector(phase) if phase is not None else None
    return ",".join(labels) or None, fields


# what the UI asks "may I" about in a namespace: (resource, verb) as RBAC names them
ACCESS = ((RESOURCE, "get"), (RESOURCE, "list"), (RESOURCE, "create"), (RESOURCE, "patch"),
          (WORKFLOWS, "get"), (WORKFLOWS, "list"))
NAMESPACE_CHECKS = 16  # SubjectAccessReviews in flight at once while listing the caller's namespaces


def request_field(problem: str) -> str | None:
    """The request field a problem names (``spec.input.n: ...`` is ``input.n``), or None."""
    match = _PATH.match(problem.split(_WEBHOOK, 1)[-1])
    if not match:
        return None
    path = match.group(1)
    for prefix, field in _FIELDS:
        if path == prefix or path.startswith(prefix + ".") or path.startswith(prefix + "["):
            # the referenced Workflow's own problems are not in the request: its path param is at fault
            return field if field == "workflow" else field + path[len(prefix):]
    return None


def kube_error(e: ApiException, what: str) -> ApiError:
    """The API server's refusal of the operator's request on the caller's behalf, as the caller's error."""
    try:
        status = json.loads(e.body or "{}")
    except (TypeError, ValueError):
        status = {}
    message = str(status.get("message") or e.reason or "no message")[:4000]
    causes = (status.get("details") or {}).get("causes") or []
    field = request_field(f"{causes[0].get('field')}: " if causes and causes[0].get("field") else message)
    if e.status == 404:
        return ApiError(404, "NotFound", f"{what} not found")
    if e.status == 409:
        return ApiError(409, str(status.get("reason") or "Conflict"), message, field)
    if e.status == 410:  # a list's continue token the API server no longer knows
        return ApiError(410, "Expired", message, "continue")
    if e.status in (400, 422):
        return ApiError(400, "Invalid", message, field)
    if e.status == 403:
        return ApiError(403, "Forbidden", f"the API service may not do this here (the operator's RBAC does not "
                        f"cover it): {message}")
    return ApiError(503, "ServiceUnavailable", f"the Kubernetes API server answered {e.status}: {message}")


class Operations:
    def __init__(self, kube: Kube, authorizer: Authorizer, validate: Callable[[], Validate],
                 max_input_bytes: int, namespaces: tuple[str, ...] = ()) -> None:
        """``namespaces``: those the operator serves (namespaced mode); empty: every namespace."""
        self.kube = kube
        self.namespaces = namespaces
        self.authorizer = authorizer
        self.validate = validate
        self.max_input_bytes = max_input_bytes

    async def _kube(self, what: str, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        try:
            return await asyncio.to_thread(self.kube.request, method, path, body, **kw)
        except ApiException as e:
            raise kube_error(e, what) from None
        except Exception as e:  # noqa: BLE001 - the API server unreachable: the caller may retry
            raise ApiError(503, "ServiceUnavailable", f"the Kubernetes API server is unreachable "
                           f"({type(e).__name__})") from None

    async def execution(self, namespace: str, name: str) -> dict[str, Any]:
        return await self._kube(f"WorkflowExecution {namespace}/{name}", "GET", executions_path(namespace, name))

    async def read(self, user: User, namespace: str, name: str) -> dict[str, Any]:
        """GET: the run as ``kubectl get -o json`` shows it."""
        await self.authorizer.authorize(user, "get", namespace, name)
        return await self.execution(namespace, name)

    async def trigger(self, user: User, namespace: str, workflow: str, req: TriggerRequest) -> Created:
        await self.authorizer.authorize(user, "create", namespace)
        wf = await self._kube(f"Workflow {namespace}/{workflow}", "GET", workflows_path(namespace, workflow))
        obj = requests.new_execution(workflow, req.input, name=req.name, labels=req.labels, timeout=req.timeout)
        return await self._create(namespace, obj, wf)

    async def resubmit(self, user: User, namespace: str, name: str, req: ResubmitRequest) -> Created:
        await self.authorizer.authorize(user, "get", namespace, name)
        await self.authorizer.authorize(user, "create", namespace)
        old = await self.execution(namespace, name)
        obj = (requests.resubmission(old, req.input) if "input" in req.model_fields_set
               else requests.resubmission(old))
        ref = (obj["spec"].get("workflowRef") or {}).get("name")
        wf = await self._kube(f"Workflow {namespace}/{ref}", "GET", workflows_path(namespace, ref)) if ref else None
        return await self._create(namespace, obj, wf)

    async def _create(self, namespace: str, obj: dict[str, Any], workflow: dict[str, Any] | None) -> Created:
        obj["metadata"]["namespace"] = namespace
        problems = name_problems(obj["metadata"])
        if not problems:
            try:
                problems = await review_execution_create(obj, workflow, self.max_input_bytes, self.validate())
            except EvaluationError as e:
                raise ApiError(400, "Invalid", f"could not check the run: {e}") from None
        if problems:
            field = request_field(problems[0])
            raise ApiError(400, "Invalid", "; ".join(problems)[:4000], field)
        created = await self._kube("WorkflowExecution", "POST", executions_path(namespace),
                                   requests.stamp_created(obj, time.time()))
        meta = created["metadata"]
        return Created(name=meta["name"], namespace=namespace, uid=meta["uid"],
                       phase=(created.get("status") or {}).get("phase") or "Pending")

    async def list(self, user: User, namespace: str | None, workflow: str | None, phase: str | None,
                   label_selector: str | None, limit: int | None, continue_: str | None,
                   created_after: datetime | None = None) -> dict[str, Any]:
        """A page of runs (``namespace`` None: of every namespace, for a caller who may list them all,
        as ``kubectl get -A``). Every filter is a selector the API server applies before it cuts the
        page (:func:`list_selectors`), so a page holds ``limit`` matching runs unless it is the last."""
        await self.authorizer.authorize(user, "list", namespace or "")
        labels, fields = list_selectors(workflow, phase, label_selector, created_after)
        page = await self._kube("WorkflowExecutions", "GET", executions_path(namespace),
                                query={"labelSelector": labels, "fieldSelector": fields, "limit": limit,
                                       "continue": continue_ or None})
        items = [dict(i, apiVersion=f"{GROUP}/{VERSION}", kind=requests.KIND) for i in page.get("items") or []]
        more = (page.get("metadata") or {}).get("continue")
        return {"items": items, **({"continue": more} if more else {})}

    async def cancel(self, user: User, namespace: str, name: str) -> Accepted:
        await self.authorizer.authorize(user, "patch", namespace, name)
        run = await self.execution(namespace, name)
        if (phase := (run.get("status") or {}).get("phase")) in TERMINAL_PHASES:
            raise ApiError(409, "AlreadyEnded", f"WorkflowExecution {namespace}/{name} has already ended ({phase})")
        await self._kube(f"WorkflowExecution {namespace}/{name}", "PATCH", executions_path(namespace, name),
                         requests.cancel_patch(), content_type="application/merge-patch+json")
        return Accepted(name=name, namespace=namespace, uid=run["metadata"]["uid"],
                        message="cancel requested; the run ends Cancelled")

    async def retry(self, user: User, namespace: str, name: str) -> Accepted:
        await self.authorizer.authorize(user, "patch", namespace, name)
        run = await self.execution(namespace, name)
        phase = (run.get("status") or {}).get("phase") or "Pending"
        if phase not in TERMINAL_PHASES:
            raise ApiError(409, "NotEnded", f"WorkflowExecution {namespace}/{name} is {phase}; only an ended run "
                           "can be retried")
        if phase == "Succeeded":
            raise ApiError(409, "NothingToRetry", f"WorkflowExecution {namespace}/{name} Succeeded; only a Failed, "
                           "TimedOut or Cancelled run can be retried (resubmit runs it again)")
        try:
            await self._kube(f"WorkflowExecution {namespace}/{name}", "PATCH", executions_path(namespace, name),
                             requests.retry_patch(run), content_type="application/merge-patch+json")
        except ApiError as e:
            if e.status == 400:  # nothing in the (empty) request was wrong: the cluster refuses retries
                raise ApiError(409, "RetryRefused", e.message) from None
            raise
        return Accepted(name=name, namespace=namespace, uid=run["metadata"]["uid"],
                        message="retry requested; the run continues from its failed tasks")

    async def signal(self, user: User, namespace: str, name: str, signal: str, req: SignalRequest) -> Accepted:
        """Signals go to ``wait`` tasks; no such task type exists yet, so no run can take one."""
        await self.authorizer.authorize(user, "patch", namespace, name)
        await self.execution(namespace, name)
        raise ApiError(409, "NoWaitingTask", f"WorkflowExecution {namespace}/{name} has no task waiting for signal "
                       f"{signal!r}: wait tasks are not supported yet", "signal")

    async def namespaces_of(self, user: User) -> dict[str, Any]:
        """The namespaces (of those the operator serves) where the caller may list runs, and whether
        they may list them in every namespace at once."""
        everywhere, _ = await self.authorizer.decide(user, "list", "")
        if self.namespaces:
            names = sorted(self.namespaces)
        else:
            listed = await self._kube("Namespaces", "GET", "/api/v1/namespaces")
            names = sorted(n["metadata"]["name"] for n in listed.get("items") or [])
        if not everywhere:
            limit = asyncio.Semaphore(NAMESPACE_CHECKS)

            async def readable(ns: str) -> bool:
                async with limit:
                    return (await self.authorizer.decide(user, "list", ns))[0]

            names = [n for n, ok in zip(names, await asyncio.gather(*map(readable, names))) if ok]
        return {"items": [{"name": n} for n in names], "allNamespaces": everywhere and not self.namespaces}

    async def access(self, user: User, namespace: str) -> dict[str, Any]:
        """What the caller may do in ``namespace`` (SubjectAccessReviews of the verbs the API checks):
        the UI shows only the actions the answer allows, and the API refuses the rest anyway."""
        answers = await asyncio.gather(*(self.authorizer.decide(user, verb, namespace, resource=resource)
                                         for resource, verb in ACCESS))
        verbs: dict[str, dict[str, bool]] = {}
        for (resource, verb), (allowed, _) in zip(ACCESS, answers):
            verbs.setdefault(resource, {})[verb] = allowed
        return {"namespace": namespace, "user": user.name, "resources": verbs}

    async def workflows(self, user: User, namespace: str, limit: int | None, continue_: str | None) -> dict[str, Any]:
        """A page of the namespace's Workflows (list workflows)."""
        await self.authorizer.authorize(user, "list", namespace, resource=WORKFLOWS)
        page = await self._kube("Workflows", "GET", workflows_path(namespace),
                                query={"limit": limit, "continue": continue_ or None})
        items = [dict(i, apiVersion=f"{GROUP}/{VERSION}", kind="Workflow") for i in page.get("items") or []]
        more = (page.get("metadata") or {}).get("continue")
        return {"items": items, **({"continue": more} if more else {})}

    async def workflow(self, user: User, namespace: str, name: str) -> dict[str, Any]:
        """One Workflow as ``kubectl get -o json`` shows it (get workflows)."""
        await self.authorizer.authorize(user, "get", namespace, name, resource=WORKFLOWS)
        return await self._kube(f"Workflow {namespace}/{name}", "GET", workflows_path(namespace, name))
