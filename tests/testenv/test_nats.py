"""JetStream through the real nats-server, with token auth on."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest

from compozy_operator.bus import Bus
from compozy_operator.testenv import DevEnvironment
from compozy_operator.testenv.natsclient import jetstream_round_trip
from compozy_operator.testenv.natsserver import NatsServer


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


def test_bus_reconnects_after_a_server_restart_and_fails_fast_on_a_bad_certificate(
        devenv: DevEnvironment, tmp_path: Path) -> None:
    """The operator's and the task pods' client: once connected it rides out a restart; a TLS
    server whose CA it does not trust is a clear error at once, not a hang."""
    server = NatsServer(devenv.bindir, tmp_path / "nats", tls=True).start()
    try:
        assert server.tls is not None

        async def scenario() -> tuple[str, bytes]:
            untrusted = Bus(server.url, server.token, "untrusted")
            try:
                await asyncio.wait_for(untrusted.connect(attempts=1), 20)
                refused = "connected"
            except ConnectionError as e:
                refused = str(e)
            bus = Bus(server.url, server.token, "restart-probe", server.tls.ca_cert.read_text())
            await bus.connect(attempts=1)
            assert bus.nc is not None
            sub = await bus.nc.subscribe("probe.after")
            await asyncio.to_thread(server.restart)
            deadline = asyncio.get_running_loop().time() + 20
            while not (bus.connected and bus.nc.stats["reconnects"]) and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.1)
            assert bus.nc.stats["reconnects"] == 1
            await bus.nc.publish("probe.after", b"still here")
            msg = await sub.next_msg(timeout=5)
            await bus.close()
            return refused, msg.data

        refused, data = asyncio.run(scenario())
        assert "CERTIFICATE_VERIFY_FAILED" in refused
        assert data == b"still here"
    finally:
        server.stop()
