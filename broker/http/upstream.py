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
        headers = _without_hop_by_hop(request.headers)
        for name in list(headers):
            lower = name.lower()
            if lower.startswith(BROKER_HEADER_PREFIX) or lower in FORWARDED_HEADERS or lower == "host":
                del headers[name]
        if not self.settings.forward_authorization:
            headers.popall("Authorization", None)
        if inspect:
            headers["Accept-Encoding"] = "identity"
        headers["X-Forwarded-For"] = request.remote or ""
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = request.host
        headers["X-Broker-Employee"] = employee
        headers["X-Broker-Decision"] = decision_id
        return headers


def response_headers(upstream: CIMultiDictProxy[str], *, keep_length: bool) -> CIMultiDict[str]:
    headers = _without_hop_by_hop(upstream)
    if not keep_length:
        headers.popall("Content-Length", None)
    return headers


def _without_hop_by_hop(source: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    connection = source.getall("Connection", ())
    drop = HOP_BY_HOP.union(t.strip().lower() for v in connection for t in v.split(",")) if connection else HOP_BY_HOP
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in source.items():
        if name.lower() not in drop:
            headers.add(name, value)
    return headers


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
