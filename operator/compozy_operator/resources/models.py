"""The API (group ``compozy.dev``, version ``v1alpha1``) as pydantic models.

These models are the single source of truth: the CRDs in ``crds/`` are generated from them
(``python -m compozy_operator.resources.crd``), and the operator validates with them. Field names are
camelCase on the wire (Kubernetes convention) and snake_case in Python.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

GROUP = "compozy.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

ID_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: Why an agent with a pool refuses apiKeySecretRef, and one without refuses apiKeyEnv (also CEL's words: crd.py).
POOLED_AGENT_KEY_MESSAGE = ("an agent with a pool runs on the pool's runners, which get no Secret of the agent's: put "
                            "the secretKeyRef in the RunnerPool's env and name that variable in model.apiKeyEnv")
UNPOOLED_KEY_ENV_MESSAGE = ("only for an agent with a pool (its key is then the pool's variable); an agent in pods of "
                            "its own gets its key from model.apiKeySecretRef")
#: Why a tool with a pool refuses isolation pod, and its own image, env or resources (also CEL's words: crd.py).
ISOLATED_POOL_MESSAGE = ("isolation: a tool with isolation pod runs in a pod of its own, never on a pool; drop isolation "
                         "or pool")


def pooled_field_message(field: str) -> str:
    return (f"{field}: a tool with a pool runs on the pool's runners, which have the pool's {field}; drop {field} "
            "or pool")


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "TimedOut", "Cancelled"]
TaskPhase = Literal["Waiting", "Pending", "Running", "Succeeded", "Failed", "Skipped", "Cancelled"]
TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "TimedOut", "Cancelled"})
JSONObject = dict[str, Any]


MAX_DURATION_SECONDS = 366 * 24 * 3600  # a year: longer delays and timeouts are refused (and clocks overflow)


def parse_duration(text: str) -> float:
    """``90s``, ``5m``, ``1h30m``, ``250ms`` -> seconds."""
    if not re.fullmatch(DURATION_PATTERN, text or ""):
        raise ValueError(f"invalid duration {text!r}: use a number with ms, s, m or h, e.g. 90s, 5m, 1h30m")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


def check_duration(text: Any, positive: bool = False) -> Any:
    """A field validator's check (run before the type and pattern checks, so the message is this
    one): a duration, at most a year, and above zero where ``positive`` (timeouts)."""
    if not isinstance(text, str):
        return text  # None, or a type error the field's own check words
    seconds = parse_duration(text)
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"{text} is longer than the limit of 8784h (a year)")
    if positive and seconds <= 0:
        raise ValueError("must be greater than zero")
    return text


class Model(BaseModel):
    """Base: camelCase aliases, unknown fields refused (so typos are errors, not silence)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def dump(self) -> JSONObject:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SecretKeyRef(Model):
    name: str = Field(description="Name of a Secret in the execution's namespace.")
    key: str = Field(description="Key within the Secret.")


POD_FIELDS = ("image", "env", "resources")  # a tool's settings that only a pod of its own can have


class Tool(Model):
    id: str = Field(pattern=ID_PATTERN, max_length=63, description="Tool id, referenced by tasks and agents.")
    description: str | None = Field(None, description="What the tool does (shown to agents).")
    input_schema: JSONObject | None = Field(None, description="JSON Schema of the tool's input.")
    python: str | None = Field(None, description="Inline Python defining run(input, ctx) -> dict.")
    command: list[str] | None = Field(
        None, max_length=100, description="Command run with the input JSON on stdin; prints its output JSON on stdout."
    )
    image: str | None = Field(None, description="Image for the task pod (must contain the runner); default: the operator's.")
    env: list[JSONObject] | None = Field(
        None, max_length=100, description="Kubernetes EnvVar list for the task pod (valueFrom.secretKeyRef allowed)."
    )
    resources: JSONObject | None = Field(None, description="Kubernetes resource requirements of the task pod.")
    pool: str | None = Field(
        None, pattern=ID_PATTERN, max_length=63,
        description="Name of a RunnerPool in the run's namespace: attempts run as processes forked on its warm "
        "runners instead of a pod each (docs/pools.md); not with image, env or resources (the pool's apply).")
    isolation: Literal["pod"] | None = Field(
        None, description="pod: every attempt in a pod of its own, never on a pool, even when the Workflow's "
        "spec.pool names one; not with pool.")

    @model_validator(mode="after")
    def _pooled(self) -> Tool:
        if self.pool is not None:
            if self.isolation == "pod":
                raise ValueError(ISOLATED_POOL_MESSAGE)
            for field in POD_FIELDS:
                if getattr(self, field) is not None:
                    raise ValueError(pooled_field_message(field))
        return self

    def pooled(self, default: str | None) -> Tool:
        """This tool as a task runs it under a Workflow whose ``spec.pool`` is ``default``: on its own
        pool; else on the default unless it keeps a pod of its own (an image, env or resources of its
        own, which only a pod can have, or isolation pod)."""
        if self.pool is not None or default is None or self.isolation == "pod" \
                or any(getattr(self, f) is not None for f in POD_FIELDS):
            return self
        return self.model_copy(update={"pool": default})


class ModelConfig(Model):
    """An LLM endpoint: any OpenAI-compatible chat-completions API, or Anthropic's Messages API."""

    provider: Literal["openai", "anthropic"] = Field(
        "openai", description="API flavour: openai (any OpenAI-compatible endpoint) or anthropic (Messages API).")
    name: str = Field(min_length=1, description="Model name, e.g. gpt-4o-mini.")
    base_url: str | None = Field(
        None, alias="baseURL", pattern=r"^https?://",
        description="Endpoint base URL, e.g. http://vllm:8000/v1 (default: the provider's public API).")
    api_key_secret_ref: SecretKeyRef | None = Field(
        None, description="Secret key holding the API key; it reaches the task pod as an env var from the Secret. "
        "Not with the agent's pool (see apiKeyEnv).")
    api_key_env: str | None = Field(
        None, pattern=ENV_NAME_PATTERN, max_length=253,
        description="With the agent's pool only: the name of the pool's env variable holding the API key (the "
        "RunnerPool's env puts it there, valueFrom.secretKeyRef); not a COMPOZY_ variable (docs/pools.md).")
    temperature: float | None = Field(None, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int | None = Field(
        None, ge=1, description="Maximum tokens per completion (anthropic requires one; default 4096).")
    timeout: str | None = Field(None, pattern=DURATION_PATTERN, description="Timeout of one model call (default 60s).")
    max_retries: int | None = Field(
        None, ge=0, le=10,
        description="Retries of one model call inside the attempt on 429 (honouring Retry-After), 5xx, timeouts "
        "and connection errors (default 2); then the task's retry policy applies.")
    structured_output: Literal["native", "prompt"] | None = Field(
        None, description="How an outputSchema is asked for: native (the API's JSON-schema mode, default) or "
        "prompt (the schema in the system prompt, for endpoints without that mode); the answer is validated either way.")

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> Any:
        return check_duration(v, positive=True)


class AgentAction(Model):
    id: str = Field(pattern=ID_PATTERN, max_length=63, description="Action id, referenced by a task's action.")
    prompt: str = Field(min_length=1, description="User prompt template; context: input (the task's with), env, "
                        "workflow, tasks.")
    output_schema: JSONObject | None = Field(
        None, description="JSON Schema the answer must match; the task output is the validated object "
        "(without one: {text: <answer>}).")
    output_retries: int | None = Field(
        None, ge=0, le=10, description="Times an answer that does not match outputSchema is sent back to the model "
        "with the validation error (default 2); then the attempt fails with OutputSchemaNotSatisfied.")


class Agent(Model):
    id: str = Field(pattern=ID_PATTERN, max_length=63, description="Agent id, referenced by a task's agent.")
    model: ModelConfig = Field(description="The LLM endpoint the agent uses.")
    instructions: str | None = Field(None, description="System prompt template (same context as the prompt).")
    tools: list[str] | None = Field(
        None, max_length=100, description="Ids of tools the agent may call (function calling); they run in its pod.")
    max_iterations: int | None = Field(
        None, ge=1, le=100, description="Model calls allowed per attempt (default 10); then MaxIterationsExceeded.")
    log_messages: bool | None = Field(
        None, description="Put prompts and replies in LogEmitted lines (default false: lines carry only counts, "
        "tool names and token usage).")
    actions: list[AgentAction] = Field(
        min_length=1, max_length=50, description="Prompts the agent can run; a task picks one with action."
    )
    pool: str | None = Field(
        None, pattern=ID_PATTERN, max_length=63,
        description="Name of a RunnerPool in the run's namespace: the agent's attempts (and the tools it calls) run "
        "as processes forked on its warm runners instead of a pod each; the API key comes from the pool's env "
        "(model.apiKeyEnv), not from model.apiKeySecretRef (docs/pools.md).")

    @model_validator(mode="after")
    def _pooled(self) -> Agent:
        if self.pool is not None and self.model.api_key_secret_ref is not None:
            raise ValueError(f"model.apiKeySecretRef: {POOLED_AGENT_KEY_MESSAGE}")
        if self.pool is None and self.model.api_key_env is not None:
            raise ValueError(f"model.apiKeyEnv: {UNPOOLED_KEY_ENV_MESSAGE}")
        if (self.model.api_key_env or "").startswith("COMPOZY_"):  # the runner's own: its NATS login among them
            raise ValueError("model.apiKeyEnv: COMPOZY_ variables are the runner's own settings, not an API key")
        return self


class Backoff(Model):
    initial: str = Field("1s", pattern=DURATION_PATTERN, description="Delay before the first retry.")
    factor: float = Field(2, ge=1, description="Multiplier applied to the delay after each retry.")
    max: str = Field("1m", pattern=DURATION_PATTERN, description="Upper bound of the delay.")

    @field_validator("initial", "max", mode="before")
    @classmethod
    def _bounded(cls, v: Any) -> Any:
        return check_duration(v)


class Retry(Model):
    limit: int = Field(0, ge=0, le=100, description="Retries after the first attempt.")
    backoff: Backoff | None = Field(None, description="Delay between attempts.")


class Transition(Model):
    next: str | None = Field(None, pattern=ID_PATTERN, max_length=63, description="Id of the task to run next.")


class Task(Model):
    id: str = Field(pattern=ID_PATTERN, max_length=63, description="Task id, unique in the workflow.")
    type: Literal["basic", "router", "parallel", "collection"] = Field(
        "basic",
        description="basic (default): run a tool, or an agent's action; router: pick the next task by condition; "
        "parallel: run child tasks; collection: run task once per item.",
    )
    tool: str | None = Field(None, description="Id of the tool to run (basic tasks).")
    agent: str | None = Field(None, description="Id of the agent to run (basic tasks, with action).")
    action: str | None = Field(None, description="Id of the agent's action.")
    with_: JSONObject | None = Field(None, alias="with", description="Input of the task; values may be templates.")
    retry: Retry | None = Field(None, description="Retries of a failed attempt.")
    timeout: str | None = Field(None, pattern=DURATION_PATTERN, description="Per-attempt timeout.")
    on_success: Transition | None = Field(None, description="Where to go after success.")
    on_error: Transition | None = Field(None, description="Where to go after failure (tasks.<id>.error in context).")
    final: bool | None = Field(None, description="End the workflow after this task.")
    # router
    condition: str | None = Field(None, description="Router: template whose value picks a route.")
    routes: dict[str, str] | None = Field(None, description="Router: value -> task id.")
    default: str | None = Field(None, description="Router: task id for unmatched values.")
    # parallel
    strategy: Literal["waitAll", "failFast", "bestEffort", "race"] | None = Field(
        None, description="Parallel: how the children's results decide the task's outcome."
    )
    max_workers: int | None = Field(None, ge=1, description="Parallel/collection: children running at once.")
    tasks: list[Task] | None = Field(None, max_length=50, description="Parallel: child tasks.")
    # collection
    items: Any = Field(None, description="Collection: template (or list) yielding the items.")
    mode: Literal["parallel", "sequential"] | None = Field(
        None, description="Collection: run the items in parallel or one by one."
    )
    filter: str | None = Field(None, description="Collection: template; items where it is false are skipped.")
    task: Task | None = Field(None, description="Collection: the task run per item (item, index in context).")

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> Any:
        return check_duration(v, positive=True)


PodCleanupPolicy = Literal["OnPodCompletion", "OnPodSuccess", "OnWorkflowCompletion", "Never"]
POD_CLEANUP_POLICIES: tuple[str, ...] = ("OnPodCompletion", "OnPodSuccess", "OnWorkflowCompletion", "Never")
MAX_HISTORY = 10_000  # most ended runs a history limit may keep per phase class


class PodCleanup(Model):
    """When the task pods of a run are deleted once they have finished (docs/cleanup.md)."""

    policy: PodCleanupPolicy | None = Field(
        None, description="OnPodCompletion: each pod once it has finished (its result recorded); OnPodSuccess: "
        "pods that succeeded (failed ones stay for debugging until the run is deleted); OnWorkflowCompletion: "
        "all of the run's pods once the run has ended; Never: pods stay until the run is deleted. Default: the "
        "operator's (COMPOZY_POD_CLEANUP, chart podCleanup.policy).")
    delay: str | None = Field(None, pattern=DURATION_PATTERN,
                              description="Wait this long after the pod (or, for OnWorkflowCompletion, the run) "
                              "finished before deleting it, e.g. 30s. Default: the operator's.")

    @field_validator("delay", mode="before")
    @classmethod
    def _delay(cls, v: Any) -> Any:
        return check_duration(v)


class HistoryLimit(Model):
    """How many ended runs of a Workflow are kept; older ones are deleted (docs/cleanup.md)."""

    succeeded: int | None = Field(None, ge=0, le=MAX_HISTORY,
                                  description="Runs that ended Succeeded to keep (the newest by finish time).")
    failed: int | None = Field(None, ge=0, le=MAX_HISTORY,
                               description="Runs that ended Failed, TimedOut or Cancelled to keep (the newest).")


class WorkflowSpec(Model):
    description: str | None = Field(None, description="What the workflow does (shown by kubectl get czwf).")
    input: JSONObject | None = Field(None, description="JSON Schema of WorkflowExecution.spec.input.")
    env: dict[str, str] | None = Field(None, description="Variables for templates (env.NAME) and task pods.")
    timeout: str | None = Field(None, pattern=DURATION_PATTERN, description="Limit on a run's wall time, e.g. 30m.")
    tools: list[Tool] | None = Field(None, max_length=100, description="Tools: Python or a command, run in task pods.")
    pool: str | None = Field(
        None, pattern=ID_PATTERN, max_length=63,
        description="A RunnerPool of the run's namespace that this Workflow's tools run on by default: each tool "
        "without a pool of its own, image, env, resources or isolation pod (docs/pools.md). Agents name theirs.")
    agents: list[Agent] | None = Field(
        None, max_length=100, description="LLM agents; a task runs one of their actions."
    )
    tasks: list[Task] = Field(
        min_length=1, max_length=200, description="tasks[0] starts; a task with no onSuccess.next ends the run."
    )
    output: Any = Field(None, description="Template of the workflow's output.")
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, le=MAX_DURATION_SECONDS,
        description="Delete each run this many seconds after it ended, with its stored outputs, logs and events "
        "(a run's own spec.ttlSecondsAfterFinished wins; unset: the operator's default, or kept).")
    history_limit: HistoryLimit | None = Field(
        None, description="Keep only the newest ended runs of this Workflow per outcome; older ones are deleted.")
    pod_cleanup: PodCleanup | None = Field(None, description="When finished task pods are deleted.")

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> Any:
        return check_duration(v, positive=True)


class WorkflowRef(Model):
    name: str = Field(description="Name of a Workflow in the execution's namespace.")


class WorkflowExecutionSpec(Model):
    workflow_ref: WorkflowRef | None = Field(None, description="The Workflow to run (or give `workflow` inline).")
    workflow: WorkflowSpec | None = Field(None, description="An inline Workflow spec (instead of workflowRef).")
    input: Any = Field(None, description="Input, validated against the Workflow's input schema.")
    timeout: str | None = Field(None, pattern=DURATION_PATTERN, description="Overrides the Workflow's timeout.")
    cancel: bool | None = Field(None, description="Set true to cancel the run.")
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, le=MAX_DURATION_SECONDS,
        description="Delete the run this many seconds after it ended, with its stored outputs, logs and events; "
        "wins over the Workflow's. May be changed at any time (e.g. raised to keep a run longer).")
    retry: int | None = Field(
        None, ge=0, le=1000, description="Raise by one to retry an ended run (Failed, TimedOut, Cancelled) from "
        "where it failed: succeeded tasks are kept, the others run again with their next attempt (docs/retry.md).")

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> Any:
        return check_duration(v, positive=True)


class ErrorInfo(Model):
    task: str | None = None
    reason: str | None = None
    message: str | None = None
    retry_after: float | None = Field(None, description="Seconds the failed service asked to wait (429 Retry-After).")


class TokenUsage(Model):
    input_tokens: int = 0
    output_tokens: int = 0
    model_calls: int = 0

    def __add__(self, other: TokenUsage) -> TokenUsage:
        return TokenUsage(input_tokens=self.input_tokens + other.input_tokens,
                          output_tokens=self.output_tokens + other.output_tokens,
                          model_calls=self.model_calls + other.model_calls)


class OutputRef(Model):
    bucket: str
    key: str
    size: int
    digest: str


class Snapshot(Model):
    """What a run was started with, kept where the run lives (its status), so it continues after a
    restart even when the state stream no longer holds its WorkflowExecutionStarted event."""

    spec: JSONObject | None = Field(None, description="The resolved Workflow spec (small specs; else specRef).")
    spec_ref: OutputRef | None = Field(None, description="Where a large spec is stored (NATS object store).")
    input: Any = Field(None, description="The run's input (small inputs; else inputRef).")
    input_ref: OutputRef | None = Field(None, description="Where a large input is stored (NATS object store).")
    timeout_seconds: float | None = Field(None, description="The run's timeout in seconds.")
    ttl_seconds_after_finished: int | None = Field(
        None, description="The Workflow's ttlSecondsAfterFinished when the run started.")


class AttemptRecord(Model):
    attempt: int
    pod_name: str | None = None
    phase: TaskPhase
    error: ErrorInfo | None = None
    started_at: str | None = None
    finished_at: str | None = None
    usage: TokenUsage | None = None


class TaskStatus(Model):
    phase: TaskPhase
    attempt: int = Field(1, description="Current attempt, 1-based.")
    pod_name: str | None = Field(None, description="Pod of the current attempt.")
    not_before: str | None = Field(None, description="Waiting: when the scheduled retry may start.")
    dispatched_at: str | None = Field(None, description="When the current attempt's pod was requested.")
    started_at: str | None = None
    finished_at: str | None = None
    output: Any = Field(None, description="The task's output (small outputs only; see outputRef).")
    output_ref: OutputRef | None = Field(None, description="Where a large output is stored (NATS object store).")
    error: ErrorInfo | None = None
    message: str | None = Field(None, description="Why the current attempt's pod does not start yet "
                                "(e.g. a missing Secret, an image pull, no node fits).")
    usage: TokenUsage | None = Field(None, description="Agent tasks: tokens and model calls of the current attempt.")
    attempts: list[AttemptRecord] | None = Field(None, description="Earlier attempts.")
    prior_attempts: int | None = Field(None, description="Attempts made in earlier retry rounds of the run (the "
                                       "task's retry.limit counts the attempts after them).")


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = None


class WorkflowExecutionStatus(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    phase: Phase = Field("Pending", description="Pending, Running, then Succeeded, Failed, TimedOut or Cancelled.")
    workflow: str | None = Field(None, description="Name of the Workflow run (or `<inline>`).")
    progress: str | None = Field(None, description="Finished tasks / tasks known so far.")
    started_at: str | None = None
    finished_at: str | None = None
    duration: str | None = Field(None, description="Wall time from start to end, e.g. 1m12s.")
    message: str | None = Field(None, description="Human-readable state of the run.")
    output: Any = Field(None, description="The workflow's output (spec.output rendered; small outputs only).")
    output_ref: OutputRef | None = Field(None, description="Where a large workflow output is stored (NATS object store).")
    error: ErrorInfo | None = Field(None, description="Why the run failed.")
    usage: TokenUsage | None = Field(None, description="Tokens and model calls of every agent attempt of the run.")
    tasks: dict[str, TaskStatus] = Field(
        default_factory=dict, description="State of each task by id (collection children: <id>[<index>])."
    )
    conditions: list[Condition] = Field(default_factory=list, description="Standard conditions (type Succeeded).")
    observed_generation: int | None = None
    snapshot: Snapshot | None = Field(None, description="The workflow spec and input the run started with.")
    retries: int | None = Field(None, description="The spec.retry acted on: the run's current retry round (0: never retried).")
    retried_at: str | None = Field(None, description="When the current retry round began (its timeout counts from "
                                   "here).")
    state_seq: int = Field(0, description="JetStream sequence of the last state event folded into this status.")


class RunnerPoolSpec(Model):
    """Warm runners of one namespace: long-lived pods that run pooled task attempts, each in a
    process forked for it (docs/pools.md)."""

    image: str | None = Field(None, description="Image of the runners (must contain the runner); default: the "
                              "operator's task image.")
    resources: JSONObject | None = Field(None, description="Kubernetes resource requirements of each runner pod.")
    service_account_name: str | None = Field(
        None, pattern=r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$",
        description="ServiceAccount of the runner pods (default: the namespace's default, without its token).")
    env: list[JSONObject] | None = Field(
        None, max_length=100, description="Kubernetes EnvVar list of the runner pods (valueFrom.secretKeyRef "
        "allowed): what every pooled attempt's process inherits.")
    concurrency: int = Field(4, ge=1, le=256, description="Attempts one runner runs at once.")
    attempt_memory: str | None = Field(
        None, pattern=r"^[1-9][0-9]{0,6}(Mi|Gi)$",
        description="Memory one attempt's process may allocate beyond what it starts with (e.g. 512Mi): "
        "more fails in that process (MemoryError), not in the runner or another attempt. Unset: no "
        "limit of its own (the runner pod's memory limit is shared by its attempts).")
    min_replicas: int = Field(1, ge=0, le=1000, description="Runners kept even when idle.")
    max_replicas: int = Field(4, ge=1, le=1000, description="Runners at most, however deep the queue.")

    @model_validator(mode="after")
    def _bounds(self) -> RunnerPoolSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) is greater than maxReplicas ({self.max_replicas})")
        return self


class RunnerPoolStatus(Model):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    replicas: int | None = Field(None, description="Runners asked for (from the queue depth, within min and max).")
    pending: int | None = Field(None, description="Attempts waiting for a runner at the last look.")
    in_flight: int | None = Field(None, description="Attempts taken by a runner and not ended at the last look.")
