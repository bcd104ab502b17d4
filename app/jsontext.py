"""Compact JSON text for hot paths: orjson, falling back on the standard library.

``dumpb(obj)`` is ``json.dumps(obj, separators=(",", ":")).encode()`` about ten times
faster (a chat completion answer: 8.5 us -> 0.4 us), except that characters outside ASCII
are written as UTF-8 rather than ``\\uXXXX`` escapes (the same JSON value). What orjson
refuses (integers past 64 bits, say) gets the standard library's text, or its error.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS  # as json.dumps: {1: "a"} is {"1":"a"}


def dumpb(obj: Any) -> bytes:
    """Compact JSON of ``obj``, as UTF-8 bytes."""
    try:
        return orjson.dumps(obj, option=_OPTIONS)
    except TypeError:
        return json.dumps(obj, separators=(",", ":")).encode()


def dumps(obj: Any) -> str:
    """Compact JSON text of ``obj``."""
    return dumpb(obj).decode()
