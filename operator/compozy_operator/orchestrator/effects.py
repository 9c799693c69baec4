"""Side effects the orchestrator owes, retried until they are known done.

Kopf drops an ``on.event`` handler that raises, so nothing the orchestrator owes may depend on a
handler succeeding the first time: a failed effect is retried here, with back-off, for as long as
its failure is *transient* (the API server or NATS away, a timeout). A failure that would repeat
forever (a bug, a value that can never fit) is not retried: the caller turns it into an end with a
message instead.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

import urllib3.exceptions
from kubernetes.client.exceptions import ApiException
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError

log = logging.getLogger(__name__)
INITIAL_DELAY = 0.5
MAX_DELAY = 15.0
PERMANENT_HTTP = frozenset({400, 403, 404, 405, 410, 413, 415, 422})


def transient(e: BaseException) -> bool:
    """True for failures that go away by themselves: retry them. Everything else is permanent."""
    if isinstance(e, ApiException):
        return e.status not in PERMANENT_HTTP
    if isinstance(e, MaxPayloadError):
        return False
    return isinstance(e, NatsError | TimeoutError | ConnectionError | OSError | urllib3.exceptions.HTTPError)


def backoff(failures: int) -> float:
    """Delay before retry number ``failures`` (1-based): 0.5 s doubling to 15 s."""
    return min(MAX_DELAY, INITIAL_DELAY * 2 ** max(0, failures - 1))


def describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, ApiException):
        text = f"{e.status} {e.reason}"
    return f"{type(e).__name__}: {text}"[:500] if text else type(e).__name__


class Effects:
    """Background retries of effects that failed transiently, one per key (a newer one replaces it)."""

    def __init__(self) -> None:
        self.pending: dict[Hashable, asyncio.Task[None]] = {}

    async def run(self, key: Hashable, fn: Callable[[], Awaitable[None]], what: str) -> None:
        """Do ``fn`` now; if it fails transiently, keep retrying it in the background until it is done."""
        old = self.pending.pop(key, None)
        if old is not None:
            old.cancel()
        try:
            await fn()
        except Exception as e:  # noqa: BLE001 - classified below
            if not transient(e):
                log.exception("%s failed and will not be retried", what)
                return
            log.warning("%s failed (%s); retrying", what, describe(e))
            self.pending[key] = asyncio.create_task(self._retry(key, fn, what))

    async def _retry(self, key: Hashable, fn: Callable[[], Awaitable[None]], what: str) -> None:
        failures = 1
        try:
            while True:
                await asyncio.sleep(backoff(failures))
                try:
                    await fn()
                    log.info("%s done after %d retries", what, failures)
                    return
                except Exception as e:  # noqa: BLE001
                    if not transient(e):
                        log.exception("%s failed and will not be retried", what)
                        return
                    failures += 1
                    if failures in (2, 10) or failures % 50 == 0:  # say it now and then, not every time
                        log.warning("%s still failing after %d tries (%s)", what, failures, describe(e))
        finally:
            if self.pending.get(key) is asyncio.current_task():
                del self.pending[key]

    async def close(self) -> None:
        tasks = list(self.pending.values())
        self.pending.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
