"""The connection pool to the upstream API and the headers that cross it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping

import aiohttp
from aiohttp import hdrs, web
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


SKIP_AUTO_HEADERS = ("User-Agent", "Accept-Encoding", "Content-Type")
"""Headers aiohttp's client would make up when the client did not send them: the broker
passes on what the client sent (and sets Accept-Encoding itself where it counts records)."""


class BodyTooLarge(Exception):
    pass


class _ProxyRequest(aiohttp.ClientRequest):
    """aiohttp's client request with its automatic headers decided once, not per request.

    With `skip_auto_headers`, aiohttp builds a CIMultiDict of the skipped names and a copy
    of the request's headers for every request (py-spy: ~5 us a request). The outcome is
    the same as there: the default `Accept: */*` unless the client sent one, no made-up
    User-Agent or Accept-Encoding, and (read later by aiohttp from `_skip_auto_headers`)
    no made-up Content-Type for a body."""

    def update_auto_headers(self, skip_auto_headers: Iterable[str] | None) -> None:
        self._skip_auto_headers = _SKIPPED
        if hdrs.ACCEPT not in self.headers:
            self.headers[hdrs.ACCEPT] = "*/*"


_SKIPPED: CIMultiDict[None] = CIMultiDict((name, None) for name in SKIP_AUTO_HEADERS)


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
            skip_auto_headers=SKIP_AUTO_HEADERS,
            request_class=_ProxyRequest,
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
BROKER_RESPONSE_HEADERS = frozenset({"ratelimit-policy", "ratelimit", "x-broker-decision"})
"""Response headers the broker sets itself (lower case), replacing the upstream's."""


def answer_headers(
    upstream: CIMultiDictProxy[str], own: Mapping[str, str], *, keep_length: bool
) -> list[tuple[str, str]] | CIMultiDict[str]:
    """The upstream's response headers passed on, then the broker's `own` (RateLimit,
    X-Broker-Decision): `response_headers(...)` updated with `own`, as pairs for
    aiohttp to take in one go. In the rare answer that already carries one of the
    broker's own headers, it is replaced in place, as CIMultiDict.update does."""
    connection = upstream.getall("Connection", ())
    drop = HOP_BY_HOP if keep_length else _HOP_BY_HOP_AND_LENGTH
    if connection:
        drop = drop.union(_listed(connection))
    pairs: list[tuple[str, str]] = []
    for name, value in upstream.items():
        lower = name.lower()
        if lower not in drop:
            if lower in BROKER_RESPONSE_HEADERS:
                headers = response_headers(upstream, keep_length=keep_length)
                headers.update(own)
                return headers
            pairs.append((name, value))
    pairs.extend(own.items())
    return pairs


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
