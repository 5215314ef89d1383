"""Turning a raw request target into the path the upstream will act on.

The broker decides on the decoded, normalised path but forwards the raw bytes
unchanged, so anything that two parsers could read differently is refused instead of
guessed: encoded slashes, backslashes and percent signs (decoded twice downstream),
dot segments, empty segments, `;` parameters (Java servers strip them), control
characters, broken percent escapes. Each refusal says what was wrong.
"""

from __future__ import annotations

import re
from urllib.parse import unquote_to_bytes

_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_FORBIDDEN_DECODED = {
    b"/": "an encoded slash (%2F)",
    b"\\": "a backslash",
    b"%": "an encoded percent sign (%25)",
    b";": "a ';' path parameter",
}


class PathError(ValueError):
    """The path is refused; the message is written for the caller."""


def split_target(raw: str) -> tuple[str, str]:
    """(raw path, raw query) of an origin-form request target."""
    if not raw.startswith("/"):
        raise PathError("the request target must be a path starting with '/'")
    if "#" in raw:
        raise PathError("the request target must not contain a fragment ('#')")
    path, _, query = raw.partition("?")
    return path, query


def path_segments(raw_path: str, *, keep_trailing_slash: bool) -> tuple[str, ...]:
    """Decoded segments of `raw_path`, or PathError naming what is ambiguous."""
    if raw_path == "/":
        return ()
    body = raw_path[1:]
    if body.endswith("/") and not keep_trailing_slash:
        body = body[:-1]
    return tuple(_segment(part) for part in body.split("/"))


_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~!$&'()*+,=:@")


def _segment(raw: str) -> str:
    if raw and raw not in (".", "..") and _PLAIN.issuperset(raw):
        return raw  # nothing to decode or refuse: the common case, kept cheap
    if raw == "":
        raise PathError("the path has an empty segment ('//' or a trailing '/')")
    if "\\" in raw or ";" in raw:
        raise PathError(f"path segment {raw!r} contains {'a backslash' if chr(92) in raw else 'a ; parameter'}")
    if _ESCAPE.search(raw):
        raise PathError(f"path segment {raw!r} has a broken percent escape")
    decoded = unquote_to_bytes(raw)
    for needle, what in _FORBIDDEN_DECODED.items():
        if needle in decoded and "%" in raw:
            raise PathError(f"path segment {raw!r} contains {what}")
    try:
        text = decoded.decode("utf-8")
    except UnicodeDecodeError:
        raise PathError(f"path segment {raw!r} is not valid UTF-8 once decoded") from None
    if text in (".", ".."):
        raise PathError("the path has a '.' or '..' segment")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise PathError(f"path segment {raw!r} contains a control character")
    return text
