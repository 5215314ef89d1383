"""The broker's own HTTP/1.1 client to its one upstream: kept-alive connections, llhttp parsing.

Why not aiohttp's ClientSession (which the broker used first): measured side by side under
load, its per-request machinery — timeout handles, cookie and proxy handling, URL
building, automatic headers, a StreamReader per answer — cost more CPU than the whole
policy decision. The broker talks to one origin with headers it has already vetted, so a
request is written as one bytes string and the answer is parsed by httptools (llhttp, the
parser uvicorn and Node.js use); only the pooling and framing below are the broker's own.

What it keeps of a full client: a bounded pool (waiting for a free connection is bounded
too), connect and read timeouts, TLS to an `https://` upstream, chunked, read-until-close
and HEAD answers, 1xx interim answers skipped, streamed request bodies with back pressure
(and an early answer taken while the body is still going out), reading paused while a slow
client drains an answer, and one retry of an idempotent request whose reused connection
turned out to be closed before it answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import deque
from collections.abc import AsyncIterable
from typing import cast
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

from broker.http.upstream_errors import MalformedAnswer, UpstreamError, UpstreamTimeout

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
"""Methods a request may be sent twice with (RFC 9110 9.2.2): only these are retried."""

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
"""Methods whose request carries `Content-Length: 0` when the client sent no body."""

READ_HIGH_WATER = 256 * 1024
"""Bytes of an answer held before reading from the upstream pauses until they are taken."""

MAX_HEADER_BYTES = 64 * 1024
"""The most an answer's status line and headers may take: an upstream sending megabytes
of headers would otherwise be buffered whole, per request."""


class Answer:
    """An upstream answer: its status line and headers, and its body as it arrives.

    Hand it back with `release()` when done: a fully read answer returns its connection to
    the pool, anything else closes it."""

    __slots__ = ("_connection", "_released", "content_length", "headers", "reason", "status")

    def __init__(self, connection: _Connection, status: int, reason: str, headers: CIMultiDictProxy[str]) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        length = headers.get("Content-Length")
        self.content_length = int(length) if length is not None and length.isdigit() else None
        self._connection = connection
        self._released = False

    async def read(self, limit: int) -> bytes | None:
        """The whole body, or None as soon as it is known to be larger than `limit` bytes
        (at once when its Content-Length says so)."""
        self._check()
        if self.content_length is not None and self.content_length > limit:
            return None
        return await self._connection.read_body(limit)

    async def next_chunk(self) -> bytes | None:
        """The body's next piece as the upstream sent it; None at its end."""
        self._check()
        return await self._connection.next_chunk()

    def release(self) -> None:
        """Done with this answer (once: its connection may already carry another)."""
        if not self._released:
            self._released = True
            self._connection.release()

    def _check(self) -> None:
        if self._released:
            raise RuntimeError("an upstream answer read after it was released")


class _Connection(asyncio.Protocol):
    """One kept-alive connection; carries one exchange at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._loop = pool.loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._closed_by_us = False
        self.reused = False
        self.idle_since = 0.0
        self._busy = False
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._forget_exchange(is_head=False)

    def _forget_exchange(self, *, is_head: bool) -> None:
        """Everything one exchange learns, cleared: nothing carries over to the next."""
        self._head = is_head
        self._got_bytes = False
        self._raw_headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._reason = b""
        self._interim = False
        self._surplus = False
        self._answer: Answer | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._complete = False
        self._until_close = False
        self._keep_alive = False
        self._request_cut = False
        self._error: BaseException | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if not self._busy:  # bytes nobody asked for: this connection cannot be trusted again
            self.close()
            return
        self._got_bytes = True
        if self._answer is None:
            self._header_bytes += len(data)
        try:
            self._parser.feed_data(data)
            if self._answer is None and self._header_bytes > self._pool.max_header_bytes:
                limit = self._pool.max_header_bytes
                raise MalformedAnswer(f"The service's answer headers run past {limit} bytes.")
        except MalformedAnswer as malformed:  # one name per handler: compiled (mypyc), a name has one type
            self._fail(malformed)
            self.close()
        except httptools.HttpParserError as unparsable:
            own = unparsable.__context__  # raised by one of the callbacks below
            self._fail(
                own
                if isinstance(own, MalformedAnswer)
                else MalformedAnswer(f"The service's answer is not valid HTTP ({unparsable}).")
            )
            self.close()
        self._wake()

    def eof_received(self) -> bool:
        self._end_of_stream()
        return False  # close the transport; connection_lost settles the rest

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if exc is None:
            self._end_of_stream()
        if self._busy and not self._complete:
            self._fail(UpstreamError("The service closed the connection before it finished answering."))
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        self._wake()
        self._pool.forget(self)

    def _end_of_stream(self) -> None:
        """The upstream closed cleanly: that ends an answer framed as running to the close,
        unless the broker itself gave up on it (timeout, bad bytes)."""
        if (
            self._busy
            and self._until_close
            and self._answer is not None
            and self._error is None
            and not self._closed_by_us
        ):
            self._complete = True

    def pause_writing(self) -> None:
        self._drain = self._loop.create_future()

    def resume_writing(self) -> None:
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    # -- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._complete:  # a second answer to one request: nothing more is trusted
            self._surplus = True

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._surplus:
            return
        limit = self._pool.max_header_bytes
        # Everything received so far is under the limit for nearly every answer: then so are its headers
        if (
            self._header_bytes > limit
            and len(self._reason) + sum(len(n) + len(v) for n, v in self._raw_headers) > limit
        ):
            raise MalformedAnswer(f"The service's answer headers run past {limit} bytes.")
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            if status == 101:
                raise MalformedAnswer("The service switched protocols without being asked to.")
            self._interim = True  # 103 Early Hints and the like: the real answer follows
            self._raw_headers = []
            self._reason = b""
            return
        headers = CIMultiDict(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            for name, value in self._raw_headers
        )
        codings = [c.strip().lower() for v in headers.getall("Transfer-Encoding", ()) for c in v.split(",")]
        if any(coding != "chunked" for coding in codings):
            # Transfer codings are hop-by-hop: passing the body on without them would hand
            # the client gzip (say) it was never told about.
            listed = ", ".join(codings)
            raise MalformedAnswer(f"The service used a transfer coding the broker does not undo ({listed}).")
        self._answer = Answer(self, status, self._reason.decode("latin-1"), CIMultiDictProxy(headers))
        if self._head:
            # A HEAD answer ends with its headers, but the parser cannot be told so and would
            # take the next answer for this one's body: the connection is not reused.
            self._complete = True
            return
        self._until_close = status not in (204, 304) and not codings and "Content-Length" not in headers

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > READ_HIGH_WATER and not self._reading_paused and self._transport is not None:
            self._transport.pause_reading()
            self._reading_paused = True

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._complete:  # a HEAD answer, already finished
            return
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive() and not self._until_close

    # -- one exchange ----------------------------------------------------------------------

    async def exchange(
        self, head: bytes, body: bytes | AsyncIterable[bytes] | None, *, is_head: bool, chunked: bool
    ) -> Answer:
        """Send a request (its head already framed) and wait for the answer's headers."""
        self._forget_exchange(is_head=is_head)
        self._busy = True
        transport = self._transport
        if transport is None or not self.usable:
            raise UpstreamError("The service closed the connection before the request was sent.")
        if body is None or isinstance(body, bytes):
            transport.write(head + body if body else head)
        else:
            transport.write(head)
            await self._send_stream(body, chunked)
        while self._answer is None:
            if self._error is not None:
                raise self._error
            await self._next_event()
        return self._answer

    async def _send_stream(self, body: AsyncIterable[bytes], chunked: bool) -> None:
        transport = self._transport
        assert transport is not None
        async for chunk in body:
            if self._answer is not None or self._error is not None or self.closed:
                # The service answered, failed or hung up before the body was all sent:
                # stop sending. The request is cut short, so the connection is not reused.
                self._request_cut = True
                return
            if chunk:
                transport.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
            if self._drain is not None:
                await self._drained()
        if chunked:
            transport.write(b"0\r\n\r\n")

    async def _drained(self) -> None:
        """Wait until the upstream takes more of the body; as long as the read timeout at most."""
        drain = self._drain
        if drain is None:
            return
        timer = self._loop.call_later(self._pool.read_timeout, self._time_out, drain, "stopped reading the request")
        try:
            await asyncio.shield(drain)
        finally:
            timer.cancel()
        if self._error is not None:
            raise self._error

    async def read_body(self, limit: int) -> bytes | None:
        parts: list[bytes] = []
        size = 0
        while True:
            if self._chunks:
                size += self._buffered
                parts += self._take()
                if size > limit:
                    return None
            if self._error is not None:
                raise self._error
            if self._complete:
                return parts[0] if len(parts) == 1 else b"".join(parts)
            await self._next_event()

    async def next_chunk(self) -> bytes | None:
        while True:
            if self._chunks:
                parts = self._take()
                return parts[0] if len(parts) == 1 else b"".join(parts)
            if self._error is not None:
                raise self._error
            if self._complete:
                return None
            await self._next_event()

    def _take(self) -> list[bytes]:
        chunks, self._chunks, self._buffered = self._chunks, [], 0
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()
        return chunks

    async def _next_event(self) -> None:
        """Wait for more of the answer; the read timeout counts from now."""
        waiter = self._waiter = self._loop.create_future()
        timer = self._loop.call_later(self._pool.read_timeout, self._time_out, waiter, "did not answer")
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _time_out(self, waiter: asyncio.Future[None], what: str) -> None:
        if not waiter.done():
            self._fail(UpstreamTimeout(f"The service {what} in time."))
            self.close()
            waiter.set_result(None)
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self._error is None:
            self._error = error

    def release(self) -> None:
        """Back to the pool when the answer was read to its end and may be followed by another."""
        reusable = (
            self._complete
            and self._keep_alive
            and self._error is None
            and not (self._chunks or self._surplus or self._request_cut or self.closed)
        )
        self._busy = False
        self._answer = None  # the answer and its connection no longer hold each other
        if not reusable:
            self.close()
            return
        self.reused = True
        self._pool.put(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = self._closed_by_us = True
            if self._transport is not None:
                self._transport.close()
            self._pool.forget(self)

    @property
    def usable(self) -> bool:
        return not self.closed and self._transport is not None and not self._transport.is_closing()

    @property
    def answered_nothing(self) -> bool:
        return not self._got_bytes


class UpstreamPool:
    """Kept-alive HTTP/1.1 connections to one origin, at most `limit` open at once."""

    def __init__(
        self,
        base_url: str,
        *,
        limit: int,
        connect_timeout: float,
        read_timeout: float,
        keepalive_seconds: float = 30.0,
        max_header_bytes: int = MAX_HEADER_BYTES,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{base_url!r} is not an http:// or https:// URL")
        self.loop = asyncio.get_running_loop()
        self.read_timeout = read_timeout
        self.max_header_bytes = max_header_bytes
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        default_port = parts.port is None or parts.port == (443 if parts.scheme == "https" else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._host_header = (host if default_port else f"{host}:{self._port}").encode("idna")
        self._prefix = parts.path.rstrip("/").encode()
        self._limit = limit
        self._connect_timeout = connect_timeout
        self._keepalive = keepalive_seconds
        self._idle: deque[_Connection] = deque()
        self._open: set[_Connection] = set()
        self._promised = 0
        """Places freed for a waiting request that has not yet opened its connection:
        counted against the limit, so nobody else takes them meanwhile."""
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._closed = False

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def send(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterable[bytes] | None,
        *,
        body_length: int | None = None,
    ) -> Answer:
        """Send a request and return the answer once its headers are in.

        `target` is the client's raw path and query, passed on byte for byte after the
        upstream URL's own path; `headers` must not frame the body (no Content-Length or
        Transfer-Encoding): bytes go with a Content-Length, a stream with `body_length`
        when the client declared one, chunked otherwise."""
        head = self._head(method, target, headers, body, body_length)
        replayable = method in IDEMPOTENT and not _is_stream(body)
        while True:
            connection = await self._acquire()
            try:
                return await connection.exchange(
                    head, body, is_head=method == "HEAD", chunked=_is_stream(body) and body_length is None
                )
            except UpstreamError:
                connection.close()
                if not (replayable and connection.reused and connection.answered_nothing):
                    raise
                replayable = False  # one retry, on a fresh or differently idle connection
            except BaseException:
                connection.close()
                raise

    def _head(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes | AsyncIterable[bytes] | None,
        body_length: int | None,
    ) -> bytes:
        fields = [f"{name}: {value}" for name, value in headers]
        flat = "".join(fields)  # one memchr each below, where counting line ends scanned char by char
        if "\n" in flat or "\r" in flat:
            raise ValueError("a header to the upstream holds a line break")
        lines = "\r\n".join(fields) + "\r\n" if fields else ""
        if isinstance(body, bytes):
            framing = b"Content-Length: %d\r\n" % len(body)
        elif body is not None:
            declared = b"Content-Length: %d\r\n" % body_length if body_length is not None else None
            framing = declared or b"Transfer-Encoding: chunked\r\n"
        else:
            framing = b"Content-Length: 0\r\n" if method in BODY_METHODS else b""
        return b"".join(
            (
                method.encode("ascii"),
                b" ",
                self._prefix,
                target.encode("utf-8", "surrogateescape"),
                b" HTTP/1.1\r\nHost: ",
                self._host_header,
                b"\r\n",
                lines.encode("utf-8", "surrogateescape"),
                framing,
                b"\r\n",
            )
        )

    async def _acquire(self) -> _Connection:
        if self._closed:
            raise UpstreamError("The broker is shutting down.")
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()  # the most recently used: least likely closed by the peer
            if connection.usable and now - connection.idle_since < self._keepalive:
                return connection
            connection.close()
        if len(self._open) + self._promised < self._limit:
            return await self._connect()
        waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.read_timeout):
                handed = await waiter
        except BaseException as exc:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._give_back(waiter.result())  # handed over just as this request gave up
            if isinstance(exc, TimeoutError):
                raise UpstreamTimeout(f"All {self._limit} connections to the service stayed busy.") from None
            raise
        if handed is not None:
            return handed
        self._promised -= 1
        return await self._connect()

    async def _connect(self) -> _Connection:
        connection = _Connection(self)
        self._open.add(connection)
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self.loop.create_connection(
                    lambda: connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError:
            connection.close()
            raise UpstreamTimeout("The service did not accept a connection in time.") from None
        except OSError as exc:
            connection.close()
            raise UpstreamError(f"The service is unreachable ({exc.strerror or type(exc).__name__}).") from exc
        except BaseException:
            connection.close()
            raise
        return connection

    def put(self, connection: _Connection) -> None:
        """A connection whose exchange ended cleanly: to a waiting request, or idle."""
        if self._closed:
            connection.close()
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)

    def forget(self, connection: _Connection) -> None:
        """A connection closed: its place may go to a waiting request."""
        if connection not in self._open:
            return
        self._open.discard(connection)
        with contextlib.suppress(ValueError):
            self._idle.remove(connection)
        self._offer_place()

    def _give_back(self, handed: _Connection | None) -> None:
        if handed is not None:
            self.put(handed)
        else:
            self._promised -= 1
            self._offer_place()

    def _offer_place(self) -> None:
        while self._waiters and not self._closed:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._promised += 1
                waiter.set_result(None)  # the waiter opens a connection of its own
                return

    async def close(self) -> None:
        """Refuse new requests, fail the waiting ones and close idle connections; busy ones
        close when their answer is released."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(UpstreamError("The broker is shutting down."))
        for connection in list(self._idle):
            connection.close()
        self._idle.clear()


def _header_size(reason: bytes, headers: list[tuple[bytes, bytes]]) -> int:
    return len(reason) + sum(len(name) + len(value) for name, value in headers)


def _is_stream(body: object) -> bool:
    return body is not None and not isinstance(body, bytes)
