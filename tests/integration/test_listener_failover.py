"""A LISTEN connection whose primary hangs (frozen, or gone from the network: its socket stays
open and silent) finds the promoted standby by itself and hears notifications there."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from app.store.dburl import DatabaseURL
from app.store.listener import HEALTH_CHECK_S, PING_TIMEOUT_S, Listener
from app.testing.replication import ReplicatedPair, replicated_pair

CHANNEL = "tiergate_failover_probe"
CONNECT_TIMEOUT_S = 2


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[ReplicatedPair]:
    with replicated_pair(tmp_path / "pg") as servers:
        yield servers


async def test_a_frozen_primary_is_left_for_the_promoted_standby(pair: ReplicatedPair):
    url = pair.url
    url = DatabaseURL.parse(
        dataclasses.replace(
            url, params=(*url.params, ("connect_timeout", str(CONNECT_TIMEOUT_S)))
        ).libpq()
    )
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = Listener(url, [CHANNEL], lambda _channel, payload: heard.put_nowait(payload))
    listener.start()
    try:
        await asyncio.wait_for(listener.connected.wait(), 30)
        pair.primary.freeze()
        frozen = time.monotonic()
        pair.standby.promote()
        # Noticed at the next health check (a ping that gets no answer), then the frozen host
        # costs one connect_timeout before the new primary answers.
        bound = HEALTH_CHECK_S + PING_TIMEOUT_S + CONNECT_TIMEOUT_S + 5
        while listener.connections < 2:
            assert time.monotonic() - frozen < bound, "the LISTEN connection never moved"
            await asyncio.sleep(0.1)
        assert listener.connected.is_set()
        with psycopg.connect(url.libpq(), autocommit=True) as conn:  # the new primary
            assert conn.info.port == pair.standby.port
            conn.execute(f"NOTIFY {CHANNEL}, 'on the new primary'")
        assert await asyncio.wait_for(heard.get(), 5) == "on the new primary"
    finally:
        await listener.stop()
        pair.primary.kill()
