"""Small JetStream round trip against the local nats-server: a smoke check of NATS auth and streams."""

from __future__ import annotations

import nats
from nats.js.api import StreamConfig


async def jetstream_round_trip(url: str, token: str, stream: str, subject: str, payload: bytes) -> bytes:
    """Create ``stream`` on ``subject``, publish ``payload``, read it back with a durable pull consumer."""
    nc = await nats.connect(url, token=token, connect_timeout=5, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=stream, subjects=[subject]))
        ack = await js.publish(subject, payload, headers={"Nats-Msg-Id": f"{stream}-1"})
        if ack.stream != stream:
            raise RuntimeError(f"published into stream {ack.stream}, expected {stream}")
        sub = await js.pull_subscribe(subject, durable=f"{stream.lower()}-reader")
        (msg,) = await sub.fetch(1, timeout=5)
        await msg.ack()
        return msg.data
    finally:
        await nc.close()
