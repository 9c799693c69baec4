"""The API's request and response bodies (pydantic: FastAPI derives the OpenAPI document from them).

Field descriptions come from the CRD models (resources/models.py), so the API and ``kubectl explain``
say the same thing about a run's input and timeout."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..resources.models import WorkflowExecutionSpec, WorkflowExecutionStatus, WorkflowSpec

_SPEC = WorkflowExecutionSpec.model_fields
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"  # a DNS subdomain
NAMESPACE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"  # a DNS label


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TriggerRequest(Body):
    """A new run of a Workflow (``POST .../workflows/{workflow}/executions``)."""

    input: Any = Field(None, description=_SPEC["input"].description)
    name: str | None = Field(None, max_length=253, description="The run's name (default: `<workflow>-xxxxx`).")
    labels: dict[str, str] | None = Field(None, description="Labels of the run, besides `compozy.dev/workflow`.")
    timeout: str | None = Field(None, max_length=64, description=_SPEC["timeout"].description)


class NatsTriggerRequest(TriggerRequest):
    """The NATS trigger's body: the POST's, plus the Workflow (the subject names the namespace)."""

    workflow: str = Field(max_length=253, pattern=NAME_PATTERN, description="The Workflow to run.")


class ResubmitRequest(Body):
    input: Any = Field(None, description="The new run's input (default: the old run's).")


class SignalRequest(Body):
    data: dict[str, Any] | None = Field(None, description="What the waiting task receives.")


class Created(BaseModel):
    """The new run (the seed's WorkflowTrigger acknowledgement): answered before it starts."""

    name: str
    namespace: str
    uid: str
    phase: str = Field(description="`Pending` until the operator starts it.")


class Accepted(BaseModel):
    """An asynchronous request taken: the run's status shows its effect."""

    name: str
    namespace: str
    uid: str
    message: str


class WorkflowExecution(BaseModel):
    """A WorkflowExecution as `kubectl get -o json` shows it: the CRD's own spec and status models.
    For the document only: answers are the API server's objects as they are, never re-serialized."""

    apiVersion: str
    kind: str
    metadata: dict[str, Any]
    spec: WorkflowExecutionSpec
    status: WorkflowExecutionStatus | None = None


class ExecutionList(BaseModel):
    """A page of runs (for the document only, as :class:`WorkflowExecution`)."""

    items: list[WorkflowExecution]
    continue_: str | None = Field(None, alias="continue", description="Pass as `continue` for the next page.")


class Workflow(BaseModel):
    """A Workflow as `kubectl get -o json` shows it (for the document only, as :class:`WorkflowExecution`)."""

    apiVersion: str
    kind: str
    metadata: dict[str, Any]
    spec: WorkflowSpec
    status: dict[str, Any] | None = Field(None, description="`Ready` condition (valid or the problems), taskCount.")


class WorkflowList(BaseModel):
    items: list[Workflow]
    continue_: str | None = Field(None, alias="continue", description="Pass as `continue` for the next page.")


class NamespaceItem(BaseModel):
    name: str


class NamespaceList(BaseModel):
    """The namespaces where the caller may list runs."""

    items: list[NamespaceItem]
    allNamespaces: bool = Field(description="The caller may list runs of every namespace at once "
                                "(`GET /executions`).")


class Access(BaseModel):
    """What the caller may do in a namespace: ``resources.<resource>.<verb>``, as RBAC answers
    SubjectAccessReviews for them (``kubectl auth can-i``)."""

    namespace: str
    user: str
    resources: dict[str, dict[str, bool]]


class ModelCall(BaseModel):
    """One model call of an agent attempt, as the attempt reported it."""

    model: str | None = Field(description="The model that answered (as the provider names it).")
    inputTokens: int | None
    outputTokens: int | None
    seconds: float | None = Field(description="The call's duration.")
    finishReason: str | None = Field(description="Why the model stopped, in the provider's words (stop, "
                                     "tool_calls, length, end_turn, tool_use, ...).")
    toolCalls: list[str] = Field(description="The tools it asked for, by name.")


class AttemptDetail(BaseModel):
    """One task attempt: what it received after templates, and an agent's model calls."""

    task: str
    attempt: int
    dispatched: bool = Field(description="Its dispatch is on record (state events are kept 7 days).")
    rendered: dict[str, Any] | None = Field(
        description="`input` (the rendered `with`), and an agent's rendered `prompt` and `instructions`. "
        "Null when stored apart (see renderedSize) or not recorded. Never a secret: secrets reach a task "
        "only through Secret references in its pod's environment.")
    renderedSize: int | None = Field(None, description="Bytes of a rendered input too large for the event, kept in "
                                     "the object store: ask again with `stored=true`.")
    modelCalls: list[ModelCall] | None = Field(description="Agent attempts that ended: each model call, in order.")


class SignInOptions(BaseModel):
    oidc: bool = Field(description="Sign-in with the identity provider is configured (`/oauth2/login`).")
    localUser: bool = Field(description="A request without credentials acts as the local cluster's user.")


class Whoami(BaseModel):
    user: str = Field(description="The user the bearer token authenticates as.")
    groups: list[str]
    via: Literal["token", "session", "certificate", "local"] = Field(
        description="How: a bearer token, an OIDC sign-in's session cookie, a client certificate, or the local "
        "cluster's user (no credentials).")


class ErrorDetail(BaseModel):
    reason: str = Field(description="Machine-readable: Unauthorized, Forbidden, NotFound, Invalid, Conflict, ...")
    message: str
    field: str | None = Field(None, description="The request field (body, path or query) at fault.")


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    """A refusal, answered as :class:`ErrorBody` with ``status`` (HTTP) or in a NATS reply."""

    def __init__(self, status: int, reason: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.field = status, reason, message, field

    def body(self) -> dict[str, Any]:
        detail: dict[str, Any] = {"reason": self.reason, "message": self.message}
        if self.field:
            detail["field"] = self.field
        return {"error": detail}
