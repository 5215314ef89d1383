"""The connection pool to the upstream API and the headers that cross it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from broker.config import ConfigError, UpstreamSettings
from broker.core.decision import Decision
from broker.http.assertion import ASSERTION_HEADER, Asserter, AssertionKeyError
from broker.http.pool import UpstreamPool

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
        "TE", "Trailer", "Transfer-Encoding", "Upgrade",
    )
)  # fmt: skip
BROKER_HEADER_PREFIX = "x-broker-"
FORWARDED_HEADERS = ("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded")
OVERRIDE_HEADERS = (
    "x-http-method-override", "x-http-method", "x-method-override", "x-original-method",
    "x-original-url", "x-rewrite-url", "x-original-uri", "x-forwarded-uri", "x-forwarded-path",
    "x-forwarded-prefix", "x-original-host", "x-forwarded-server", "x-forwarded-port", "x-forwarded-scheme",
)  # fmt: skip
"""Headers some frameworks and gateways read as the request's real method or URL: the
upstream would act on a request other than the one decided."""
IDENTITY_HEADERS = (
    "x-real-ip", "x-client-ip", "true-client-ip", "x-cluster-client-ip", "client-ip", "cf-connecting-ip",
    "x-forwarded-user", "x-forwarded-email", "x-forwarded-preferred-username", "x-forwarded-groups",
    "x-remote-user", "remote-user", "x-user", "x-user-id", "x-auth-user", "x-auth-request-user",
    "x-auth-request-email", "x-auth-request-groups", "x-employee", "x-employee-id",
)  # fmt: skip
"""Headers an upstream may take as who is asking or from where: only the broker says that."""
CONDITIONAL_HEADERS = ("range", "if-range", "if-none-match", "if-match", "if-modified-since", "if-unmodified-since")
"""Headers that make the upstream answer 206 or 304 instead of the record: a partial body
cannot be checked, and a 304 answers "does this record exist?" without a record to
count. The broker asks for the whole answer, every time."""
FRAMING = frozenset({"content-length", "expect"})
"""Set by the pool for the body it sends; `Expect: 100-continue` was answered by the broker."""


class Upstream:
    """The upstream API: its connection pool and the headers that cross to it."""

    def __init__(self, settings: UpstreamSettings, own_cookies: tuple[str, ...] = ()) -> None:
        self.settings = settings
        self._own_cookies = frozenset(name.lower() for name in own_cookies)
        """The broker's own cookies (browser sign-in): never passed to the upstream, which
        could otherwise replay a session id it was shown."""
        self._pool: UpstreamPool | None = None
        self._asserter: Asserter | None = None
        if settings.assertion_key_file:
            try:
                self._asserter = Asserter(
                    Path(settings.assertion_key_file), settings.assertion_ttl_seconds, settings.url
                )
            except AssertionKeyError as exc:
                raise ConfigError(f"[upstream] assertion_key_file: {exc}") from exc
        extra = {_header_key(h) for h in settings.strip_headers}
        dropped = HOP_BY_HOP | FRAMING | {"host", *FORWARDED_HEADERS, *OVERRIDE_HEADERS, *IDENTITY_HEADERS} | extra
        dropped |= set(CONDITIONAL_HEADERS)
        dropped |= {"accept-encoding"}  # every answer is checked, so it must come plain
        self._dropped = dropped if settings.forward_authorization else dropped | {"authorization"}
        """Request headers never passed on (lower case, `_` read as `-`: many servers treat
        `X_Real_IP` as `X-Real-IP`); names starting with `x-broker-` neither: the broker
        sets its own, and Accept-Encoding (identity: answers are read before they pass)."""

    @property
    def pool(self) -> UpstreamPool:
        if self._pool is None:
            raise RuntimeError("upstream pool used before start()")
        return self._pool

    async def start(self) -> None:
        self._pool = UpstreamPool(
            self.settings.url,
            limit=self.settings.max_connections,
            connect_timeout=self.settings.connect_timeout_seconds,
            read_timeout=self.settings.read_timeout_seconds,
            keepalive_seconds=self.settings.keepalive_seconds,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    def request_headers(self, request: web.Request, decision: Decision) -> list[tuple[str, str]]:
        """The client's headers minus hop-by-hop, framing and forwarding ones, plus the broker's.

        Nothing is made up for the client (no User-Agent, no Content-Type) except
        `Accept: */*` when it sent none, as any HTTP client would."""
        source = request.headers
        connection = source.getall("Connection", ())
        drop = self._dropped
        if connection:
            drop = drop.union(_listed(connection))
        headers = [
            (name, value)
            for name, value in source.items()
            if (key := name.lower() if "_" not in name else _header_key(name)) not in drop
            and not key.startswith(BROKER_HEADER_PREFIX)
        ]
        if self._own_cookies and "Cookie" in source:
            headers = self._without_own_cookies(headers)
        headers.append(("Accept-Encoding", "identity"))
        if "Accept" not in source:
            headers.append(("Accept", "*/*"))
        headers += (
            ("X-Forwarded-For", request.remote or ""),
            ("X-Forwarded-Proto", request.scheme),
            ("X-Forwarded-Host", request.host),
            ("X-Broker-Employee", decision.employee or ""),
            ("X-Broker-Decision", decision.id),
        )
        if self._asserter is not None:
            headers.append((ASSERTION_HEADER, self._asserter.token(decision)))
        return headers

    def _without_own_cookies(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """Cookie headers without the broker's cookies (names compared without regard to
        case, as some servers do); a Cookie header left empty is dropped."""
        kept: list[tuple[str, str]] = []
        own = self._own_cookies
        for name, value in headers:
            if name.lower() != "cookie":
                kept.append((name, value))
                continue
            left = ";".join(p for p in value.split(";") if p.strip().partition("=")[0].strip().lower() not in own)
            if left.strip():
                kept.append((name, left.strip()))
        return kept


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


def _header_key(name: str) -> str:
    return name.lower().replace("_", "-") if "_" in name else name.lower()


def _listed(connection: list[str]) -> set[str]:
    """The header names a Connection header lists (hop-by-hop too, RFC 9110 7.6.1)."""
    return {t.strip().lower() for v in connection for t in v.split(",")}
