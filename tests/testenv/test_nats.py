"""JetStream through the real nats-server, with token auth on."""

from __future__ import annotations

import asyncio

import nats
import pytest

from compozy_operator.testenv.natsclient import jetstream_round_trip


def test_jetstream_publish_and_consume_with_token(nats_url: str, nats_token: str) -> None:
    data = asyncio.run(jetstream_round_trip(nats_url, nats_token, "TESTENV", "testenv.hello", b"payload-42"))
    assert data == b"payload-42"


@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_connecting_without_the_token_is_refused(nats_url: str, token: str | None) -> None:
    async def connect() -> None:
        nc = await nats.connect(nats_url, token=token, connect_timeout=2, max_reconnect_attempts=0,
                                allow_reconnect=False)
        await nc.close()

    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        asyncio.run(connect())
