"""What the proxy handler returns to aiohttp for an answer it wrote on the connection itself.

Kept out of the compiled modules on purpose: it subclasses aiohttp's (interpreted)
StreamResponse, which a compiled class cannot do.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter


class WrittenResponse(web.StreamResponse):
    """An answer already on the wire, headers and body in one write (broker/http/head.py).

    aiohttp still finishes every response a handler returns: preparing and finishing
    this one do nothing, and `keep_alive` tells it whether the connection stays open."""

    def __init__(self, status: int, keep_alive: bool) -> None:
        super().__init__(status=status)
        self._written_keep_alive = keep_alive

    @property
    def prepared(self) -> bool:
        return True

    @property
    def keep_alive(self) -> bool:
        return self._written_keep_alive

    def force_close(self) -> None:
        self._written_keep_alive = False

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None
