"""task.Executor: the entrypoint of a task pod (``compozy task run``).

It fetches its TaskExecute command from NATS (so a restarted pod fetches it again), reports
TaskExecutionStarted, lets system.Runtime run the tool (Tool* events) or the agent's action
(Agent* events, with Tool* events for each tool call), and ends with TaskExecutionSuccess or
TaskExecutionFailed (agents: with the attempt's token usage). Log lines become LogEmitted events. Every event id
is deterministic, so a pod that runs twice reports each fact once.

What it runs: only a command stored on its own command subject that names its own namespace,
execution, execution uid, task and attempt and carries the nonce its pod was created with
(``COMPOZY_COMMAND_NONCE``, put there by the operator, which alone knows it before the pod
exists). Anything else (a command forged by whoever could publish on that subject, even first)
is refused: the attempt fails with ``CommandRefused`` (not retried), saying what did not match.

Log lines: every line of the attempt (the runner's, the tool's ``ctx.log``, whatever the process
prints) is a LogEmitted event of its run and a line on the container's stdout (:mod:`.task_logs`).
Its events and logs go to its own attempt's subjects (events.py), its replies come back under
its own inbox prefix, so a per-attempt NATS identity can allow exactly those subjects.

Exactly once: before it runs anything the runner claims its attempt on NATS (:meth:`Bus.claim`); a
second pod of the same attempt (re-created after the first ran and was deleted) finds the claim
taken and fails with ``AttemptAlreadyClaimed`` instead of running the tool again.

NATS outages: every state event, the command fetch, the claim and the output upload are retried
through an outage of up to ``COMPOZY_NATS_OUTAGE_SECONDS`` (default 300) each, with the same
``Nats-Msg-Id``, so a retried publish that had been stored is dropped as a duplicate. Log lines
are fire and forget: those emitted while NATS is away are lost.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from nats.errors import MaxPayloadError

from .bus import Bus, PayloadTooLarge
from .container_paths import host_path
from .runtime import TaskFailure, ToolContext, run_tool
from .task_logs import TaskLog
from .wire import (COMMAND_NONCE_ENV, EventType, Publisher, cancel_subject, claim_subject, command_subject, envelope,
                   inbox_prefix, output_key)

if TYPE_CHECKING:
    from .agents.providers import Reply, ToolCall

T = TypeVar("T")
NATS_TOKEN_FILE_ENV = "COMPOZY_NATS_TOKEN_FILE"  # as pods.NATS_TOKEN_FILE_ENV (not imported: no models here)
COMMAND_WAIT_SECONDS = 30  # of NATS answering "no command yet" (time NATS is away does not count)
COMMAND_POLL_SECONDS = 0.2
# A command that is not this pod's is looked at once more after this long (a dispatch repeated after a
# restart may store its own nonce's command a moment before it finds this pod and stores this pod's
# again: see orchestrator.dispatcher); then refused.
COMMAND_RECHECK_SECONDS = 1.0
DEFAULT_OUTAGE_SECONDS = 300  # how long each NATS operation waits out an outage before the pod gives up
DEFAULT_INLINE_LIMIT = 16 * 1024  # bytes of JSON; larger outputs go to the object store
RUNTIME = "compozy/runtime"  # source of the Tool* and Agent* events
MAX_LOGGED_TEXT = 4000  # characters of a prompt or reply in a LogEmitted line (logMessages: true)
MAX_EVENT_OUTPUT = 16 * 1024  # an agent's tool output larger than this is left out of ToolExecutionSuccess
# A pooled attempt's login refused this often in a row is final (its attempt has ended, or its queue
# message is not the operator's: pool_runner); a task pod's login is retried through the outage.
LOGIN_REFUSALS = 3


@dataclass(frozen=True)
class Attempt:
    namespace: str
    execution: str
    uid: str
    task: str
    attempt: int
    pod: str
    claimant: str  # who claims the attempt: the pod's uid (unique per pod, even of the same name)
    nonce: str | None = None  # what its TaskExecute command must carry (the pod's COMPOZY_COMMAND_NONCE)
    pool: str | None = None  # run by a runner of this pool (pool_runner), not in a pod of its own
    redelivered: bool = False  # pooled: its queue message came back (the runner that took it went away)

    @classmethod
    def from_env(cls) -> Attempt:
        e = os.environ
        pod = e.get("POD_NAME", "")
        # without POD_UID, a nonce makes this process the claimant (a retry within it is still its own)
        claimant = e.get("POD_UID") or f"{pod}/{secrets.token_hex(8)}"
        return cls(e["COMPOZY_NAMESPACE"], e["COMPOZY_EXECUTION"], e["COMPOZY_EXECUTION_UID"], e["COMPOZY_TASK"],
                   int(e["COMPOZY_ATTEMPT"]), pod, claimant, e.get(COMMAND_NONCE_ENV) or None)


class CommandRefused(Exception):
    """The command stored for this attempt is not one this pod may run (the text says why)."""


def command_problem(a: Attempt, expected: str, subject: str, command: Any) -> str | None:
    """Why ``command`` (stored on ``subject``) is not the one attempt ``a`` may run, or None."""
    if subject != expected:
        return f"it is stored on {_bounded(subject)}, not on this attempt's {expected}"
    if not isinstance(command, dict):
        return "it is not a JSON object"
    mine = {"namespace": a.namespace, "execution": a.execution, "uid": a.uid, "task": a.task, "attempt": a.attempt}
    for field, value in mine.items():
        if command.get(field) != value:
            return f"its {field} is {_bounded(command.get(field))}, this pod's is {value!r}"
    if not a.nonce:
        return (f"this pod has no {COMMAND_NONCE_ENV}, so no command can be shown to come from the operator "
                "that created it")
    nonce = command.get("nonce")
    if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), a.nonce.encode()):
        return ("it does not carry the nonce this pod was created with: the operator that created the pod "
                "did not publish it")
    return None


def _bounded(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class TaskRunner:
    def __init__(self, bus: Bus, a: Attempt, logs: TaskLog, outage_seconds: float = DEFAULT_OUTAGE_SECONDS,
                 reported: Callable[[], None] | None = None) -> None:
        self.bus, self.a, self.logs, self.outage_seconds = bus, a, logs, outage_seconds
        self.ended = False  # the attempt's end (TaskExecutionSuccess/Failed) is stored
        # the attempt failed (reported): the pod then ends Failed, as kubectl and the pod cleanup
        # rules (OnPodSuccess keeps failed pods) expect of it
        self.failed = False
        self.reported = reported  # called once the attempt's end (or its refusal) is stored

    async def nats(self, op: Callable[[], Awaitable[T]], what: str) -> T:
        """``op`` retried through a NATS outage (it must be safe to repeat)."""
        return await self.bus.through_outage(op, what, self.outage_seconds)

    async def event(self, etype: EventType, source: str, **data: Any) -> None:
        a = self.a
        event = envelope(etype, source, a.namespace, a.execution, a.uid, a.task, a.attempt,
                         publisher=Publisher.ATTEMPT, podName=a.pod, **data)
        await self.nats(lambda: self.bus.publish_event(event), f"publishing {etype}")
        if etype in (EventType.TASK_SUCCESS, EventType.TASK_FAILED) and self.reported is not None:
            self.reported()

    async def log(self, message: str, level: str = "info") -> None:
        await self.logs.emit("task-executor", level, message)

    async def fetch_command(self) -> dict[str, Any]:
        """This attempt's command; :class:`CommandRefused` when what is stored is not (see the module)."""
        subject = command_subject(self.a.namespace, self.a.execution, self.a.task, self.a.attempt)
        refused: str | None = None  # why the command seen last was not this attempt's
        for _ in range(int(COMMAND_WAIT_SECONDS / COMMAND_POLL_SECONDS)):
            got = await self.nats(lambda: self.bus.get_command(subject), "fetching the TaskExecute command")
            if got is not None and isinstance(got[1], dict) and got[1].get("uid") != self.a.uid \
                    and got[1].get("execution") == self.a.execution:
                got = None  # a deleted run's of the same name: this run's command is not stored yet
            if got is not None:
                if (problem := command_problem(self.a, subject, *got)) is None:
                    return got[1]
                if refused is not None:  # still not this attempt's after a second look
                    raise CommandRefused(problem)
                refused = problem
                await asyncio.sleep(COMMAND_RECHECK_SECONDS)
                continue
            await asyncio.sleep(COMMAND_POLL_SECONDS)
        if refused is not None:
            raise CommandRefused(refused)
        raise RuntimeError(f"no TaskExecute command on {subject} after {COMMAND_WAIT_SECONDS}s")

    async def refuse(self, e: CommandRefused) -> None:
        """Report a refused command: the attempt fails for good (a new attempt gets a new pod and nonce)."""
        a = self.a
        message = f"task {a.task} attempt {a.attempt}: the TaskExecute command was refused, not run: {e}"
        await self.event(EventType.TASK_FAILED, "compozy/task-executor",
                         error={"reason": "CommandRefused", "message": message})
        await self.log(message, "error")
        _termination_message(message)
        self.failed = True

    async def claim(self) -> bool:
        """Claim the attempt; False (after reporting it) when another pod has run or runs it."""
        a = self.a
        subject = claim_subject(a.namespace, a.execution, a.uid, a.task, a.attempt)
        held = await self.nats(lambda: self.bus.claim(subject, a.claimant, pod=a.pod), "claiming the attempt")
        if held is None:
            return True
        message = (f"task {a.task} attempt {a.attempt} was already claimed by pod {held.get('pod') or '?'} "
                   f"(uid {held.get('claimant')}) at {held.get('time')}; pod {a.pod} did not run it again")
        reason = "AttemptAlreadyClaimed"
        if a.pool and not a.redelivered:  # a second message of the attempt (dispatcher: queued again after
            # its queue's stream was recreated): the holder runs it, or is found lost by the operator
            await self.log(f"{message}: left to it", "warning")
            if self.reported is not None:
                self.reported()  # nothing of its own to report: not a process that died
            return False
        if a.pool:  # its queue message came back: the runner that took it first went away (pool_runner)
            reason = "RunnerLost"
            message += f" (the runner that took it from pool {a.pool} was lost before it reported)"
        await self.event(EventType.TASK_FAILED, "compozy/task-executor", error={"reason": reason, "message": message})
        await self.log(message, "error")
        return False

    async def stop_early(self, reason: str, message: str) -> None:
        """Cancelled over NATS, or SIGTERM (the pod is being deleted): report it, then leave at once.
        An attempt that has reported its end already just leaves (its pod is removed as it exits)."""
        if self.ended:
            os._exit(0)
        try:
            await self.event(EventType.TASK_FAILED, "compozy/task-executor", error={"reason": reason, "message": message})
            await self.log(message, "warning")
            await self.logs.close()
            await self.bus.close()
        finally:
            _termination_message(message)
            os._exit(143)  # the tool may still run in a thread; nothing of it may report after this

    async def watch_for_stop(self) -> None:
        a = self.a
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(
            self.stop_early("Terminated", f"the pod of task {a.task} attempt {a.attempt} was stopped (SIGTERM)")))

        async def on_cancel(_msg: Any) -> None:
            await self.stop_early("Cancelled", f"task {a.task} attempt {a.attempt} cancelled with its workflow")

        assert self.bus.nc is not None
        await self.bus.nc.subscribe(cancel_subject(a.namespace, a.execution), cb=on_cancel)

    def tool_context(self, command: dict[str, Any]) -> ToolContext:
        logger = logging.getLogger(f"compozy.tool.{self.a.task}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(self.logs.handler("runtime"))
        return ToolContext(attempt=self.a.attempt, task=self.a.task, execution=self.a.execution,
                           namespace=self.a.namespace, env=command.get("env") or {}, log=logger)

    async def run(self) -> None:
        await self.watch_for_stop()
        try:
            command = await self.fetch_command()
        except CommandRefused as e:
            await self.refuse(e)
            return
        if not await self.claim():
            return
        await self.event(EventType.TASK_STARTED, "compozy/task-executor")
        await self.log(f"task {self.a.task} attempt {self.a.attempt} started in pod {self.a.pod}")
        ctx = self.tool_context(command)
        work: Work = AgentWork(self, command, ctx) if "agent" in command else ToolWork(command, ctx)
        await self.event(work.started, RUNTIME, **work.ident)
        try:
            output = await work.run()
        except TaskFailure as e:
            await self.fail(work, e.info())
            await self.log(f"{work.label} failed: {e.message}", "error")
            return
        a = self.a
        key = output_key(a.namespace, a.execution, a.uid, a.task, a.attempt)
        limit = int(command.get("outputInlineLimit", DEFAULT_INLINE_LIMIT))
        result = await self.nats(lambda: self.bus.output_fields(key, output, limit), "storing the output")
        if "outputRef" in result:
            ref = result["outputRef"]
            await self.log(f"output of {ref['size']} bytes stored as {ref['bucket']}/{ref['key']}")
        try:
            await self.event(work.succeeded, RUNTIME, **work.ident, **result, **work.report())
            await self.event(EventType.TASK_SUCCESS, "compozy/task-executor", **result, **work.task_report())
            self.ended = True
        except (MaxPayloadError, PayloadTooLarge):
            await self.fail(work, {"reason": "OutputTooLarge",
                                   "message": "the task's output exceeds the NATS message size limit"})
            return
        await self.log(f"task {self.a.task} attempt {self.a.attempt} succeeded")

    async def fail(self, work: Work, error: dict[str, Any]) -> None:
        await self.event(work.failed, RUNTIME, **work.ident, error=error, **work.report())
        await self.event(EventType.TASK_FAILED, "compozy/task-executor", error=error, **work.task_report())
        self.ended = self.failed = True
        _termination_message(f"{error.get('reason')}: {error.get('message')}")


class Work:
    """What a task pod runs (a tool, or an agent's action): its events and the facts they carry."""

    started: EventType
    succeeded: EventType
    failed: EventType
    ident: dict[str, Any]  # what runs, in every runtime event
    label: str

    async def run(self) -> Any:
        raise NotImplementedError

    def report(self) -> dict[str, Any]:
        """Extra facts of the runtime's end event."""
        return {}

    def task_report(self) -> dict[str, Any]:
        """Extra facts of the task's end event."""
        return {}


class ToolWork(Work):
    started, succeeded, failed = EventType.TOOL_STARTED, EventType.TOOL_SUCCESS, EventType.TOOL_FAILED

    def __init__(self, command: dict[str, Any], ctx: ToolContext) -> None:
        self.tool, self.input, self.ctx = command["tool"], command.get("input"), ctx
        self.ident = {"tool": self.tool["id"]}
        self.label = f"tool {self.tool['id']}"

    async def run(self) -> Any:
        return await asyncio.to_thread(run_tool, self.tool, self.input, self.ctx)


class AgentWork(Work):
    """An agent's action: the model loop (:mod:`.agents.loop`), the agent's tools run here."""

    started, succeeded, failed = EventType.AGENT_STARTED, EventType.AGENT_SUCCESS, EventType.AGENT_FAILED

    def __init__(self, runner: TaskRunner, command: dict[str, Any], ctx: ToolContext) -> None:
        # imported here: tool pods need none of it (jsonschema, pydantic models, the SDKs)
        from .agents.loop import AgentLoop  # noqa: PLC0415
        from .agents.providers import API_KEY_ENV, NO_PARAMETERS, PROVIDERS, ToolSpec  # noqa: PLC0415

        self.runner = runner
        agent, action = command["agent"], command["action"]
        model = agent["model"]
        provider = model.get("provider", "openai")
        self.ident = {"agent": agent["id"], "action": action["id"], "provider": provider, "model": model["name"]}
        self.label = f"agent {agent['id']} action {action['id']}"
        self.log_messages = bool(agent.get("logMessages"))
        self.prompt = action["prompt"]
        # Popped, so the agent's command tools (subprocesses) never inherit the key. On a pool the key
        # is the pool's variable model.apiKeyEnv (docs/pools.md); popped from this attempt's process only.
        api_key = os.environ.pop(model.get("apiKeyEnv") or API_KEY_ENV, None) or None
        self.key_missing = None if api_key or not model.get("apiKeyEnv") else (
            f"model.apiKeyEnv: the runners of pool {runner.a.pool} have no variable {model['apiKeyEnv']} (or it is "
            f"empty): add it to the RunnerPool's env (valueFrom.secretKeyRef of the API key's Secret)")
        tools = {t["id"]: t for t in command.get("tools") or []}
        specs = [ToolSpec(t["id"], t.get("description") or t["id"], t.get("inputSchema") or NO_PARAMETERS)
                 for t in tools.values()]
        chat = PROVIDERS[provider](model, api_key, agent.get("instructions"), self.prompt, specs,
                                   action.get("outputSchema"))

        async def call(name: str, value: Any) -> dict[str, Any]:
            return await asyncio.to_thread(run_tool, tools[name], value, ctx)

        self.loop = AgentLoop(chat, call, {n: t.get("inputSchema") for n, t in tools.items()}, self,
                              max_iterations=agent.get("maxIterations"), output_schema=action.get("outputSchema"),
                              output_retries=action.get("outputRetries"))

    async def run(self) -> Any:
        if self.key_missing:
            raise TaskFailure("ApiKeyMissing", self.key_missing)
        if self.log_messages:
            await self.runner.log(f"prompt: {self.prompt[:MAX_LOGGED_TEXT]}")
        return await self.loop.run()

    def report(self) -> dict[str, Any]:
        calls = self.loop.call_records(self.ident["model"])
        return {"usage": self.loop.usage.dump(), "callSeconds": [c["seconds"] for c in calls], "calls": calls}

    def task_report(self) -> dict[str, Any]:
        return {"usage": self.loop.usage.dump()}

    # the loop's Observer
    async def model_replied(self, iteration: int, reply: Reply) -> None:
        what = (f"{len(reply.tool_calls)} tool call(s): {', '.join(c.name for c in reply.tool_calls)}"
                if reply.tool_calls else "an answer")
        await self.runner.log(f"model call {iteration} ({self.ident['provider']}/{self.ident['model']}): {what}; "
                              f"{reply.input_tokens} input / {reply.output_tokens} output tokens; "
                              f"{reply.seconds * 1000:.0f} ms")
        if self.log_messages and reply.text:
            await self.runner.log(f"model reply {iteration}: {reply.text[:MAX_LOGGED_TEXT]}")

    async def tool_started(self, key: str, call: ToolCall) -> None:
        await self.runner.event(EventType.TOOL_STARTED, RUNTIME, id_extra=key, tool=call.name, call=key,
                                agent=self.ident["agent"])

    async def tool_ended(self, key: str, call: ToolCall, output: Any, error: str | None) -> None:
        facts: dict[str, Any] = {"tool": call.name, "call": key, "agent": self.ident["agent"]}
        if error is not None:
            await self.runner.event(EventType.TOOL_FAILED, RUNTIME, id_extra=key, error={"reason": "ToolError",
                                                                                          "message": error}, **facts)
            await self.runner.log(f"tool {call.name} (call {key}) failed; the error goes back to the model", "warning")
            return
        size = len(json.dumps(output, default=str))
        if size <= MAX_EVENT_OUTPUT:
            facts["output"] = output
        await self.runner.event(EventType.TOOL_SUCCESS, RUNTIME, id_extra=key, outputBytes=size, **facts)


def _termination_message(text: str) -> None:
    path = os.environ.get("COMPOZY_TERMINATION_LOG", "/dev/termination-log")
    try:
        with open(path, "w") as f:
            f.write(text[-4000:])
    except OSError:
        pass


def nats_login() -> str | Callable[[], str] | None:
    """The attempt's NATS token. Callout mode (``COMPOZY_NATS_TOKEN_FILE``, the pod's projected
    ServiceAccount token): a callable that reads the file at every connect and reconnect (nats-py
    calls it), so the token the kubelet rotated in is used once the user JWT it got expires. Token
    mode: the shared token. Both variables leave this process's environment here, so a command tool
    (a subprocess) inherits neither (see runtime.run_command)."""
    token_file = os.environ.pop(NATS_TOKEN_FILE_ENV, None)
    token = os.environ.pop("COMPOZY_NATS_TOKEN", None) if token_file else os.environ.get("COMPOZY_NATS_TOKEN")
    if token_file:
        return token_reader(token_file)
    return token or None


def token_reader(token_file: str) -> Callable[[], str]:
    """Reads the pod's projected token file anew at each call (nats-py calls it at each connect)."""
    path = host_path(token_file)

    def read() -> str:
        with open(path) as f:
            return f.read().strip()
    return read


async def run_attempt(a: Attempt, login: str | Callable[[], str] | None,
                      reported: Callable[[], None] | None = None, user: str | None = None) -> int:
    """Run one attempt in this process: a task pod's whole life, or a process a pool runner forked
    for it (pool_runner). ``reported``: see :class:`TaskRunner`; ``user``: a pooled attempt's NATS
    user (``login`` its password; :class:`.bus.LoginRefused` when the server refuses it
    :data:`LOGIN_REFUSALS` times). The exit code: 1 when it failed."""
    bus = Bus(os.environ["COMPOZY_NATS_URL"], login,
              f"task-{a.execution}-{a.task}-{a.attempt}", os.environ.get("COMPOZY_NATS_CA") or None,
              inbox_prefix=inbox_prefix(a.namespace, a.execution, a.task, a.attempt), user=user)
    outage = float(os.environ.get("COMPOZY_NATS_OUTAGE_SECONDS") or DEFAULT_OUTAGE_SECONDS)
    await bus.connect(max_delay=3, give_up_after=outage, refusals=LOGIN_REFUSALS if user else None)
    logs = TaskLog(asyncio.get_running_loop(), bus, a)
    logs.capture()  # what the tool (or anything in this process) prints becomes log lines too
    root = logging.getLogger()
    saved, root.handlers = root.handlers, [logs.handler("task-executor")]  # the runner's lines, with their levels
    runner = TaskRunner(bus, a, logs, outage, reported)
    try:
        await runner.run()
    finally:
        await logs.close()
        root.handlers = saved
        await bus.close()
    return 1 if runner.failed else 0


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return asyncio.run(run_attempt(Attempt.from_env(), nats_login()))
    except Exception as e:  # noqa: BLE001 - reported through the pod's status by the orchestrator
        message = f"{type(e).__name__}: {e}"
        print(message, file=sys.stderr)
        _termination_message(message)
        return 1
