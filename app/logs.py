"""Log lines that name the request they were written for (docs/observability.md, "Logs").

While a request is handled (the gateway, from the moment its id is assigned; a worker, while
it runs one attempt or batch line), :data:`request_id` holds its ``x-request-id``; with
tracing on, the current span gives the trace id (or :data:`trace_id`, once the attempt's span
has ended). :class:`RequestFields` puts both on every
record, whichever logger wrote it, and the two formats show them: the text format after the
message (``request_id=... trace_id=...``), the JSON format as fields of one object per line.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import sys

from app import tracing

# The ``x-request-id`` of the request this task works for (None outside any).
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tiergate_request_id", default=None
)

# The trace of the request this task works for, kept after its span has ended (a worker's
# lines about the attempt it has just made: its retry, its result's store).
trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "tiergate_trace_id", default=None
)

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-5s %(name)s: %(message)s%(request_fields)s"


class RequestFields(logging.Filter):
    """Adds ``request_id`` and ``trace_id`` (None when unknown) to every record, and the text
    format's ``request_fields`` suffix."""

    def filter(self, record: logging.LogRecord) -> bool:
        rid = request_id.get()
        trace = tracing.trace_id() if tracing.tracer is not None else None
        if trace is None:
            trace = trace_id.get()
        record.request_id = rid
        record.trace_id = trace
        suffix = ""
        if rid is not None:
            suffix += f" request_id={rid}"
        if trace is not None:
            suffix += f" trace_id={trace}"
        record.request_fields = suffix
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id, trace_id, and
    the exception's text when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
            "trace_id": getattr(record, "trace_id", None),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, ensure_ascii=False, default=str)


def handler(log_format: str = "text") -> logging.Handler:
    """The stderr handler of a process, in ``log_format`` (``text`` or ``json``)."""
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r}: one of {', '.join(FORMATS)}")
    out = logging.StreamHandler(sys.stderr)
    out.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    out.addFilter(RequestFields())
    return out
