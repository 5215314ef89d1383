"""Line numbers in a policy TOML file: tomllib gives values, not where they were written,
and every problem is reported with its file and line."""

from __future__ import annotations

import re
from functools import cache


@cache
def _header(name: str) -> re.Pattern[bytes]:
    return re.compile(rb"\s*\[\[\s*" + re.escape(name.encode()) + rb"\s*\]\]\s*(#.*)?\Z")


def array_table_lines(raw: bytes, name: str) -> list[int]:
    """The line of each `[[name]]` header, in order: entry i of the array starts there."""
    header = _header(name)
    return [n for n, line in enumerate(raw.split(b"\n"), start=1) if header.match(line.rstrip(b"\r"))]


def line_of(raw: bytes, needle: bytes, missing: int = 0) -> int:
    """The line of the first `needle`, or `missing` when it is not there."""
    index = raw.find(needle)
    return raw[:index].count(b"\n") + 1 if index >= 0 else missing
