"""The YAML config file, read so that every error names its line."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

Loc = tuple[str | int, ...]


class ConfigError(ValueError):
    """A bad config value, located by its path in the file (and its line, once known)."""

    def __init__(self, message: str, loc: Loc = (), *, file: Path | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc
        self.file = file
        self.line: int | None = None

    def __str__(self) -> str:
        where = [str(self.file) if self.file else "config"]
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.loc:
            where.append(f"({dotted(self.loc)})")
        return f"{' '.join(where)}: {self.message}"


class ConfigErrors(ConfigError):
    """Several mistakes of one file, each with its own line (shown one per line, in order)."""

    def __init__(self, problems: list[ConfigError]) -> None:
        super().__init__(f"{len(problems)} mistakes")
        self.problems = problems

    def __str__(self) -> str:
        return f"{self.message}:" + "".join(f"\n  {problem}" for problem in self.problems)


def raise_all(problems: list[ConfigError]) -> None:
    """Raise the one problem, or all of them together; nothing when there is none."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ConfigErrors(problems)


def dotted(loc: Sequence[str | int]) -> str:
    """``("models", 0, "weight")`` as ``models[0].weight``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def from_validation(exc: ValidationError, prefix: Loc = ()) -> ConfigError:
    """The first problem pydantic found, located under ``prefix``."""
    return all_from_validation(exc, prefix)[0]


def all_from_validation(exc: ValidationError, prefix: Loc = ()) -> list[ConfigError]:
    """Every problem pydantic found, each located under ``prefix``."""
    return [
        ConfigError(str(error["msg"]).removeprefix("Value error, "), prefix + tuple(error["loc"]))
        for error in exc.errors()
    ]


def read(path: Path, apply: Any) -> None:
    """Parse ``path`` and hand the data to ``apply``; a ``ConfigError`` gets its line."""
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
        lines = _lines(yaml.compose(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        error = ConfigError(f"not valid YAML: {getattr(exc, 'problem', exc)}", file=path)
        error.line = mark.line + 1 if mark is not None else None
        raise error from None
    if not isinstance(data, dict):
        raise ConfigError("the file must hold a mapping (models:, limits:)", file=path)
    try:
        apply(data)
    except ConfigError as exc:
        problems = exc.problems if isinstance(exc, ConfigErrors) else [exc]
        for problem in [exc, *problems]:
            problem.file = path
            problem.line = _line_of(lines, problem.loc)
        problems.sort(key=lambda problem: problem.line or 0)
        raise


def _lines(node: yaml.Node | None, loc: Loc = ()) -> dict[Loc, int]:
    """The line (1-based) where each value of the document starts, by its path."""
    found: dict[Loc, int] = {}
    if node is None:
        return found
    found[loc] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            found.update(_lines(value, (*loc, str(key.value))))
            found[(*loc, str(key.value))] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found.update(_lines(item, (*loc, index)))
    return found


def _line_of(lines: dict[Loc, int], loc: Loc) -> int | None:
    """The line of ``loc``, or of its nearest enclosing value that is in the file."""
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None
