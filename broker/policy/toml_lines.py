"""Line numbers in a policy TOML file: tomllib gives values, not where they were written,
and every problem is reported with its file and line."""

from __future__ import annotations

import re
from functools import cache


@cache
def _header(name: str, brackets: int = 2) -> re.Pattern[bytes]:
    opening, closing = rb"\[" * brackets, rb"\]" * brackets
    return re.compile(rb"\s*" + opening + rb"\s*" + re.escape(name.encode()) + rb"\s*" + closing + rb"\s*(#.*)?\Z")


def array_table_lines(raw: bytes, name: str) -> list[int]:
    """The line of each `[[name]]` header, in order: entry i of the array starts there."""
    header = _header(name)
    return [n for n, line in enumerate(raw.split(b"\n"), start=1) if header.match(line.rstrip(b"\r"))]


def table_line(raw: bytes, name: str) -> int:
    """The line of the `[name]` header (not a mention in a comment); 1 when there is none,
    so a problem always points into the file."""
    header = _header(name, 1)
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if header.match(line.rstrip(b"\r")):
            return number
    return 1


def line_of(raw: bytes, needle: bytes, missing: int = 0) -> int:
    """The line of the first `needle`, or `missing` when it is not there."""
    index = raw.find(needle)
    return raw[:index].count(b"\n") + 1 if index >= 0 else missing
