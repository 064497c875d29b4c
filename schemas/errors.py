"""How a mistake of the user's is raised and worded, spelled once for every package.

* :class:`UserError` is the base of every error a person can fix (a bad flag, a broken file, an unsafe path): the
  CLI edge (``phi3v_data.cli.errors``) shows its message without a traceback and exits with its ``exit_code``.
* :func:`validation_lines` renders a pydantic ``ValidationError`` as ``conversations[0].user: required field is
  missing``: one line per error, the field path in the record's own notation, pydantic's jargon made plain.
* :func:`json_error` words a JSON syntax error: ``invalid JSON: Expecting value (column 3)``; :func:`json_file_error`
  puts the file and line in front for a whole file read at once; :func:`utf8_error` words bytes that are not text.

Lives in ``schemas`` (the bottom layer) so converters, ``phi3v_data`` and ``phi3v_train`` all reach it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pydantic import ValidationError

__all__ = [
    "UserError", "error_message", "first_validation_line", "json_error", "json_file_error", "render_loc",
    "shown_value", "utf8_error", "validation_lines", "validation_problems",
]


class UserError(Exception):
    """A mistake of the user's, shown as its message alone (no traceback); ``exit_code`` 1, or 2 for usage."""

    exit_code: int = 1


def render_loc(loc: Sequence[Any]) -> str:
    """A pydantic ``loc`` as a field path: ``('conversations', 0, 'images', 2)`` → ``conversations[0].images[2]``."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def shown_value(value: Any, limit: int = 60) -> str:
    """What the user gave, short: JSON spelling (``"poem"``, ``7``, ``null``), ``inf``/``nan`` as flags spell them,
    a container by its kind (``an array``, ``an object``), never its contents."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    text = repr(value) if isinstance(value, float) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def error_message(error: Mapping[str, Any], *, show: Callable[[Any], str] = shown_value) -> str:
    """One pydantic error (an item of ``exc.errors()``) in plain English, with what was given when that helps."""
    kind = error["type"]
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "is not a known field (misspelt?)"
    message = str(error["msg"]).removeprefix("Value error, ")
    given = error.get("input")
    # a container is named only where its kind is the mistake ("should be a valid string (got an array)"); a length
    # or value error of one already says what is wrong, and value errors word their own input
    if kind != "value_error" and "input" in error and (kind.endswith("_type") or not isinstance(given, (dict, list))):
        message += f" (got {show(given)})"
    return message


def validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """Every error of ``exc`` as (field path, message); the path is ``""`` for the value as a whole."""
    return [(render_loc(error["loc"]), error_message(error)) for error in exc.errors(include_url=False)]


def validation_lines(exc: ValidationError) -> list[str]:
    """Every error of ``exc`` as one line ``field: message`` (``(record): …`` when the whole value is wrong)."""
    return [f"{field or '(record)'}: {message}" for field, message in validation_problems(exc)]


def first_validation_line(exc: ValidationError) -> str:
    """The first line of :func:`validation_lines`, for messages that report one problem per item."""
    return validation_lines(exc)[0]


def json_error(exc: ValueError | RecursionError) -> str:
    """Why text is not JSON, as ``invalid JSON: <reason> (column N)``: a syntax error, nesting too deep for the
    parser, or an integer longer than Python reads (the ``ValueError`` of ``json.loads`` besides a syntax error)."""
    if isinstance(exc, json.JSONDecodeError):
        return f"invalid JSON: {exc.msg} (column {exc.colno})"
    if isinstance(exc, RecursionError):
        return "invalid JSON: nested too deeply"
    return f"invalid JSON: {str(exc).split(';')[0]}"


def utf8_error(exc: UnicodeDecodeError) -> str:
    """Why a line is not text, worded alike by every reader: ``not valid UTF-8 at byte 8 (invalid start byte); …``."""
    return f"not valid UTF-8 at byte {exc.start} ({exc.reason}); save the file as UTF-8"


def json_file_error(path: str | os.PathLike[str], exc: ValueError | RecursionError) -> str:
    """:func:`json_error` of a file read whole, led by where: ``config.json:3: invalid JSON: … (column 5)``."""
    line = f":{exc.lineno}" if isinstance(exc, json.JSONDecodeError) else ""
    return f"{os.fspath(path)}{line}: {json_error(exc)}"
