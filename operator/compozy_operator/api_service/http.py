"""The HTTP API (ARCHITECTURE.md §8) as a FastAPI application; docs/api.md describes it.

Every answer that is not a success is ``{"error": {"reason", "message", "field"?}}``: request
validation (FastAPI's 422) becomes a 400 naming the field, unknown routes and methods keep their
404/405, and anything unexpected a 500 with the same shape (the fuzz test asserts it never happens).
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from urllib.parse import urlencode
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime
from nats.js.errors import BucketNotFoundError, ObjectDeletedError, ObjectNotFoundError
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException

from .. import __version__
from .auth import User, bearer_token, certificate_user
from .models import (NAME_PATTERN, NAMESPACE_PATTERN, Accepted, Access, ApiError, AttemptDetail, Created, ErrorBody,
                     ExecutionList, SignInOptions,
                     NamespaceList, ResubmitRequest, SignalRequest, TriggerRequest, Whoami, Workflow,
                     WorkflowExecution, WorkflowList)
from .oidc import SESSION_COOKIE, STATE_COOKIE, UI_PREFIX
from ..execution_requests import PHASES
from .operations import Operations, own_ref, stored_output_ref
from .streams import attempt_facts
from .ui import mount_ui

if TYPE_CHECKING:
    from .service import Context

UI_HEADER = "X-Compozy-Request"  # the UI's calls carry it (cookie sessions: no cross-site forgery)
PEER_SUBJECT = "client_cert_subject"  # in scope["extensions"]["tls"] (service._PeerCertificateProtocol)

log = logging.getLogger(__name__)
PREFIX = "/api/v1"
REQUESTS = Counter("compozy_api_requests_total", "Requests api.Service answered, by route and status code",
                   ["route", "code"])
REQUEST_SECONDS = Histogram("compozy_api_request_duration_seconds", "Time to the first byte of an answer, by route",
                            ["route"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

Namespace = Annotated[str, Path(pattern=NAMESPACE_PATTERN, max_length=63, description="The namespace.")]
Name = Annotated[str, Path(pattern=NAME_PATTERN, max_length=253, description="The WorkflowExecution.")]
WorkflowName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=253, description="The Workflow.")]
SignalName = Annotated[str, Path(pattern=NAME_PATTERN, max_length=253, description="The signal.")]
ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 503)}
STREAM_ERRORS: dict[int | str, dict[str, Any]] = {**ERRORS, 429: {"model": ErrorBody}}
bearer = HTTPBearer(auto_error=False, description="A Kubernetes bearer token (checked with a TokenReview)")


class Stream(StreamingResponse):
    """A streamed answer that notices its client going away while it sends nothing (ASGI 2.4
    servers such as uvicorn report a disconnect only on the next write; a quiet ``follow`` would
    hold its NATS consumer until the run ends), and always closes its iterator (Starlette leaves an
    abandoned one suspended, its consumer with it, until garbage collection)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:  # Starlette listens for the disconnect itself below ASGI 2.4
            await super().__call__({**scope, "asgi": {**scope.get("asgi", {}), "spec_version": "2.3"}}, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


def error_response(e: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def validation_field(loc: tuple[Any, ...] | list[Any]) -> str:
    """``("body", "labels", "a")`` is ``labels.a``; ``("query", "limit")`` is ``limit``."""
    parts = [str(p) for p in loc[1:]] if loc and loc[0] in ("body", "query", "path", "header") else list(map(str, loc))
    return ".".join(parts) or "body"


class Observe:
    """ASGI middleware around every request: the body size cap (checked before anything reads the
    body: FastAPI reads it whole, before authentication), the metrics, and the request's log line.
    Plain ASGI, not Starlette's BaseHTTPMiddleware: streamed answers pass through untouched, and a
    client's disconnect reaches the stream, which then unsubscribes."""

    def __init__(self, app: Any, ctx: "Context", max_body: int) -> None:
        self.app, self.ctx, self.max_body = app, ctx, max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.monotonic()
        length = dict(scope.get("headers") or ()).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_body:
            REQUESTS.labels("unmatched", "413").inc()
            too_large = ApiError(413, "RequestEntityTooLarge", f"the body may be at most {self.max_body} bytes")
            return await error_response(too_large)(scope, receive, send)
        received = 0

        async def capped_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body") or b"")
            if received > self.max_body:  # a chunked body that said no length
                raise HTTPException(413, f"the body may be at most {self.max_body} bytes")
            return message

        answered = False

        async def observed_send(message: dict[str, Any]) -> None:
            nonlocal answered
            if message["type"] == "http.response.start":
                answered = True
                self.observe(scope, message["status"], started)
            await send(message)

        try:
            await self.app(scope, capped_receive, observed_send)
        except Exception:
            if not answered:  # the 500 the outermost handler answers
                self.observe(scope, 500, started)
            raise

    def observe(self, scope: dict[str, Any], status: int, started: float) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")
        REQUESTS.labels(route, str(status)).inc()
        REQUEST_SECONDS.labels(route).observe(time.monotonic() - started)
        state, params = scope.get("state") or {}, scope.get("path_params") or {}
        user: User | None = state.get("user")
        if user is not None and params.get("namespace") and route.startswith(PREFIX):
            self.ctx.request_log(params["namespace"], state.get("execution") or params.get("name"),
                                 f"{user.name} {scope['method']} {scope['path']} -> {status}", status,
                                 uid=state.get("uid"))


def create_app(ctx: "Context", max_body: int, ui_dir: str | None = None) -> FastAPI:
    app = FastAPI(title="Compozy api.Service", version=__version__, openapi_url="/openapi.json", docs_url=None,
                  redoc_url=None, description="Start, follow and control WorkflowExecutions (ARCHITECTURE.md §8).")
    ops: Operations = ctx.operations

    async def caller(request: Request,
                     credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> User:
        subject = ((request.scope.get("extensions") or {}).get("tls") or {}).get(PEER_SUBJECT)
        if subject and credentials is None:  # a client certificate the handshake verified
            user, via = certificate_user(subject), "certificate"
            if user is None:
                raise ApiError(401, "Unauthorized", "the client certificate names no user (no single common name)")
        elif credentials is None and request.headers.get("authorization") is None and session_of(request):
            user, via = await ctx.authorizer.authenticate(session_token(request)), "session"
        elif credentials is None and request.headers.get("authorization") is None and ctx.local_user is not None:
            user, via = ctx.local_user, "local"  # a local cluster's API on loopback (auth.local_user)
        else:
            token = bearer_token(f"Bearer {credentials.credentials}" if credentials else None)
            user, via = await ctx.authorizer.authenticate(token), "token"
        request.state.user, request.state.via = user, via
        return user

    Caller = Annotated[User, Depends(caller)]

    def session_of(request: Request) -> str | None:
        return request.cookies.get(SESSION_COOKIE) if ctx.oidc is not None else None

    def session_token(request: Request) -> str:
        """The ID token of the OIDC sign-in (oidc.py). A cookie goes with every request to this
        origin, so a request that changes something must also carry the UI's header, which no
        other site can add (it needs a CORS preflight that api.Service never grants)."""
        assert ctx.oidc is not None
        token = ctx.oidc.token_of(session_of(request))
        if token is None:
            raise ApiError(401, "Unauthorized", "the sign-in is not valid any more: sign in again")
        if request.method not in ("GET", "HEAD") and request.headers.get(UI_HEADER) != "ui":
            raise ApiError(403, "Forbidden", f"a request signed in by cookie that changes something needs the "
                           f"header {UI_HEADER}: ui (cross-site request forgery is refused)")
        return token

    @app.get("/oauth2/config", response_model=SignInOptions, tags=["auth"])
    async def sign_in_options() -> SignInOptions:
        """How one may sign in here (the UI's sign-in page); no authentication."""
        return SignInOptions(oidc=ctx.oidc is not None, localUser=ctx.local_user is not None)

    @app.get("/oauth2/login", status_code=302, response_class=RedirectResponse, tags=["auth"],
             responses={404: {"model": ErrorBody}, 503: {"model": ErrorBody}})
    async def oidc_login(return_: Annotated[str | None, Query(alias="return", max_length=2048)] = None) -> Response:
        """Sign in with the identity provider (OIDC): a redirect to it; it comes back to /oauth2/callback."""
        if ctx.oidc is None:
            raise ApiError(404, "NotFound", "OIDC sign-in is not configured (the chart's api.oidc)")
        url, sealed = await ctx.oidc.start(return_)
        response = RedirectResponse(url, status_code=302)
        response.headers.append("Set-Cookie", ctx.oidc.state_cookie(sealed))
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/oauth2/callback", status_code=302, response_class=RedirectResponse, tags=["auth"],
             responses={404: {"model": ErrorBody}})
    async def oidc_callback(request: Request, code: Annotated[str | None, Query(max_length=4096)] = None,
                            state: Annotated[str | None, Query(max_length=1024)] = None,
                            error: Annotated[str | None, Query(max_length=256)] = None,
                            error_description: Annotated[str | None, Query(max_length=1024)] = None) -> Response:
        """Where the identity provider sends the browser back: the code is exchanged, the ID token
        checked and kept in an HttpOnly cookie, then back to the UI (or to its sign-in page, saying why)."""
        if ctx.oidc is None:
            raise ApiError(404, "NotFound", "OIDC sign-in is not configured (the chart's api.oidc)")
        try:
            if error:
                raise ApiError(401, "SignInRefused", f"the identity provider said {error}"
                               f"{': ' + error_description if error_description else ''}")
            if not code or not state:
                raise ApiError(400, "Invalid", "the callback needs code and state")
            token, expires, return_to = await ctx.oidc.finish(request.cookies.get(STATE_COOKIE), state, code)
            user = await ctx.authorizer.authenticate(token)
        except ApiError as e:
            if e.status == 401 and e.reason == "Unauthorized":  # the TokenReview said no
                e = ApiError(401, "NotAcceptedByCluster", "the identity provider signed you in, but the cluster's "
                             "API server does not accept its ID tokens (its --oidc-issuer-url and --oidc-client-id, "
                             "or an AuthenticationConfiguration, must name this provider and client)")
            log.info("api.Service: OIDC sign-in failed: %s", e.message)
            failed = RedirectResponse(f"{UI_PREFIX}?{urlencode({'signinError': e.message[:500]})}", status_code=302)
            failed.headers.append("Set-Cookie", ctx.oidc.cleared(STATE_COOKIE))
            return failed
        log.info("api.Service: %s signed in with OIDC", user.name)
        response = RedirectResponse(return_to, status_code=302)
        response.headers.append("Set-Cookie", ctx.oidc.cleared(STATE_COOKIE))
        response.headers.append("Set-Cookie", ctx.oidc.session_cookie(token, expires))
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.post("/oauth2/logout", status_code=204, response_class=Response, tags=["auth"])
    async def oidc_logout() -> Response:
        """Sign out: the session cookie is cleared (the identity provider's own session stays)."""
        response = Response(status_code=204)
        if ctx.oidc is not None:
            response.headers.append("Set-Cookie", ctx.oidc.cleared(SESSION_COOKIE))
        return response

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0] if e.errors() else {"loc": ("body",), "msg": "invalid request"}
        field = "body" if err.get("type") == "json_invalid" else validation_field(err.get("loc") or ())
        return error_response(ApiError(400, "Invalid", f"{field}: {err.get('msg')}", field))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, e: HTTPException) -> JSONResponse:
        reason = {404: "NotFound", 405: "MethodNotAllowed", 413: "RequestEntityTooLarge"}.get(e.status_code,
                                                                                           "BadRequest")
        return error_response(ApiError(e.status_code, reason, str(e.detail)))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        log.exception("api.Service: unexpected error")
        return JSONResponse({"error": {"reason": "InternalError", "message": f"{type(e).__name__}"}}, status_code=500)

    @app.post(PREFIX + "/namespaces/{namespace}/workflows/{workflow}/executions", status_code=201,
              response_model=Created, responses=ERRORS, tags=["executions"])
    async def trigger(request: Request, namespace: Namespace, workflow: WorkflowName, body: TriggerRequest,
                      user: Caller) -> Created:
        """Start a run of a Workflow; answers at once, before the run starts (create workflowexecutions)."""
        created = await ops.trigger(user, namespace, workflow, body)
        request.state.execution, request.state.uid = created.name, created.uid
        return created

    Phase = Annotated[Literal[PHASES] | None, Query()]  # type: ignore[valid-type]
    WorkflowFilter = Annotated[str | None, Query(pattern=NAME_PATTERN, max_length=253)]
    LabelSelector = Annotated[str | None, Query(alias="labelSelector", max_length=4096)]
    Limit = Annotated[int | None, Query(ge=1, le=1000)]
    Continue = Annotated[str | None, Query(alias="continue", max_length=8192)]
    CreatedAfter = Annotated[AwareDatetime | None, Query(
        alias="createdAfter", description="Only runs created at or after this time (RFC 3339, with a zone).")]
    LIST_ANSWERS: dict[int | str, dict[str, Any]] = {**ERRORS, 200: {"model": ExecutionList},
                                                     410: {"model": ErrorBody}}

    @app.get(PREFIX + "/namespaces/{namespace}/executions", response_class=JSONResponse, responses=LIST_ANSWERS,
             tags=["executions"])
    async def list_executions(namespace: Namespace, user: Caller, workflow: WorkflowFilter = None,
                              phase: Phase = None, label_selector: LabelSelector = None, limit: Limit = None,
                              continue_: Continue = None, created_after: CreatedAfter = None) -> JSONResponse:
        """Runs in the namespace (list workflowexecutions); every filter is applied by the API server
        before it cuts the page."""
        return JSONResponse(await ops.list(user, namespace, workflow, phase, label_selector, limit, continue_,
                                           created_after))

    @app.get(PREFIX + "/executions", response_class=JSONResponse, responses=LIST_ANSWERS, tags=["executions"])
    async def list_all_executions(user: Caller, workflow: WorkflowFilter = None, phase: Phase = None,
                                  label_selector: LabelSelector = None, limit: Limit = None,
                                  continue_: Continue = None, created_after: CreatedAfter = None) -> JSONResponse:
        """Runs of every namespace, as `kubectl get -A` (list workflowexecutions at the cluster scope)."""
        return JSONResponse(await ops.list(user, None, workflow, phase, label_selector, limit, continue_,
                                           created_after))

    @app.get(PREFIX + "/whoami", response_model=Whoami, responses=ERRORS, tags=["access"])
    async def whoami(request: Request, user: Caller) -> Whoami:
        """The user the caller authenticates as, and how (the UI's sign-in check)."""
        return Whoami(user=user.name, groups=list(user.groups), via=request.state.via)

    @app.get(PREFIX + "/namespaces", response_model=NamespaceList, responses=ERRORS, tags=["access"])
    async def namespaces(user: Caller) -> dict[str, Any]:
        """The namespaces (of those the operator serves) where the caller may list runs."""
        return await ops.namespaces_of(user)

    @app.get(PREFIX + "/namespaces/{namespace}/access", response_model=Access, responses=ERRORS, tags=["access"])
    async def access(namespace: Namespace, user: Caller) -> dict[str, Any]:
        """What the caller may do here (SubjectAccessReviews); every call is checked again anyway."""
        return await ops.access(user, namespace)

    @app.get(PREFIX + "/namespaces/{namespace}/workflows", response_class=JSONResponse,
             responses={**ERRORS, 200: {"model": WorkflowList}, 410: {"model": ErrorBody}}, tags=["workflows"])
    async def list_workflows(namespace: Namespace, user: Caller, limit: Limit = None,
                             continue_: Continue = None) -> JSONResponse:
        """The namespace's Workflows (list workflows)."""
        return JSONResponse(await ops.workflows(user, namespace, limit, continue_))

    @app.get(PREFIX + "/namespaces/{namespace}/workflows/{workflow}", response_class=JSONResponse,
             responses={**ERRORS, 200: {"model": Workflow}}, tags=["workflows"])
    async def get_workflow(namespace: Namespace, workflow: WorkflowName, user: Caller) -> JSONResponse:
        """One Workflow, with its validation status (get workflows)."""
        return JSONResponse(await ops.workflow(user, namespace, workflow))

    @app.get(PREFIX + "/namespaces/{namespace}/executions/{name}", response_class=JSONResponse,
             responses={**ERRORS, 200: {"model": WorkflowExecution}}, tags=["executions"])
    async def get_execution(request: Request, namespace: Namespace, name: Name, user: Caller) -> JSONResponse:
        """The run as `kubectl get -o json` shows it (get workflowexecutions)."""
        run = await ops.read(user, namespace, name)
        request.state.uid = run["metadata"]["uid"]  # this request's log line goes to the run's log
        return JSONResponse(run)

    @app.get(PREFIX + "/namespaces/{namespace}/executions/{name}/output", response_class=JSONResponse,
             responses={**ERRORS, 200: {"content": {"application/json": {}}, "description": "The stored output"}},
             tags=["executions"])
    async def stored_output(request: Request, namespace: Namespace, name: Name, user: Caller,
                            task: Annotated[str | None, Query(max_length=300)] = None) -> JSONResponse:
        """An output too large for the status (its `outputRef`), of the run or of `task` (get)."""
        run = await ops.read(user, namespace, name)
        request.state.uid = run["metadata"]["uid"]
        return JSONResponse(await stored(stored_output_ref(run, task)))

    async def stored(ref: dict[str, Any]) -> Any:
        try:
            return await ctx.bus.get_output(ref)
        except (ObjectNotFoundError, ObjectDeletedError, BucketNotFoundError):
            raise ApiError(404, "NotFound", "the stored value is gone (removed with the run's cleanup)") from None
        except Exception as e:  # noqa: BLE001 - NATS away: try again
            raise ApiError(503, "ServiceUnavailable", f"NATS is not available ({type(e).__name__}); try again") from None

    @app.get(PREFIX + "/namespaces/{namespace}/executions/{name}/attempt", response_model=AttemptDetail,
             responses=ERRORS, tags=["executions"])
    async def attempt_detail(request: Request, namespace: Namespace, name: Name, user: Caller,
                             task: Annotated[str, Query(max_length=300)],
                             attempt: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
                             stored_: Annotated[bool, Query(alias="stored")] = False) -> dict[str, Any]:
        """One attempt of `task` (default: its current one): its rendered input and an agent's model
        calls, from the run's state events (get)."""
        run = await ops.read(user, namespace, name)
        meta = run["metadata"]
        request.state.uid = meta["uid"]
        current = ((run.get("status") or {}).get("tasks") or {}).get(task)
        if not isinstance(current, dict):
            raise ApiError(404, "NotFound", f"task {task!r} has not run (it is not in the run's status)", "task")
        number = attempt or int(current.get("attempt") or 1)
        try:
            facts = attempt_facts(await ctx.streams.attempt(namespace, name, task, number), meta["uid"])
        except ApiError:
            raise
        except Exception as e:  # noqa: BLE001 - NATS away: try again
            raise ApiError(503, "ServiceUnavailable", f"NATS is not available ({type(e).__name__}); try again") from None
        ref, rendered = facts["renderedRef"], facts["rendered"]
        size = ref.get("size") if own_ref(meta, ref) else None
        if size is not None and stored_:
            value = await stored(ref)
            rendered = value if isinstance(value, dict) else None
        return {"task": task, "attempt": number, "dispatched": facts["dispatched"], "rendered": rendered,
                "renderedSize": size, "modelCalls": facts["modelCalls"]}

    @app.post(PREFIX + "/namespaces/{namespace}/executions/{name}/cancel", status_code=202, response_model=Accepted,
              responses=ERRORS, tags=["executions"])
    async def cancel(namespace: Namespace, name: Name, user: Caller) -> Accepted:
        """Cancel a run; it ends Cancelled (patch workflowexecutions)."""
        return await ops.cancel(user, namespace, name)

    @app.post(PREFIX + "/namespaces/{namespace}/executions/{name}/retry", status_code=202, response_model=Accepted,
              responses=ERRORS, tags=["executions"])
    async def retry(namespace: Namespace, name: Name, user: Caller) -> Accepted:
        """Continue an ended run from its failed tasks; succeeded tasks are not run again (patch)."""
        return await ops.retry(user, namespace, name)

    @app.post(PREFIX + "/namespaces/{namespace}/executions/{name}/resubmit", status_code=201,
              response_model=Created, responses=ERRORS, tags=["executions"])
    async def resubmit(request: Request, namespace: Namespace, name: Name, user: Caller,
                       body: ResubmitRequest | None = None) -> Created:
        """A new run of what this one ran, with its input or a new one (get, create)."""
        created = await ops.resubmit(user, namespace, name, body or ResubmitRequest())
        request.state.execution, request.state.uid = created.name, created.uid
        return created

    @app.post(PREFIX + "/namespaces/{namespace}/executions/{name}/signals/{signal}", status_code=202,
              response_model=Accepted, responses=ERRORS, tags=["executions"])
    async def send_signal(namespace: Namespace, name: Name, signal: SignalName, user: Caller,
                          body: SignalRequest | None = None) -> Accepted:
        """Deliver a signal to a run's `wait` tasks (patch). No task type waits yet: always 409."""
        return await ops.signal(user, namespace, name, signal, body or SignalRequest())

    @app.get(PREFIX + "/namespaces/{namespace}/executions/{name}/events", responses={
        **STREAM_ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "The run's state events"}},
        response_class=StreamingResponse, tags=["executions"])
    async def events(request: Request, namespace: Namespace, name: Name, user: Caller,
                     last_event_id: Annotated[int | None, Header(alias="Last-Event-ID", ge=0,
                                                                 le=2 ** 63 - 1)] = None) -> StreamingResponse:
        """Every state event of the run, replayed from the first (or after `Last-Event-ID`), then live;
        closed after the terminal one (get)."""
        run = await ops.read(user, namespace, name)
        request.state.uid = run["metadata"]["uid"]
        stream = await _subscribed(ctx.streams.events(namespace, name, run["metadata"]["uid"],
                                                      ctx.run_state(namespace, name), last_event_id))
        return Stream(stream, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get(PREFIX + "/namespaces/{namespace}/executions/{name}/logs", responses={
        **STREAM_ERRORS, 200: {"content": {"text/plain": {}}, "description": "One line per LogEmitted"}},
        response_class=StreamingResponse, tags=["executions"])
    async def logs(request: Request, namespace: Namespace, name: Name, user: Caller,
                   task: Annotated[str | None, Query(max_length=300)] = None,
                   attempt: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
                   follow: bool = False) -> StreamingResponse:
        """The run's log lines: `<time> <component> <task>[<attempt>] <level> <message>` (get)."""
        run = await ops.read(user, namespace, name)
        request.state.uid = run["metadata"]["uid"]
        stream = await _subscribed(ctx.streams.logs(namespace, name, run["metadata"]["uid"],
                                                    ctx.run_state(namespace, name), task=task, attempt=attempt,
                                                    follow=follow))
        return Stream(stream, media_type="text/plain; charset=utf-8",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/healthz", response_class=PlainTextResponse, include_in_schema=False)
    async def healthz() -> str:
        return "ok"

    @app.get("/readyz", response_class=PlainTextResponse, include_in_schema=False)
    async def readyz() -> PlainTextResponse:
        ok, why = ctx.ready()
        return PlainTextResponse(why, status_code=200 if ok else 503)

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(await asyncio.to_thread(generate_latest), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        """FastAPI's document, without its 422 answers: a bad request is a 400 here."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for path in schema["paths"].values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    mount_ui(app, ui_dir)
    app.add_middleware(Observe, ctx=ctx, max_body=max_body)
    return app


async def _subscribed(opening: Awaitable[AsyncIterator[str]]) -> AsyncIterator[str]:
    """The stream, once subscribed; NATS unavailable is a 503 with an error body."""
    try:
        return await opening
    except ApiError:
        raise
    except Exception as e:  # noqa: BLE001 - not connected, no JetStream, timeout: all say "try again"
        raise ApiError(503, "ServiceUnavailable", f"NATS is not available ({type(e).__name__}); try again") from None
