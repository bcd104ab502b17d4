"""What the Responses <-> chat translation (api: chat) costs per call, in microseconds.

Pure CPU, no I/O: the acceptance check, the request translation, a non-streamed answer (chat
JSON in, Response JSON out, as ``chat_api.translated_reply`` does it), a streamed answer per
chat chunk, and the pass-through path's extra work for ``api: responses`` deployments.

Usage: python bench/translate.py [--rounds 5000]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

from app.mock.payloads import chat_only_payload, chat_only_sse, chat_text
from app.openai.chat_answer import response_from_chat
from app.openai.chat_request import chat_request
from app.openai.chat_stream import StreamTranslator, chat_events
from app.openai.chat_stream import sse as sse_frames
from app.openai.validation import check_translatable
from app.settings import HealthLimits, ModelConfig
from app.upstream.client import prepare_body
from app.upstream.deployment import Deployment
from app.upstream.health import Health

TOOL = {
    "type": "function",
    "name": "weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
REQUEST: dict[str, Any] = {
    "model": "llama",
    "instructions": "You are terse.",
    "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "What is the weather?"}]},
        {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
        {"role": "user", "content": "and tomorrow? " + "word " * 60},
    ],
    "tools": [TOOL],
    "max_output_tokens": 256,
    "temperature": 0.2,
}


def per_call_us(fn: Callable[[], object], rounds: int, repeats: int = 5) -> float:
    """The best of ``repeats`` runs (the machine is shared: the best is the least disturbed)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(rounds):
            fn()
        best = min(best, (time.perf_counter() - started) / rounds * 1e6)
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5_000)
    rounds = parser.parse_args().rounds
    chat = chat_request(REQUEST)
    answer = chat_only_payload({**chat, "tools": None}, chat_text(chat), legacy=False)
    answer["choices"][0]["message"]["content"] = "word " * 200  # a 200-word answer
    raw_answer = json.dumps(answer).encode()
    frames = chat_only_sse({**chat, "tools": None, "stream": True}, "x " * 200, legacy=False)

    def reply() -> bytes:
        return json.dumps(response_from_chat(REQUEST, json.loads(raw_answer))).encode()

    def stream() -> None:
        translator = StreamTranslator({**REQUEST, "stream": True})
        out = [sse_frames(translator.start())]
        for frame in frames:
            for item in chat_events(frame):
                events = translator.finish() if item is None else translator.feed(item)
                out.append(sse_frames(events))

    model = ModelConfig(name="m", upstream="http://127.0.0.1:1/v1")
    plain = Deployment(model=model, config=model.deployments[0], health=Health(HealthLimits()))
    body = {"model": "m", "input": "hi", "service_tier": "flex"}

    def passthrough() -> object:
        return prepare_body(plain, body, "/v1/responses")

    def accept() -> None:
        check_translatable(REQUEST)

    rows = [
        ("acceptance check (check_translatable)", per_call_us(accept, rounds)),
        ("request -> chat body", per_call_us(lambda: chat_request(REQUEST), rounds)),
        ("200-word answer -> Response JSON", per_call_us(reply, rounds)),
        (f"stream of {len(frames)} chunks -> events", per_call_us(stream, max(1, rounds // 20))),
        ("api: responses prepare_body (pass-through)", per_call_us(passthrough, rounds)),
    ]  # fmt: skip
    for name, us in rows:
        print(f"{name:48s} {us:8.1f} us")
    print(f"{'per streamed chunk':48s} {rows[3][1] / len(frames):8.1f} us")


if __name__ == "__main__":
    main()
