"""A warm runner of a RunnerPool (``compozy runner --pool NAME``): takes pooled attempts from the
pool's work queue and runs each in a process of its own.

Isolation: every attempt runs in a process forked for it from a fork server that has imported the
runner's code once (``multiprocessing``'s forkserver, started at the runner's start), never in the
runner itself. The process runs the attempt exactly as a task pod does
(:func:`.task_executor.run_attempt`: fetch the command, check its nonce, claim, run, report), so a
crash, a leak, ``sys.exit`` or ``os._exit`` of a tool ends that process only. The runner watches
its processes: one that exits without having reported its attempt's end gets the attempt failed
(``ProcessExited``: retried by the task's policy); the operator's "stop" of an attempt (timeout)
and its run's cancel kill the process at once. Processes die with the runner (PR_SET_PDEATHSIG).

The queue message of an attempt is acknowledged only when its process has ended (progress is
reported every :data:`HEARTBEAT_SECONDS`), so a runner that dies leaves its messages to come back
to another runner after the consumer's ack wait: that process finds the claim of the lost one and
fails the attempt with ``RunnerLost`` (or runs it, if the lost runner never claimed it). The
operator also fails the attempts of a runner pod that is gone at once (orchestrator.pool_watch).

Concurrency: at most ``COMPOZY_POOL_CONCURRENCY`` processes; the runner asks the queue for as
many attempts as it has free slots, so the queue's depth is what the operator scales runners by.

NATS identities (callout mode, docs/pools.md "Trust boundaries"): the runner logs in with its pod's
token and may only pull from and acknowledge its pool's queue and hear its namespace's stops and
cancels. Each process logs in with the same token as the password and its queue message as the
user: the callout grants it its attempt's own identity once the operator's command for that attempt
names this pool and carries the message's nonce. A process whose login is refused (its attempt has
ended, or a repeated dispatch replaced its nonce) exits with :data:`LOGIN_REFUSED_EXIT`; the runner
puts its message back for a later look (:data:`REFUSED_RETRY_SECONDS`, at most
:data:`REFUSED_DELIVERIES` deliveries). The runner reports a process that died (``ProcessExited``)
under that attempt's identity too, on a connection of its own: it never needs publish rights of its own.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.machinery
import json
import logging
import multiprocessing
import multiprocessing.util
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from typing import Any

from nats.aio.msg import Msg

from .bus import Bus, LoginRefused
from .events import (POOL_STREAM, EventType, Publisher, inbox_prefix, make_event, pool_attempt_user, pool_consumer,
                     runner_inbox_prefix, stop_subject, token, untask_token, untoken)
from .pools import ATTEMPT_MEMORY_ENV, CONCURRENCY_ENV, POOL_NAME_ENV, PoolWork, parse_work
from .process_limits import limit_memory, oom_kill_me_first
from .task_executor import NATS_TOKEN_FILE_ENV, Attempt, nats_login, run_attempt, token_reader

log = logging.getLogger("compozy.runner")
SOURCE = "compozy/pool-runner"
PULL_EXPIRES = 2.0  # seconds one pull request waits for work
RETRY_SECONDS = 0.5  # after a pull request that was refused at once
HEARTBEAT_SECONDS = 3.0  # progress of the messages in flight (the consumer's ack wait is longer: pools.py)
STOP_GRACE = 25.0  # seconds a stopping runner lets its attempts finish (the pod's grace period is 30)
PRELOAD = ["compozy_operator.pool_preload"]  # what the fork server imports once (see there)
PR_SET_PDEATHSIG = 1
REMEMBERED = 10_000  # stops kept in memory
MAX_SOCKET_DIR = 60  # characters of a temporary directory the fork server's socket path fits under
LOGIN_REFUSED_EXIT = 77  # a process whose attempt identity NATS refused (EX_NOPERM)
REFUSED_RETRY_SECONDS = 5.0  # its message comes back after this long (the refusal may have been a failed check)
REFUSED_DELIVERIES = 5  # and is dropped once refused this often


@dataclass
class Child:
    work: PoolWork
    msg: Msg
    process: BaseProcess
    reports: Connection  # the process writes one byte here once its attempt's end is stored
    stopped: str | None = None  # why the runner killed it
    started: float = field(default_factory=time.monotonic)


def child_main(work: dict[str, Any], pool: str, pod: str, claimant: str, redelivered: bool,
               reports: Connection) -> None:
    """The forked process of one attempt (in the fork server's child)."""
    try:  # die with the fork server, which dies with the runner
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    # a group of its own: a signal to the runner's group (a kubelet stopping the pod) is the runner's
    # to handle (it lets the attempts finish first), not each attempt's
    os.setpgid(0, 0)
    # a tool's leak or memory bomb fails its own attempt, not the runner's container
    limit_memory(int(os.environ.get(ATTEMPT_MEMORY_ENV) or 0))
    oom_kill_me_first()
    w = PoolWork(**work)
    a = Attempt(w.namespace, w.execution, w.uid, w.task, w.attempt, pod, claimant, w.nonce, pool, redelivered)
    user = attempt_user(w)  # (before nats_login takes the token file's name out of the environment)

    def reported() -> None:
        try:
            reports.send_bytes(b"1")
        except OSError:
            pass
    try:
        asyncio.run(run_attempt(a, nats_login(), reported, user))
    except LoginRefused as e:
        log.warning("task %s attempt %d: NATS refused this attempt's identity: %s", w.task, w.attempt, e)
        os._exit(LOGIN_REFUSED_EXIT)


def attempt_user(w: PoolWork) -> str | None:
    """A pooled attempt's NATS user in callout mode (its queue message; the token is the password),
    None in token mode (the shared token)."""
    return pool_attempt_user(w.dump()) if os.environ.get(NATS_TOKEN_FILE_ENV) else None


class PoolRunner:
    def __init__(self, namespace: str, pool: str, concurrency: int, pod: str, pod_uid: str) -> None:
        self.namespace, self.pool, self.concurrency, self.pod = namespace, pool, concurrency, pod
        self.pod_uid = pod_uid or f"{pod}/{secrets.token_hex(8)}"
        self.children: dict[tuple[str, str, str, int], Child] = {}
        self.ctx: ForkServerContext = multiprocessing.get_context("forkserver")  # type: ignore[assignment]
        self.ctx.set_forkserver_preload(PRELOAD)
        self.stopping = False
        # stops seen lately (an attempt being started as its stop arrives is not started)
        self.stops: OrderedDict[tuple[str, str, str, int], None] = OrderedDict()
        self.slot_free = asyncio.Event()
        self.request_done = asyncio.Event()
        self.requested = self.delivered = 0
        self.starting = 0  # attempts delivered and not yet started (or dropped)
        self.bus: Bus | None = None

    # ---- the queue ------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self._warm()  # before the runner's own SIGTERM handler (see _warm)
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        # the runner's own connection: its pod's token (callout mode) or the shared token
        self.bus = bus = Bus(os.environ["COMPOZY_NATS_URL"], runner_login(), f"runner-{self.pod}",
                             os.environ.get("COMPOZY_NATS_CA") or None,
                             inbox_prefix=runner_inbox_prefix(self.namespace, self.pod))
        await bus.connect(max_delay=3)
        assert bus.nc is not None
        inbox = bus.nc.new_inbox()
        await bus.nc.subscribe(inbox, cb=self._delivered)
        ns = token(self.namespace)
        await bus.nc.subscribe(f"compozy.cmd.{ns}.*.workflow.cancel", cb=self._on_cancel)
        await bus.nc.subscribe(f"compozy.cmd.{ns}.*.task.stop.*.*.*", cb=self._on_stop)
        heartbeat = asyncio.create_task(self._heartbeat())
        log.info("runner %s of pool %s/%s ready (%d slots)", self.pod, self.namespace, self.pool, self.concurrency)
        next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{POOL_STREAM}.{pool_consumer(self.namespace, self.pool)}"
        try:
            while not self.stopping:
                free = self.concurrency - len(self.children) - self.starting
                if free <= 0:
                    self.slot_free.clear()
                    await self.slot_free.wait()
                    continue
                # one pull request at a time, for as many attempts as there are free slots; each
                # attempt is started the moment it arrives (see _delivered)
                self.request_done.clear()
                self.requested, self.delivered = free, 0
                request = {"batch": free, "expires": int(PULL_EXPIRES * 1e9)}
                asked = time.monotonic()
                await bus.nc.publish(next_subject, json.dumps(request).encode(), reply=inbox)
                try:
                    await asyncio.wait_for(self.request_done.wait(), PULL_EXPIRES + 1)
                except TimeoutError:
                    pass  # lost (a reconnect): ask again
                if not self.delivered and time.monotonic() - asked < PULL_EXPIRES / 2:
                    await asyncio.sleep(RETRY_SECONDS)  # refused at once (no consumer yet, NATS away): not in a loop
            await self._drain()
        finally:
            heartbeat.cancel()
            await bus.close()

    def _warm(self) -> None:
        """Start the fork server now (it imports the runner's code once), not at the first attempt.
        In the main thread: it changes a signal's handling for a moment."""
        if len(tempfile.gettempdir()) > MAX_SOCKET_DIR:  # its socket's path must fit AF_UNIX's 108 bytes
            saved, tempfile.tempdir = tempfile.tempdir, "/tmp"
            try:
                multiprocessing.util.get_temp_dir()  # kept for this process's multiprocessing from now on
            finally:
                tempfile.tempdir = saved
        main = sys.modules["__main__"]
        if getattr(main, "__spec__", None) is None:
            # Run as a script (the ``compozy`` console script), each process would execute that script
            # again to stand in for __main__ (0.4 s of imports: the CLI). Named like ``python -m
            # compozy_operator.cli``, it is not: multiprocessing leaves a ``*.__main__`` module alone.
            main.__spec__ = importlib.machinery.ModuleSpec("compozy_operator.cli.__main__", None)
        # The fork server and the processes it forks ignore SIGTERM (an ignored signal stays ignored
        # across exec; an attempt's process handles it again once it runs: task_executor): a stop of
        # the pod is the runner's to handle (it lets the attempts finish first), even where it is
        # sent to the whole process group rather than to the container's first process.
        previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            self.ctx.Process(target=int).start()
        finally:
            signal.signal(signal.SIGTERM, previous)

    async def _delivered(self, msg: Msg) -> None:
        status = (msg.headers or {}).get("Status")
        if status is not None:
            if status != "100":  # 404/408: no work (more); 409: the request ended otherwise
                self.request_done.set()
            return
        self.delivered += 1
        if self.delivered >= self.requested:
            self.request_done.set()
        try:
            body = json.loads(msg.data)
        except ValueError:
            body = None
        work = parse_work(body, self.namespace)
        if isinstance(work, str):
            log.warning("pool %s: dropped a queue message: %s", self.pool, work)
            await msg.term()
            return
        if (known := self.children.get(work.key)) is not None:  # came back while its process runs here
            known.msg = msg
            await msg.in_progress()
            return
        # holds a slot while it is looked at (the next pull must not ask for it); the look for a stop is a
        # NATS round trip, made beside the next deliveries rather than before them (this callback runs
        # one message at a time)
        self.starting += 1
        asyncio.ensure_future(self._start_unless_stopped(work, msg))

    async def _start_unless_stopped(self, work: PoolWork, msg: Msg) -> None:
        try:
            if await self._stopped(work):  # timed out before it could start: never start it
                await msg.ack()
                return
            if work.key in self.children:  # (delivered again while the look above waited)
                return
            self._start(work, msg)
        finally:
            self.starting -= 1
            self.slot_free.set()

    async def _stopped(self, w: PoolWork) -> bool:
        assert self.bus is not None
        if w.key in self.stops:
            return True
        subject = stop_subject(w.namespace, w.execution, w.uid, w.task, w.attempt)
        return await self.bus.through_outage(lambda: self.bus.get_command(subject), "looking for a stop",  # type: ignore[union-attr]
                                             300) is not None

    def _start(self, work: PoolWork, msg: Msg) -> None:
        reports, writer = self.ctx.Pipe(duplex=False)
        claimant = f"{self.pod_uid}/{secrets.token_hex(6)}"  # each process its own: a repeat claims anew
        redelivered = msg.metadata.num_delivered is not None and msg.metadata.num_delivered > 1
        process = self.ctx.Process(target=child_main, args=(work.dump(), self.pool, self.pod, claimant, redelivered,
                                                            writer),
                                   name=f"attempt-{work.task}-{work.attempt}", daemon=False)
        process.start()
        writer.close()
        child = Child(work, msg, process, reports)
        self.children[work.key] = child
        asyncio.get_running_loop().add_reader(process.sentinel, lambda: asyncio.ensure_future(self._ended(child)))

    async def _ended(self, child: Child) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(child.process.sentinel)
        child.process.join(0)
        reported = _said(child.reports)
        child.reports.close()
        w = child.work
        code = child.process.exitcode
        refused = not reported and child.stopped is None and code == LOGIN_REFUSED_EXIT
        if not reported and child.stopped is None and not refused:
            how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            message = (f"the process of task {w.task} attempt {w.attempt} on runner {self.pod} (pool {self.pool}) "
                       f"{how} before it reported a result")
            log.warning("%s", message)
            await self._fail(w, "ProcessExited", message)
        self.children.pop(w.key, None)
        child.process.close()
        self.slot_free.set()
        try:
            if refused:
                await self._refused(child.msg, w)
            else:
                await child.msg.ack()
        except Exception as e:  # noqa: BLE001 - NATS away: the message comes back, and finds the attempt claimed
            log.warning("acknowledging the queue message of %s: %s", w.key, e)

    async def _refused(self, msg: Msg, w: PoolWork) -> None:
        """NATS refused the attempt's identity: its attempt has ended or its nonce was replaced (then
        the message is stale), or the check failed (then a later look succeeds): look again later,
        a few times."""
        if msg.metadata.num_delivered >= REFUSED_DELIVERIES:
            log.warning("pool %s: dropped the queue message of %s: its identity was refused %d times", self.pool,
                        w.key, msg.metadata.num_delivered)
            await msg.term()
        else:
            await msg.nak(delay=REFUSED_RETRY_SECONDS)

    async def _fail(self, w: PoolWork, reason: str, message: str) -> None:
        """Report the attempt failed, as the attempt: in callout mode on a connection with its identity
        (the runner's own may publish nothing), in token mode on the runner's."""
        assert self.bus is not None
        event = make_event(EventType.TASK_FAILED, SOURCE, w.namespace, w.execution, w.uid, w.task, w.attempt,
                           publisher=Publisher.ATTEMPT, podName=self.pod, error={"reason": reason, "message": message})
        user = attempt_user(w)
        bus = self.bus if user is None else Bus(
            self.bus.url, self.bus.token, f"runner-{self.pod}-report", os.environ.get("COMPOZY_NATS_CA") or None,
            inbox_prefix=inbox_prefix(w.namespace, w.execution, w.task, w.attempt), user=user)
        try:
            if bus is not self.bus:
                await bus.connect(max_delay=1, give_up_after=30, refusals=3)
            await bus.through_outage(lambda: bus.publish_event(event), "reporting a lost process", 300)
            await bus.emit_log(w.namespace, w.execution, w.uid, "pool-runner", "error", message, task=w.task,
                               attempt=w.attempt)
        except ConnectionError as e:  # refused: the attempt has ended meanwhile (or NATS is away that long)
            log.warning("could not report %s of %s: %s", reason, w.key, e)
        finally:
            if bus is not self.bus:
                await bus.close()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            for child in list(self.children.values()):
                try:
                    await child.msg.in_progress()
                except Exception as e:  # noqa: BLE001 - NATS away: the next beat tries again
                    log.debug("progress of %s: %s", child.work.key, e)

    # ---- stopping attempts ----------------------------------------------------------------

    def _kill(self, child: Child, why: str) -> None:
        if child.stopped is None and child.process.pid is not None:
            child.stopped = why
            try:
                os.kill(child.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def _on_cancel(self, msg: Msg) -> None:
        execution = untoken(msg.subject.split(".")[3])
        for child in list(self.children.values()):
            if child.work.execution == execution:
                self._kill(child, "cancelled")

    async def _on_stop(self, msg: Msg) -> None:
        t = msg.subject.split(".")  # compozy.cmd.<ns>.<execution>.task.stop.<uid>.<task>.<attempt>
        task = untask_token(t[7])
        if task is None or not t[8].isdigit():
            return
        key = (untoken(t[3]), untoken(t[6]), task, int(t[8]))
        _remember(self.stops, key)
        if (child := self.children.get(key)) is not None:
            self._kill(child, "stopped")

    def stop(self) -> None:
        """SIGTERM (the pod is being deleted, e.g. scaled down): take nothing new, let the attempts
        in flight finish (up to :data:`STOP_GRACE`), then stop them (they report ``Terminated``)."""
        self.stopping = True
        self.slot_free.set()
        self.request_done.set()

    async def _drain(self) -> None:
        deadline = time.monotonic() + STOP_GRACE
        while (self.children or self.starting) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for child in list(self.children.values()):
            if child.process.pid is not None:
                os.kill(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while self.children and time.monotonic() < deadline:
            await asyncio.sleep(0.1)


def _remember(seen: OrderedDict[Any, None], key: Any) -> None:
    seen[key] = None
    while len(seen) > REMEMBERED:
        seen.popitem(last=False)


def _said(reports: Connection) -> bool:
    """Did the process say its attempt's end was stored? (A pipe that merely closed did not.)"""
    try:
        return reports.poll() and reports.recv_bytes() == b"1"
    except (EOFError, OSError):
        return False


def runner_login() -> str | Callable[[], str] | None:
    """The runner's own NATS login: its pod's projected token (callout mode) or the shared token;
    both are left in the environment for the attempts' processes."""
    token_file = os.environ.get(NATS_TOKEN_FILE_ENV)
    return token_reader(token_file) if token_file else os.environ.get("COMPOZY_NATS_TOKEN") or None


def main(pool: str | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    e = os.environ
    runner = PoolRunner(e["COMPOZY_NAMESPACE"], pool or e[POOL_NAME_ENV], int(e.get(CONCURRENCY_ENV) or "4"),
                        e.get("POD_NAME", ""), e.get("POD_UID", ""))
    asyncio.run(runner.run())
    return 0
