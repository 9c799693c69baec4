"""nats.Client: the connection, JetStream streams, and typed publish/fetch helpers.

Streams:

* ``COMPOZY_STATE`` (``compozy.state.>``): every state event, file storage, de-duplicated by
  ``Nats-Msg-Id`` within a 10-minute window. The state manager's durable consumer reads it.
* ``COMPOZY_COMMANDS`` (``compozy.cmd.>``): TaskExecute commands, one kept per subject; a task
  pod reads its own with a direct get, so a restarted pod fetches it again. Also each attempt's
  claim (``task.claim.<task>.<attempt>``): stored only if none is, so one pod at most runs it.
* ``COMPOZY_LOGS`` (``compozy.log.>``): LogEmitted events, bounded by age and size (the chart's
  ``logs.maxAge``/``logs.maxBytes``: :func:`stream_configs`); a deleted run's are purged with it.

Object store ``COMPOZY_OUTPUTS``: task outputs too large for the status (``outputRef`` points
there); removed with their execution.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import ssl
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (AckPolicy, ConsumerConfig, DeliverPolicy, DiscardPolicy, ObjectStoreConfig, RetentionPolicy,
                         StorageType, StreamConfig)
from nats.js.errors import BadRequestError, NoStreamResponseError, NotFoundError, ServiceUnavailableError

from . import failpoints
from .wire import (COMMAND_STREAM, LOG_MAX_AGE, LOG_MAX_BYTES, LOG_STREAM, OUTPUT_BUCKET, POOL_STREAM, STATE_STREAM, EventType,
                   Publisher, claim_subject, encode, execution_logs, log_subject, output_chunk_token, output_meta_subject,
                   state_subject, utcnow)

if TYPE_CHECKING:  # the pydantic model: the operator's; a task pod publishes envelopes (wire.envelope)
    from .events import Event

log = logging.getLogger(__name__)
T = TypeVar("T")

# What a NATS outage looks like to a request: no answer in time, the connection lost or being
# re-established (nats-py buffers at most 2 MiB meanwhile), or a server whose JetStream is not
# serving yet after a restart (no responders, 503).
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError, nats.errors.ConnectionReconnectingError, NoStreamResponseError,
    ServiceUnavailableError, OSError)  # OSError: a reset socket, and asyncio's TimeoutError too
WRONG_LAST_SEQUENCE = 10071  # JetStream's err_code when Nats-Expected-Last-Subject-Sequence does not hold

DAY = 24 * 3600


def stream_configs(log_max_age: float = LOG_MAX_AGE, log_max_bytes: int = LOG_MAX_BYTES,
                   replicas: int = 1) -> tuple[StreamConfig, ...]:
    """The streams, with the log stream's retention (how long a run's lines stay readable, at most)
    and the copies each stream (and the outputs' object store) keeps on a JetStream cluster."""
    return (
        StreamConfig(name=STATE_STREAM, subjects=["compozy.state.>"], storage=StorageType.FILE,
                     retention=RetentionPolicy.LIMITS, max_age=7 * DAY, duplicate_window=600, num_replicas=replicas),
        StreamConfig(name=COMMAND_STREAM, subjects=["compozy.cmd.>"], storage=StorageType.FILE,
                     retention=RetentionPolicy.LIMITS, max_age=DAY, max_msgs_per_subject=1,
                     allow_direct=True, duplicate_window=600, num_replicas=replicas),
        StreamConfig(name=LOG_STREAM, subjects=["compozy.log.>"], storage=StorageType.FILE,
                     retention=RetentionPolicy.LIMITS, max_age=log_max_age, max_bytes=log_max_bytes,
                     discard=DiscardPolicy.OLD, num_replicas=replicas),
        # each message is one pooled attempt to run; a runner's ack (the attempt's process ended) removes it
        StreamConfig(name=POOL_STREAM, subjects=["compozy.pool.>"], storage=StorageType.FILE,
                     retention=RetentionPolicy.WORK_QUEUE, max_age=DAY, duplicate_window=600, num_replicas=replicas),
    )


STREAMS = stream_configs()


class PayloadTooLarge(ValueError):
    """A message that can never fit the NATS server's ``max_payload`` (retrying cannot help)."""


class LoginRefused(ConnectionError):
    """The server refused the login every time it was asked (see :meth:`Bus.connect`)."""


__all__ = ["OUTPUT_BUCKET", "Bus", "LoginRefused", "PayloadTooLarge", "claim_subject"]  # claim_subject: kept here for old importers
OUTPUT_STREAM = f"OBJ_{OUTPUT_BUCKET}"
OUTPUT_CHUNK_SIZE = 128 * 1024  # as nats-py's object store


class Bus:
    def __init__(self, url: str, token: str | Callable[[], str] | None, name: str, ca: str | None = None,
                 inbox_prefix: str = "_INBOX", streams: tuple[StreamConfig, ...] = STREAMS,
                 user: str | None = None) -> None:
        """``token``: a string, or a callable nats-py calls at each connect and reconnect (a task
        pod's ServiceAccount token file, read anew: task_executor.nats_login); sent as the password
        of ``user`` when there is one (a pooled attempt's process: wire.POOL_ATTEMPT_USER);
        ``ca``: PEM of the CA that signed a TLS server's certificate (else the system's trust);
        ``inbox_prefix``: where replies come back (a task attempt's own, see events.inbox_prefix);
        ``streams``: what :meth:`ensure_streams` creates (the operator's, with its log retention)."""
        self.inbox_prefix = inbox_prefix
        self.streams = streams
        self.url = url
        self.token = token
        self.user = user
        self.name = name
        self.tls = ssl.create_default_context(cadata=ca) if ca else None
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.last_error: str | None = None
        self._connect_error: Exception | None = None
        self.disconnects = 0  # since start (compozy_nats_disconnects_total)

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    async def connect(self, attempts: int | None = None, initial_delay: float = 0.5, max_delay: float = 15,
                      give_up_after: float | None = None, refusals: int | None = None) -> None:
        """Connect, retrying with back-off (forever unless ``attempts`` or ``give_up_after`` seconds,
        or ``refusals`` answers of the server refusing this login: :class:`LoginRefused`); log each failure."""
        delay, tried, refused = initial_delay, 0, 0
        started = asyncio.get_running_loop().time()
        while True:
            tried += 1
            try:
                # One try per round here (this loop owns the back-off and says why it waits) ...
                # (no reconnecting inside this try: on a TLS verification failure nats-py would
                # otherwise wait forever instead of failing)
                login: dict[str, Any] = {"user": self.user, "password": self.token} if self.user else {"token": self.token}
                self.nc = await nats.connect(
                    self.url, **login, name=self.name, connect_timeout=5, tls=self.tls,
                    inbox_prefix=self.inbox_prefix,
                    allow_reconnect=False, reconnect_time_wait=0.1,
                    error_cb=self._on_error, disconnected_cb=self._on_disconnect, reconnected_cb=self._on_reconnect)
                # ... and once connected, the client reconnects on its own, forever.
                self.nc.options["allow_reconnect"] = True
                self.nc.options["max_reconnect_attempts"] = -1
                self.nc.options["reconnect_time_wait"] = 1
                self.js = self.nc.jetstream()
                self.last_error = None
                return
            except Exception as e:  # noqa: BLE001 - any failure is retried the same way
                cause = self._connect_error or e  # "no servers available" hides e.g. "connection refused"
                self._connect_error = None
                self.last_error = f"NATS at {without_credentials(self.url)} unreachable: {cause or type(cause).__name__}"
                waited = asyncio.get_running_loop().time() - started
                # (nats-py reports a refused CONNECT as a plain error naming the server's answer)
                refused = refused + 1 if "authorization violation" in str(cause).lower() else 0
                if refusals is not None and refused >= refusals:
                    raise LoginRefused(self.last_error) from e
                if (attempts is not None and tried >= attempts) or (give_up_after is not None
                                                                    and waited >= give_up_after):
                    raise ConnectionError(self.last_error) from e
                log.warning("%s; retrying in %.1fs", self.last_error, delay)
                await asyncio.sleep(delay)
                delay = min(max_delay, delay * 2)

    async def _on_error(self, e: Exception) -> None:
        if self.js is None:  # while connecting, connect() reports the failure itself
            self._connect_error = e
        else:
            self.last_error = f"NATS at {without_credentials(self.url)}: {e}"
            log.warning("NATS error: %s", e)

    async def _on_disconnect(self) -> None:
        self.disconnects += 1
        log.warning("NATS disconnected; reconnecting")

    async def _on_reconnect(self) -> None:
        self.last_error = None
        log.info("NATS reconnected")

    async def ensure_streams(self) -> None:
        assert self.js is not None
        for config in self.streams:
            try:
                await self.js.stream_info(config.name)
                await self.js.update_stream(config)
            except NotFoundError:
                await self.js.add_stream(config)
        await self.js.create_object_store(OUTPUT_BUCKET, self._output_store())

    async def recreate_missing_streams(self) -> list[str]:
        """Create the streams (and the outputs' object store) that are gone; return their names."""
        assert self.js is not None
        missing = []
        for config in self.streams:
            if not await self._stream_exists(config.name):
                await self.js.add_stream(config)
                missing.append(config.name)
        if not await self._stream_exists(f"OBJ_{OUTPUT_BUCKET}"):
            await self.js.create_object_store(OUTPUT_BUCKET, self._output_store())
            missing.append(OUTPUT_BUCKET)
        return missing

    def _output_store(self) -> ObjectStoreConfig:
        """The outputs' object store keeps as many copies as the streams."""
        return ObjectStoreConfig(storage=StorageType.FILE, replicas=self.streams[0].num_replicas or 1)

    async def _stream_exists(self, name: str) -> bool:
        assert self.js is not None
        try:
            await self.js.stream_info(name)
        except NotFoundError:
            return False
        return True

    async def stream_created(self, stream: str) -> datetime | None:
        """When ``stream`` was created (a recreated stream restarts its sequences at 1)."""
        assert self.js is not None
        return (await self.js.stream_info(stream)).created

    async def durable_pull(self, stream: str, config: ConsumerConfig) -> JetStreamContext.PullSubscription:
        """Subscribe to a durable pull consumer, creating it, or updating an existing one to ``config``
        (JetStream's create updates a consumer of that name: e.g. one with an older ``ack_wait``).
        Where an existing consumer starts from is kept: JetStream cannot change that."""
        assert self.js is not None
        try:
            current = (await self.js.consumer_info(stream, config.durable_name or "")).config
            config = config.evolve(deliver_policy=current.deliver_policy, opt_start_seq=current.opt_start_seq,
                                   opt_start_time=current.opt_start_time)
        except NotFoundError:
            pass
        await self.js.add_consumer(stream, config)
        return await self.js.pull_subscribe_bind(durable=config.durable_name, stream=stream)

    async def create_consumer(self, stream: str, config: ConsumerConfig) -> None:
        assert self.js is not None
        await self.js.add_consumer(stream, config)

    async def unacknowledged(self, stream: str, durable: str) -> tuple[int, int] | None:
        """A durable consumer's (ack floor, messages delivered and not acknowledged), or None when
        it does not exist."""
        assert self.js is not None
        try:
            info = await self.js.consumer_info(stream, durable)
        except NotFoundError:
            return None
        return (info.ack_floor.stream_seq if info.ack_floor else 0), info.num_ack_pending or 0

    async def delete_consumer(self, stream: str, durable: str) -> None:
        assert self.js is not None
        with contextlib.suppress(NotFoundError):
            await self.js.delete_consumer(stream, durable)

    async def consumer_position(self, stream: str, durable: str) -> tuple[datetime | None, int] | None:
        """Where a durable consumer stands: (its stream's creation time, the stream sequence up to
        which every event is acknowledged), or None when the consumer does not exist."""
        assert self.js is not None
        try:
            info = await self.js.consumer_info(stream, durable)
        except NotFoundError:
            return None
        created = await self.stream_created(stream)
        return created, info.ack_floor.stream_seq if info.ack_floor else 0

    async def put_output(self, key: str, data: bytes) -> dict[str, Any]:
        """Store a large output; return its ``outputRef`` (bucket, key, size, digest).

        Written as nats-py's object store writes an object (chunks, then the metadata message that
        names them), readable by any NATS client, but touching only subjects a permission can scope
        to ``key`` (:func:`.events.attempt_permissions`): chunks go to ``$O.<bucket>.C.<hash of key>.
        <nonce>``, the metadata to ``$O.<bucket>.M.<key>``. No stream info, no lookup of an older
        object, no purge (nats-py's put needs all three, and purge requests name their subject in
        the body, where no permission can see it): an attempt's key is written once; chunks of an
        earlier write of a key (a try cut short, an operator's repeat) are removed with the
        execution's outputs (:meth:`delete_outputs`)."""
        assert self.js is not None
        nuid = f"{output_chunk_token(key)}.{uuid.uuid4().hex}"
        chunk_subject = f"$O.{OUTPUT_BUCKET}.C.{nuid}"
        chunks = 0
        for start in range(0, len(data), OUTPUT_CHUNK_SIZE):
            await self.js.publish(chunk_subject, data[start:start + OUTPUT_CHUNK_SIZE], stream=OUTPUT_STREAM)
            chunks += 1
        digest = "SHA-256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).decode()
        meta = {"name": key, "bucket": OUTPUT_BUCKET, "nuid": nuid, "size": len(data), "chunks": chunks,
                "digest": digest, "mtime": datetime.now(timezone.utc).isoformat(),
                "options": {"max_chunk_size": OUTPUT_CHUNK_SIZE}}
        await self.js.publish(output_meta_subject(key), json.dumps(meta).encode(), stream=OUTPUT_STREAM,
                              headers={"Nats-Rollup": "sub"})
        return {"bucket": OUTPUT_BUCKET, "key": key, "size": len(data), "digest": digest}

    async def output_fields(self, key: str, value: Any, inline_limit: int, name: str = "output") -> dict[str, Any]:
        """``{name: value}``, or ``{name + "Ref": ...}`` with the value stored when it is too large."""
        encoded = json.dumps(value).encode()
        if len(encoded) <= inline_limit:
            return {name: value}
        return {f"{name}Ref": await self.put_output(key, encoded)}

    async def get_output(self, ref: dict[str, Any]) -> Any:
        assert self.js is not None
        result = await (await self.js.object_store(ref["bucket"])).get(ref["key"])
        return json.loads(result.data)

    async def output_names(self) -> list[str]:
        """The keys of every stored output."""
        assert self.js is not None
        store = await self.js.object_store(OUTPUT_BUCKET)
        try:
            return [i.name for i in await store.list(ignore_deletes=True)]
        except NotFoundError:  # the bucket is empty
            return []

    async def delete_outputs(self, prefix: str) -> int:
        """Remove every stored output whose key starts with ``prefix`` (an execution's)."""
        return await self.delete_output_keys([n for n in await self.output_names() if n.startswith(prefix)])

    async def delete_output_keys(self, names: list[str], write: str = "purge.outputs") -> int:
        """Remove these stored outputs (``write``: the failpoint name of the caller's write)."""
        assert self.js is not None
        if not names:
            return 0
        store = await self.js.object_store(OUTPUT_BUCKET)
        failpoints.point(f"{write}:before")
        for name in names:
            await store.delete(name)
            # and chunks of earlier writes of the same key (put_output purges nothing itself)
            await self.js.purge_stream(OUTPUT_STREAM, subject=f"$O.{OUTPUT_BUCKET}.C.{output_chunk_token(name)}.>")
        failpoints.point(f"{write}:after")
        return len(names)

    def check_size(self, payload: bytes, what: str) -> bytes:
        """``payload``, or :class:`PayloadTooLarge` naming ``what`` when the server would refuse it."""
        limit = self.nc.max_payload if self.nc is not None else 0
        if limit and len(payload) > limit - 1024:  # headers travel in the same message
            raise PayloadTooLarge(f"{what} is {len(payload)} bytes; the NATS server accepts at most {limit}")
        return payload

    async def publish_event(self, event: Event | dict[str, Any]) -> int:
        """Publish a state event (the model, or a task pod's :func:`.wire.envelope`); return its
        stream sequence (the original's, for a duplicate)."""
        assert self.js is not None
        if isinstance(event, dict):
            body, subject, etype, msg_id = encode(event), event["subject"], event["type"], event["id"]
        else:
            body, subject, etype, msg_id = event.model_dump_json().encode(), event.subject, event.type, event.id
        payload = self.check_size(body, f"the {etype} event")
        failpoints.point(f"publish.{etype}:before")
        ack = await self.js.publish(subject, payload, stream=STATE_STREAM, headers={"Nats-Msg-Id": msg_id})
        failpoints.point(f"publish.{etype}:after")
        return ack.seq

    async def replay(self, subject: str, batch: int = 512) -> list[tuple[int, Event]]:
        """Every state event stored under ``subject`` (a wildcard), in stream order, with sequences.

        Nothing when the stream is gone (it is recreated elsewhere); events that do not parse are
        left out (the state manager rejects them too: :func:`.events.parse_state_event`)."""
        from .events import InvalidEvent, parse_state_event  # noqa: PLC0415 - the operator's: pydantic

        assert self.js is not None
        try:
            sub = await self.js.pull_subscribe(
                subject, stream=STATE_STREAM,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE,
                                      inactive_threshold=30, mem_storage=True))
        except NotFoundError:
            return []
        out: list[tuple[int, Event]] = []
        try:
            while True:
                info = await sub.consumer_info()
                if info.num_pending == 0:
                    break
                for m in await sub.fetch(min(batch, info.num_pending), timeout=5):
                    try:
                        out.append((m.metadata.sequence.stream, parse_state_event(m.subject, m.data)))
                    except InvalidEvent:
                        continue
        finally:
            await sub.unsubscribe()
        return out

    async def publish_command(self, subject: str, payload: dict[str, Any], msg_id: str | None = None) -> int:
        """Store a TaskExecute command, the one kept on ``subject`` (a repeat replaces it). Without a
        ``Nats-Msg-Id`` unless given: a guessable id would let whoever publishes first under it
        have the real command dropped as a duplicate."""
        assert self.js is not None
        data = self.check_size(json.dumps(payload).encode(), "the TaskExecute command")
        failpoints.point("publish.TaskExecute:before")
        ack = await self.js.publish(subject, data, stream=COMMAND_STREAM,
                                    headers={"Nats-Msg-Id": msg_id} if msg_id else None)
        failpoints.point("publish.TaskExecute:after")
        return ack.seq

    async def publish_pool_work(self, subject: str, work: dict[str, Any], msg_id: str) -> int:
        """Queue one pooled attempt on its pool's work queue (pools.PoolWork)."""
        assert self.js is not None
        data = self.check_size(json.dumps(work).encode(), "the pool message")
        failpoints.point("publish.PoolWork:before")
        ack = await self.js.publish(subject, data, stream=POOL_STREAM, headers={"Nats-Msg-Id": msg_id})
        failpoints.point("publish.PoolWork:after")
        return ack.seq

    async def get_command(self, subject: str) -> tuple[str, Any] | None:
        """The command stored on ``subject`` as (the subject it was stored on, its parsed body; None
        when it is not JSON), or None when there is none. A Direct Get whose API subject names
        ``subject`` (``$JS.API.DIRECT.GET.COMPOZY_COMMANDS.<subject>``), so a permission can allow
        this one read and no other."""
        assert self.js is not None
        try:
            msg = await self.js.get_last_msg(COMMAND_STREAM, subject, direct=True)
        except NotFoundError:
            return None
        try:
            return msg.subject, json.loads(msg.data)
        except ValueError:
            return msg.subject, None

    async def through_outage(self, op: Callable[[], Awaitable[T]], what: str, within: float) -> T:
        """``await op()`` until NATS answers it, for up to ``within`` seconds after it first failed.

        A try that meets an outage (any of :data:`OUTAGE_ERRORS`) is repeated once the client has
        reconnected (a try while disconnected would only wait out its timeout in nats-py's
        reconnect buffer). Only for operations that are safe to repeat: a publish with a
        ``Nats-Msg-Id`` (a retry of one that was stored unacknowledged is dropped as a duplicate),
        a read, a claim. Anything else (an API error, a payload too large) is raised at once."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        delay = 0.1
        while True:
            try:
                return await op()
            except OUTAGE_ERRORS as e:
                if deadline is None:
                    deadline = loop.time() + within
                    log.warning("%s: NATS unavailable (%s: %s); retrying for up to %.0fs", what, type(e).__name__,
                                e, within)
                while not self.connected and loop.time() < deadline:
                    await asyncio.sleep(0.1)
                if loop.time() >= deadline:
                    raise ConnectionError(f"{what}: NATS unavailable for {within:.0f}s "
                                          f"({type(e).__name__}: {e})") from e
                await asyncio.sleep(delay)  # connected: let a restarted JetStream get ready
                delay = min(2.0, delay * 2)

    async def claim(self, subject: str, claimant: str, **facts: Any) -> dict[str, Any] | None:
        """Claim ``subject`` (of the command stream) for ``claimant``, once and for all.

        The claim is published with ``Nats-Expected-Last-Subject-Sequence: 0``, so JetStream stores
        only the first one. Returns None when the stored claim is ``claimant``'s (just now, or by an
        earlier try whose acknowledgement was lost), else the stored claim of whoever holds it."""
        assert self.js is not None
        body = json.dumps({"claimant": claimant, "time": utcnow(), **facts}).encode()
        while True:
            try:
                await self.js.publish(subject, body, stream=COMMAND_STREAM,
                                      headers={"Nats-Expected-Last-Subject-Sequence": "0"})
                return None
            except BadRequestError as e:
                if e.err_code != WRONG_LAST_SEQUENCE:
                    raise
            try:
                held = json.loads((await self.js.get_last_msg(COMMAND_STREAM, subject, direct=True)).data)
            except NotFoundError:  # purged in between (its execution deleted): claim again
                continue
            return None if held.get("claimant") == claimant else held

    async def emit_log(self, namespace: str, execution: str, uid: str, component: str, level: str, message: str,
                       publisher: Publisher = Publisher.OPERATOR, **fields: Any) -> None:
        """A LogEmitted event of the run ``uid`` (fire and forget: logs must never block the work they
        describe). A task attempt's (``publisher`` ATTEMPT, with ``task`` and ``attempt``) go to its own subject."""
        if not self.connected:
            return
        data = {"namespace": namespace, "execution": execution, "uid": uid, "component": component, "level": level,
                "message": message, **fields}
        subject = (log_subject(namespace, execution, uid, component, fields["task"], fields["attempt"])
                   if publisher == Publisher.ATTEMPT else log_subject(namespace, execution, uid, component))
        body = {"specversion": "1.0", "id": uuid.uuid4().hex, "source": f"compozy/{component}", "type": EventType.LOG_EMITTED.value,
                "time": utcnow(), "subject": subject, "data": data}
        try:
            await self.nc.publish(subject, json.dumps(body, default=str).encode())  # type: ignore[union-attr]
        except (nats.errors.Error, OSError) as e:  # NATS went away (buffer full, socket reset): the line is lost
            log.debug("LogEmitted dropped: %s", e)

    async def purge_logs(self, namespace: str, execution: str, uid: str) -> None:
        """Remove the log lines of the run ``uid`` (deleted), and no other run's of the same name."""
        assert self.js is not None
        try:
            failpoints.point("purge.logs:before")
            await self.js.purge_stream(LOG_STREAM, subject=execution_logs(namespace, execution, uid))
            failpoints.point("purge.logs:after")
        except NotFoundError:  # no log stream (deleted): nothing to purge; it is recreated elsewhere
            pass

    async def purge_state(self, namespace: str, execution: str, uid: str) -> bool:
        """Remove the state events of the run ``uid`` (deleted): every event stored under its name up
        to its own last one, when that is the last one there; returns whether it did. The subjects name the
        execution, not the run: when a new run of the same name has published since, the old events
        are left to the stream's age limit rather than risk the new run's (the purge is bounded by
        sequence, so one published meanwhile is never touched)."""
        from .events import InvalidEvent, parse_state_event  # noqa: PLC0415 - the operator's: pydantic

        assert self.js is not None
        subject = state_subject(namespace, execution, None)
        try:
            last = await self.js.get_last_msg(STATE_STREAM, subject)
        except NotFoundError:  # none stored (or no stream): nothing to purge
            return False
        try:
            owner = parse_state_event(last.subject or "", last.data or b"").data.get("uid")
        except InvalidEvent:
            return False
        if owner != uid or last.seq is None:
            return False
        failpoints.point("purge.state:before")
        purged = await self.js.purge_stream(STATE_STREAM, subject=subject, seq=last.seq + 1)
        failpoints.point("purge.state:after")
        return purged

    async def close(self) -> None:
        """Flush what was published, then close. Not a drain: after a pull consumer's fetch, drain
        waits out its 30 s timeout (a pod's whole grace period), and nothing needs it: state events
        are acked only after their status PATCH, so unacked ones are simply redelivered."""
        nc, self.nc = self.nc, None
        if nc is None:
            return
        try:
            await nc.flush(timeout=2)
        except Exception as e:  # noqa: BLE001 - closing anyway
            log.warning("NATS flush on close failed: %s", e)
        try:
            await nc.close()
        except OSError as e:  # disconnected: nats-py writes what it buffered to the dead socket
            log.warning("NATS close: %s; what was buffered while disconnected is lost", e)


def with_credentials(url: str, user: str, password: str) -> str:
    """``url`` with ``user:password@`` (replacing any there), how nats-py takes a configured user."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    auth = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password, safe='')}"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{auth}@{host}"))


def without_credentials(url: str) -> str:
    """``nats://user:password@host:port`` -> ``nats://host:port``: what task pods and logs may see."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
