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


_KEY = re.compile(rb"\s*([A-Za-z0-9_-]+|\"[^\"]*\")\s*=")
_ANY_HEADER = re.compile(rb"\s*\[")


def key_line(raw: bytes, table: str, key: str) -> int:
    """The line where `key` is set in the `[table]` section; that section's header when
    the key is not written there (a default, or a problem with the table itself)."""
    start = table_line(raw, table)
    lines = raw.split(b"\n")
    if start == 1 and not _header(table, 1).match(lines[0].rstrip(b"\r")):
        return 1
    for number in range(start, len(lines)):  # `lines[number]` is line number + 1
        line = lines[number]
        if _ANY_HEADER.match(line):
            break
        found = _KEY.match(line)
        if found and found[1].strip(b'"') == key.encode():
            return number + 1
    return start
