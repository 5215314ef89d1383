"""The connection pool to the upstream API and the headers that cross it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from broker.config import UpstreamSettings

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
        "TE", "Trailer", "Transfer-Encoding", "Upgrade",
    )
)  # fmt: skip
BROKER_HEADER_PREFIX = "x-broker-"
FORWARDED_HEADERS = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded")


class BodyTooLarge(Exception):
    pass


class Upstream:
    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self._base = settings.url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        dropped = HOP_BY_HOP | {"host", *FORWARDED_HEADERS}
        self._dropped = dropped if settings.forward_authorization else dropped | {"authorization"}
        """Request headers never passed on (lower case); names starting with
        `x-broker-` neither: the broker sets its own."""

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("upstream pool used before start()")
        return self._session

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.settings.max_connections, keepalive_timeout=30, enable_cleanup_closed=True
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.settings.connect_timeout_seconds,
            sock_read=self.settings.read_timeout_seconds,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def url_for(self, raw_target: str) -> URL:
        """The upstream URL carrying the client's raw path and query byte for byte."""
        return URL(self._base + raw_target, encoded=True)

    def request_headers(self, request: web.Request, employee: str, decision_id: str, inspect: bool) -> CIMultiDict[str]:
        source = request.headers
        connection = source.getall("Connection", ())
        drop = self._dropped.union(_listed(connection)) if connection else self._dropped
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in source.items():
            lower = name.lower()
            if lower not in drop and not lower.startswith(BROKER_HEADER_PREFIX):
                headers.add(name, value)
        if inspect:
            headers["Accept-Encoding"] = "identity"
        headers["X-Forwarded-For"] = request.remote or ""
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = request.host
        headers["X-Broker-Employee"] = employee
        headers["X-Broker-Decision"] = decision_id
        return headers


def response_headers(upstream: CIMultiDictProxy[str], *, keep_length: bool) -> CIMultiDict[str]:
    connection = upstream.getall("Connection", ())
    drop = HOP_BY_HOP if keep_length else _HOP_BY_HOP_AND_LENGTH
    if connection:
        drop = drop.union(_listed(connection))
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        if name.lower() not in drop:
            headers.add(name, value)
    return headers


_HOP_BY_HOP_AND_LENGTH = HOP_BY_HOP | {"content-length"}


def _listed(connection: list[str]) -> set[str]:
    """The header names a Connection header lists (hop-by-hop too, RFC 9110 7.6.1)."""
    return {t.strip().lower() for v in connection for t in v.split(",")}


async def limited_body(content: aiohttp.StreamReader, limit: int) -> AsyncIterator[bytes]:
    """The request body streamed through, refused once it passes `limit` bytes."""
    seen = 0
    async for chunk in content.iter_any():
        seen += len(chunk)
        if seen > limit:
            raise BodyTooLarge
        yield chunk


async def read_bounded(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The whole upstream body, or None when it is larger than `limit`."""
    declared = response.content_length
    if declared is not None and declared <= limit:
        return await response.read()  # the parser stops at Content-Length: already bounded
    chunks, size = [], 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
