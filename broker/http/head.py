"""A held answer framed and written by the broker itself: status line, headers and body in
one write.

A held answer is whole before anything is written (it has been counted), so its length
is known and the broker frames it with a Content-Length it computed. aiohttp's
web.Response builds the same bytes through a header multidict, a payload writer and
several coroutine layers; on the broker's own path that was about a tenth of its time per
forwarded request (perf, side by side with the bare proxy). This builds them in one
step. Anything outside the common case (a HEAD request, a status that carries no body,
an HTTP version other than 1.0 and 1.1, a header value with a line break in it) is left
to web.Response, which handles it as before: `write_held_answer` returns None.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

_NOT_CONTROL = bytes(b for b in range(256) if b == 0x09 or 0x20 <= b != 0x7F)
"""Every byte a header may hold but CR and LF: deleting them leaves the line ends and
whatever control character does not belong."""
_LINE_ENDS = [b"\r\n" * (lines + 1) for lines in range(512)]
"""What deleting _NOT_CONTROL must leave of a head of n lines (+1: the blank line)."""
_REASONS: dict[int, str] = {status.value: status.phrase for status in HTTPStatus}
WRITTEN, UNSENT, CUT = "written", "unsent", "cut"
"""What became of an answer `write_held_answer` wrote."""
_BODILESS = frozenset({204, 205, 304})
"""Statuses whose answer HTTP gives no body: web.Response frames these."""


class _DateCache:
    """The Date header's value, formatted once a second (as aiohttp does)."""

    def __init__(self) -> None:
        self.second = -1
        self.value = ""

    def now(self) -> str:
        second = int(time.time())
        if second != self.second:
            self.value = formatdate(second, usegmt=True)
            self.second = second
        return self.value


_DATE = _DateCache()


def answer_head(
    version: tuple[int, int], status: int, headers: Iterable[tuple[str, str]], length: int, keep_alive: bool
) -> bytes | None:
    """The status line and header block of an answer of `length` bytes, or None when a
    header would break the framing (a CR, LF or other control character inside a name
    or value).

    Adds what aiohttp's web.Response adds when the answer lacks it: Date (RFC 9110
    6.6.1: a proxy forwarding an answer without one adds it), Server, Content-Type for a
    body, and Connection when the connection's fate differs from the version's default.
    Header bytes are the upstream's own: they were decoded with surrogateescape."""
    lines: list[str] = [f"HTTP/{version[0]}.{version[1]} {status} {_REASONS.get(status, '')}\r\n"]
    dated = served = typed = False
    for name, value in headers:
        lines.append(f"{name}: {value}\r\n")
        lower = name.lower()
        if lower == "date":
            dated = True
        elif lower == "server":
            served = True
        elif lower == "content-type":
            typed = True
    if not dated:
        lines.append(f"Date: {_DATE.now()}\r\n")
    if not served:
        lines.append(f"Server: {SERVER_SOFTWARE}\r\n")
    if not typed and length:
        lines.append("Content-Type: application/octet-stream\r\n")
    lines.append(f"Content-Length: {length}\r\n")
    if version == (1, 1) and not keep_alive:
        lines.append("Connection: close\r\n")
    elif version == (1, 0) and keep_alive:
        lines.append("Connection: keep-alive\r\n")
    head = ("".join(lines) + "\r\n").encode("utf-8", "surrogateescape")
    # its control characters, in one pass: each line ends with CR LF, and there must be
    # no other (a CR or LF inside a name or value splits the answer; aiohttp refuses any
    # control character but tab, and so does this)
    ends = _LINE_ENDS[len(lines)] if len(lines) < len(_LINE_ENDS) else b"\r\n" * (len(lines) + 1)
    if head.translate(None, _NOT_CONTROL) != ends:
        return None
    return head


async def write_held_answer(
    request: web.BaseRequest, status: int, headers: Iterable[tuple[str, str]], body: bytes, keep_alive: bool
) -> str | None:
    """Write a whole answer on the request's connection and wait until the connection
    has taken it (a client that does not read holds it, and with it the held-answers
    budget). `keep_alive`: the caller's decision that the connection stays open (the
    client asked for it and the broker is not draining).

    WRITTEN; UNSENT: the client had hung up, nothing was written; CUT: it hung up while
    the broker waited for it to read (it may have read part). None: not the common case,
    nothing written; the caller frames the answer with web.Response."""
    if status < 200 or status in _BODILESS or request.method == "HEAD":
        return None
    version = request.version
    if version not in ((1, 1), (1, 0)):
        return None
    head = answer_head((version[0], version[1]), status, headers, len(body), keep_alive)
    if head is None:
        return None
    transport = request.transport
    if transport is None or transport.is_closing():
        return UNSENT
    if len(body) <= 65_536:
        transport.write(head + body)
    else:  # no copy of a large body: one vectored write
        transport.writelines((head, body))
    # aiohttp counts what its writer sent to know that an answer has started: were the
    # handler to fail after this, it must close the connection rather than append a 500
    # that a client reusing the connection would read as its next request's answer
    request.writer.output_size += len(head) + len(body)
    try:
        await request.writer.drain()
    except ConnectionError:
        return CUT
    return WRITTEN
