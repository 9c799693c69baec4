"""task.Executor: the entrypoint of a task pod (``compozy task run``).

It fetches its TaskExecute command from NATS (so a restarted pod fetches it again), reports
TaskExecutionStarted, lets system.Runtime run the tool (Tool* events), and ends with
TaskExecutionSuccess or TaskExecutionFailed. Log lines become LogEmitted events. Every event id
is deterministic, so a pod that runs twice reports each fact once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

from nats.errors import MaxPayloadError

from .bus import Bus
from .events import EventType, cancel_subject, command_subject, make_event, output_key
from .runtime import ToolContext, ToolError, run_tool

COMMAND_WAIT_SECONDS = 30
DEFAULT_INLINE_LIMIT = 16 * 1024  # bytes of JSON; larger outputs go to the object store


@dataclass(frozen=True)
class Attempt:
    namespace: str
    execution: str
    uid: str
    task: str
    attempt: int
    pod: str

    @classmethod
    def from_env(cls) -> Attempt:
        e = os.environ
        return cls(e["COMPOZY_NAMESPACE"], e["COMPOZY_EXECUTION"], e["COMPOZY_EXECUTION_UID"], e["COMPOZY_TASK"],
                   int(e["COMPOZY_ATTEMPT"]), e.get("POD_NAME", ""))


class _NatsLogHandler(logging.Handler):
    """Forwards a tool's log lines to LogEmitted from whatever thread the tool runs in."""

    def __init__(self, loop: asyncio.AbstractEventLoop, bus: Bus, a: Attempt) -> None:
        super().__init__()
        self.loop, self.bus, self.a = loop, bus, a

    def emit(self, record: logging.LogRecord) -> None:
        coro = self.bus.emit_log(self.a.namespace, self.a.execution, "runtime", record.levelname.lower(),
                                 record.getMessage(), task=self.a.task, attempt=self.a.attempt)
        asyncio.run_coroutine_threadsafe(coro, self.loop)


class TaskRunner:
    def __init__(self, bus: Bus, a: Attempt) -> None:
        self.bus, self.a = bus, a

    async def event(self, etype: EventType, source: str, **data: Any) -> None:
        a = self.a
        await self.bus.publish_event(make_event(etype, source, a.namespace, a.execution, a.uid, a.task, a.attempt,
                                                podName=a.pod, **data))

    async def log(self, message: str, level: str = "info") -> None:
        await self.bus.emit_log(self.a.namespace, self.a.execution, "task-executor", level, message,
                                task=self.a.task, attempt=self.a.attempt)

    async def fetch_command(self) -> dict[str, Any]:
        subject = command_subject(self.a.namespace, self.a.execution, self.a.task, self.a.attempt)
        deadline = time.monotonic() + COMMAND_WAIT_SECONDS
        while (command := await self.bus.get_command(subject)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no TaskExecute command on {subject} after {COMMAND_WAIT_SECONDS}s")
            await asyncio.sleep(0.2)
        return command

    async def stop_early(self, reason: str, message: str) -> None:
        """Cancelled over NATS, or SIGTERM (the pod is being deleted): report it, then leave at once."""
        try:
            await self.event(EventType.TASK_FAILED, "compozy/task-executor", error={"reason": reason, "message": message})
            await self.log(message, "warning")
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

    async def run(self) -> None:
        await self.watch_for_stop()
        command = await self.fetch_command()
        await self.event(EventType.TASK_STARTED, "compozy/task-executor")
        await self.log(f"task {self.a.task} attempt {self.a.attempt} started in pod {self.a.pod}")
        tool = command["tool"]
        logger = logging.getLogger(f"compozy.tool.{tool['id']}")
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.addHandler(_NatsLogHandler(asyncio.get_running_loop(), self.bus, self.a))
        ctx = ToolContext(attempt=self.a.attempt, task=self.a.task, execution=self.a.execution,
                          namespace=self.a.namespace, env=command.get("env") or {}, log=logger)
        await self.event(EventType.TOOL_STARTED, "compozy/runtime", tool=tool["id"])
        try:
            output = await asyncio.to_thread(run_tool, tool, command.get("input"), ctx)
        except ToolError as e:
            error = {"reason": e.reason, "message": e.message}
            await self.event(EventType.TOOL_FAILED, "compozy/runtime", tool=tool["id"], error=error)
            await self.log(f"tool {tool['id']} failed: {e.message}", "error")
            await self.event(EventType.TASK_FAILED, "compozy/task-executor", error=error)
            return
        a = self.a
        result = await self.bus.output_fields(output_key(a.namespace, a.execution, a.uid, a.task, a.attempt), output,
                                              int(command.get("outputInlineLimit", DEFAULT_INLINE_LIMIT)))
        if "outputRef" in result:
            ref = result["outputRef"]
            await self.log(f"output of {ref['size']} bytes stored as {ref['bucket']}/{ref['key']}")
        try:
            await self.event(EventType.TOOL_SUCCESS, "compozy/runtime", tool=tool["id"], **result)
            await self.event(EventType.TASK_SUCCESS, "compozy/task-executor", **result)
        except MaxPayloadError:
            error = {"reason": "OutputTooLarge", "message": "the task's output exceeds the NATS message size limit"}
            await self.event(EventType.TOOL_FAILED, "compozy/runtime", tool=tool["id"], error=error)
            await self.event(EventType.TASK_FAILED, "compozy/task-executor", error=error)
            return
        await self.log(f"task {self.a.task} attempt {self.a.attempt} succeeded")


def _termination_message(text: str) -> None:
    path = os.environ.get("COMPOZY_TERMINATION_LOG", "/dev/termination-log")
    try:
        with open(path, "w") as f:
            f.write(text[-4000:])
    except OSError:
        pass


async def _main(a: Attempt) -> int:
    bus = Bus(os.environ["COMPOZY_NATS_URL"], os.environ.get("COMPOZY_NATS_TOKEN") or None,
              f"task-{a.execution}-{a.task}-{a.attempt}")
    await bus.connect(attempts=10, max_delay=3)
    try:
        await TaskRunner(bus, a).run()
    finally:
        await bus.close()
    return 0


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        return asyncio.run(_main(Attempt.from_env()))
    except Exception as e:  # noqa: BLE001 - reported through the pod's status by the orchestrator
        message = f"{type(e).__name__}: {e}"
        print(message, file=sys.stderr)
        _termination_message(message)
        return 1
