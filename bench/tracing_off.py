"""What tracing and request-naming logs add to a call when tracing is off (docs/observability.md).

With no ``OTEL_*`` variables, a realtime call crosses the tracing code only as tests of one
module attribute (``tracing.tracer is None``: the auth and tier middleware, the handler twice,
the proxy's routing) and two of the upstream call's ``span`` field, plus one
``ContextVar.set`` of its request id for the logs; the tracing middleware is not installed.
This times exactly those operations, a million times over, against the same function without
them (interleaved; the fastest run of each counts, the least disturbed by the rest of the
machine), and the log filter that names every record (paid per log line, not per call).

Usage: python bench/tracing_off.py [--n N] [--repeat R]
"""

from __future__ import annotations

import argparse
import logging
import timeit

from app import logs, tracing

# The tests a realtime call makes with tracing off: middleware (2), handler (2), routing (1),
# the answer's client span field (2: the whole answer, and ``_route``'s check).
MODULE_TESTS = 5
FIELD_TESTS = 2


class Opened:
    __slots__ = ("span",)

    def __init__(self) -> None:
        self.span = None


def off_path(opened: Opened) -> None:
    """One call's added work when tracing is off."""
    logs.request_id.set("chatcmpl-0123456789abcdef0123456789abcdef")
    for _ in range(MODULE_TESTS):
        if tracing.tracer is not None:
            raise AssertionError("tracing is on")
    for _ in range(FIELD_TESTS):
        if opened.span is not None:
            raise AssertionError("a span")


def baseline(opened: Opened) -> None:
    """The same loops without the tests (what the loop itself costs)."""
    for _ in range(MODULE_TESTS):
        pass
    for _ in range(FIELD_TESTS):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    assert tracing.tracer is None
    opened = Opened()
    added: list[float] = []
    loop: list[float] = []
    for _ in range(args.repeat):  # interleaved, as the machine's speed drifts
        added.append(timeit.timeit(lambda: off_path(opened), number=args.n) / args.n * 1e9)
        loop.append(timeit.timeit(lambda: baseline(opened), number=args.n) / args.n * 1e9)
    # The fastest run of each is the least disturbed by the rest of the machine.
    print(
        f"added per realtime call, tracing off: {min(added) - min(loop):.0f} ns"
        f" (fastest of {args.repeat} x {args.n:,}: {min(added):.0f} ns with the tests,"
        f" {min(loop):.0f} ns without)"
    )
    record = logging.LogRecord("tiergate", logging.INFO, __file__, 1, "hello", None, None)
    fields = logs.RequestFields()
    lines = timeit.repeat(lambda: fields.filter(record), number=args.n, repeat=args.repeat)
    print(f"request fields per log line, tracing off: {min(lines) / args.n * 1e9:.0f} ns")


if __name__ == "__main__":
    main()
