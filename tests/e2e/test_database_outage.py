"""A database outage: clear 503s while it is down, then everything heals by itself."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from app.dburl import DatabaseURL
from app.embedded_pg import EmbeddedPostgres
from tests.support.servers import Gateway, create_key, start_gateway

HEAL_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def own_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EmbeddedPostgres, DatabaseURL]]:
    """A server of this module's own, so stopping it disturbs no other test."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("outage-home"))
    url = server.start()
    yield server, url
    server.start()  # leave it running for the final stop
    server.stop()


@pytest.fixture(scope="module")
def outage_gateway(
    own_server: tuple[EmbeddedPostgres, DatabaseURL],
    gateway_config: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Gateway]:
    _, url = own_server
    gw = start_gateway(
        database_url=url.libpq(),
        config=gateway_config,
        log=tmp_path_factory.mktemp("logs") / "gw-outage.log",
    )
    yield gw
    gw.process.stop()


def test_outage_gives_503_then_heals(
    own_server: tuple[EmbeddedPostgres, DatabaseURL], outage_gateway: Gateway
):
    server, url = own_server
    client = openai.OpenAI(
        base_url=outage_gateway.api, api_key=create_key(url.libpq(), "o"), max_retries=0, timeout=30
    )
    before = client.responses.create(model="mock", input="before", background=True)
    assert client.responses.create(model="mock", input="ok", service_tier="flex").output_text

    server.stop()
    try:
        ready = httpx.get(outage_gateway.url + "/readyz", timeout=10)
        assert ready.status_code == 503
        assert ready.json()["error"]["code"] == "database_unavailable"
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as info:
            client.responses.create(model="mock", input="while down")
        assert info.value.status_code == 503
        assert info.value.code == "service_unavailable"
        with pytest.raises(openai.InternalServerError):
            client.responses.retrieve(before.id)
        assert time.monotonic() - started < 25  # clear answers, not hangs
    finally:
        server.start()

    deadline = time.monotonic() + HEAL_TIMEOUT_S
    while httpx.get(outage_gateway.url + "/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "readyz never recovered"
        time.sleep(0.1)
    healed = client.with_options(max_retries=3)  # a stale pooled connection may cost one 503
    assert healed.responses.create(model="mock", input="after").output_text == "echo: after"
    # The in-process worker and the LISTEN hub came back too: a blocking flex call completes.
    flex = healed.responses.create(model="mock", input="flex after", service_tier="flex")
    assert flex.output_text == "echo: flex after"
    assert healed.responses.retrieve(before.id).status == "completed"  # nothing lost
