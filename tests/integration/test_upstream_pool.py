"""The broker's HTTP/1.1 client against scripted upstreams on real sockets.

Each upstream here is a raw TCP server that reads one request at a time and answers with
exactly the bytes a test gives it, so framing, keep-alive and failure cases are the
upstream's own, not what a friendly HTTP library would send."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from broker.http.pool import Answer, UpstreamPool
from broker.http.upstream_errors import MalformedAnswer, UpstreamError, UpstreamTimeout

JSON_OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok": 42}\n'


@dataclass
class Scripted:
    """A raw upstream: `answer(request_head, body, n)` gives the bytes for the n-th request on
    a connection (None: close without answering; b"": send nothing and keep waiting)."""

    answer: Callable[[bytes, bytes, int], bytes | None]
    close_after_answer: bool = False
    port: int = 0
    connections: int = 0
    requests: list[tuple[bytes, bytes]] = field(default_factory=list)
    server: asyncio.Server | None = None
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                body = await _read_body(reader, head)
                self.requests.append((head, body))
                reply = self.answer(head, body, n)
                n += 1
                if reply is None:
                    break
                writer.write(reply)
                await writer.drain()
                if self.close_after_answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _read_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                return body
            body += chunk[:-2]
    for line in lower.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return await reader.readexactly(int(line.split(b":")[1]))
    return b""


Start = Callable[..., Awaitable[Scripted]]
"""start(answer, close_after_answer=False): a scripted upstream listening on a free port."""


@pytest.fixture
async def scripted() -> AsyncIterator[Start]:
    started: list[Scripted] = []

    async def start(answer: Callable[[bytes, bytes, int], bytes | None], close_after_answer: bool = False) -> Scripted:
        upstream = Scripted(answer, close_after_answer)
        upstream.server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
        upstream.port = upstream.server.sockets[0].getsockname()[1]
        started.append(upstream)
        return upstream

    yield start
    for upstream in started:
        assert upstream.server is not None
        upstream.server.close()
        for writer in upstream.writers:
            writer.close()  # the handler's read ends, so nothing is left pending
    await asyncio.sleep(0.01)


def pool_for(upstream: Scripted, **options: float) -> UpstreamPool:
    settings = {"limit": 4, "connect_timeout": 2.0, "read_timeout": 2.0, **options}
    return UpstreamPool(
        f"http://127.0.0.1:{upstream.port}/base",
        limit=int(settings["limit"]),
        connect_timeout=settings["connect_timeout"],
        read_timeout=settings["read_timeout"],
    )


async def read_all(answer: Answer) -> bytes:
    try:
        body = await answer.read(1 << 30)
        assert body is not None
        return body
    finally:
        answer.release()


async def test_one_kept_alive_connection_serves_request_after_request(scripted: Start) -> None:
    upstream = await scripted(lambda head, body, n: JSON_OK)
    pool = pool_for(upstream)
    for _ in range(3):
        answer = await pool.send("GET", "/x?y=%7E", [("Accept", "*/*")], None)
        assert answer.status == 200 and answer.headers["content-type"] == "application/json"
        assert answer.content_length == 11
        assert await read_all(answer) == b'{"ok": 42}\n'
    assert upstream.connections == 1
    head = upstream.requests[0][0]
    assert head.startswith(b"GET /base/x?y=%7E HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{upstream.port}\r\n".encode() in head
    await pool.close()


async def test_chunked_answer_and_bodies_sent_with_the_right_framing(scripted: Start) -> None:
    chunked = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    upstream = await scripted(lambda head, body, n: chunked)
    pool = pool_for(upstream)

    async def stream() -> AsyncIterator[bytes]:
        yield b"part one, "
        yield b""
        yield b"part two"

    assert await read_all(await pool.send("POST", "/a", [], b"bytes body")) == b"hello world"
    assert await read_all(await pool.send("POST", "/b", [], stream())) == b"hello world"
    assert await read_all(await pool.send("POST", "/c", [], stream(), body_length=18)) == b"hello world"
    assert await read_all(await pool.send("POST", "/d", [], None)) == b"hello world"
    (a, a_body), (b, b_body), (c, c_body), (d, d_body) = upstream.requests
    assert b"Content-Length: 10\r\n" in a and a_body == b"bytes body"
    assert b"Transfer-Encoding: chunked\r\n" in b and b_body == b"part one, part two"
    assert b"Content-Length: 18\r\n" in c and c_body == b"part one, part two"
    assert b"Content-Length: 0\r\n" in d and d_body == b""
    assert upstream.connections == 1
    await pool.close()


async def test_answer_without_length_is_read_to_the_close_and_not_reused(scripted: Start) -> None:
    upstream = await scripted(
        lambda head, body, n: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", close_after_answer=True
    )
    pool = pool_for(upstream, read_timeout=1.0)
    assert await read_all(await pool.send("GET", "/", [], None)) == b"until the end"
    assert await read_all(await pool.send("GET", "/", [], None)) == b"until the end"
    assert upstream.connections == 2
    await pool.close()


async def test_interim_answers_are_skipped(scripted: Start) -> None:
    early = b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    upstream = await scripted(lambda head, body, n: early + JSON_OK)
    pool = pool_for(upstream)
    answer = await pool.send("GET", "/", [], None)
    assert answer.status == 200 and "Link" not in answer.headers
    assert await read_all(answer) == b'{"ok": 42}\n'
    await pool.close()


async def test_head_answer_ends_with_its_headers(scripted: Start) -> None:
    upstream = await scripted(lambda head, body, n: b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n")
    pool = pool_for(upstream, read_timeout=0.5)
    answer = await pool.send("HEAD", "/", [], None)
    assert answer.status == 200 and answer.content_length == 5000
    assert await read_all(answer) == b""  # at once: no wait for 5000 bytes that never come
    await pool.close()


@pytest.mark.parametrize(
    ("reply", "error", "words"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort", UpstreamError, "closed the connection"),
        (b"HTTP/1.1 2OO OK\r\n\r\n", MalformedAnswer, "not valid HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", MalformedAnswer, "not valid HTTP"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", MalformedAnswer, "switched protocols"),
        (None, UpstreamError, "closed the connection"),
    ],
)
async def test_broken_answers_raise_errors_that_say_what_broke(
    scripted: Start, reply: bytes | None, error: type[Exception], words: str
) -> None:
    upstream = await scripted(lambda head, body, n: reply, close_after_answer=True)
    pool = pool_for(upstream)
    with pytest.raises(error, match=words):
        answer = await pool.send("POST", "/", [], b"{}")
        await read_all(answer)
    await pool.close()


async def test_silent_upstream_times_out(scripted: Start) -> None:
    upstream = await scripted(lambda head, body, n: b"")
    pool = pool_for(upstream, read_timeout=0.2)
    with pytest.raises(UpstreamTimeout, match="did not answer in time"):
        await pool.send("GET", "/", [], None)
    stalled = await scripted(lambda head, body, n: b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhalf")
    pool = pool_for(stalled, read_timeout=0.2)
    answer = await pool.send("GET", "/", [], None)
    with pytest.raises(UpstreamTimeout):
        await read_all(answer)
    await pool.close()


async def test_unreachable_upstream_is_named(scripted: Start) -> None:
    upstream = await scripted(lambda head, body, n: JSON_OK)
    assert upstream.server is not None
    upstream.server.close()
    await upstream.server.wait_closed()
    pool = pool_for(upstream)
    with pytest.raises(UpstreamError, match="unreachable"):
        await pool.send("GET", "/", [], None)


async def test_reused_connection_closed_unanswered_retries_idempotent_requests_only(scripted: Start) -> None:
    # The second request on every connection is read and then dropped unanswered: what a
    # server closing an idle keep-alive connection looks like from the client's side.
    upstream = await scripted(lambda head, body, n: JSON_OK if n == 0 else None)
    pool = pool_for(upstream)
    assert await read_all(await pool.send("GET", "/", [], None)) == b'{"ok": 42}\n'
    assert await read_all(await pool.send("GET", "/", [], None)) == b'{"ok": 42}\n'  # retried on a new one
    assert upstream.connections == 2
    with pytest.raises(UpstreamError, match="closed the connection"):
        await pool.send("POST", "/", [], b"{}")  # might have been acted on: never sent twice
    await pool.close()


async def test_pool_is_bounded_and_waiting_for_it_is_too(scripted: Start) -> None:
    upstream = await scripted(lambda head, body, n: JSON_OK)
    pool = pool_for(upstream, limit=1, read_timeout=0.3)
    first = await pool.send("GET", "/", [], None)
    second = asyncio.create_task(pool.send("GET", "/", [], None))
    await asyncio.sleep(0.05)
    assert not second.done()  # waits for the one connection
    assert await read_all(first) == b'{"ok": 42}\n'
    assert await read_all(await second) == b'{"ok": 42}\n'
    assert upstream.connections == 1

    held = await pool.send("GET", "/", [], None)
    with pytest.raises(UpstreamTimeout, match="All 1 connections to the service stayed busy"):
        await pool.send("GET", "/", [], None)
    held.release()
    await pool.close()


async def test_large_answer_streams_in_pieces_and_read_stops_at_its_limit(scripted: Start) -> None:
    payload = bytes(range(256)) * 8192  # 2 MiB: well past the point where reading pauses
    upstream = await scripted(
        lambda head, body, n: b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (2 << 20, payload)
    )
    pool = pool_for(upstream)
    answer = await pool.send("GET", "/", [], None)
    pieces = []
    while (chunk := await answer.next_chunk()) is not None:
        pieces.append(chunk)
        await asyncio.sleep(0)  # a slow reader
    answer.release()
    assert b"".join(pieces) == payload and len(pieces) > 1
    answer = await pool.send("GET", "/", [], None)  # on the same connection: the first was read to its end
    assert await answer.read(1 << 20) is None
    answer.release()
    assert upstream.connections == 1
    answer = await pool.send("GET", "/", [], None)
    assert upstream.connections == 2  # the second answer was not read to its end: not reused
    answer.release()
    await pool.close()


async def test_bytes_nobody_asked_for_retire_the_connection(scripted: Start) -> None:
    upstream = await scripted(lambda head, body, n: JSON_OK + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    pool = pool_for(upstream)
    assert await read_all(await pool.send("GET", "/", [], None)) == b'{"ok": 42}\n'
    await asyncio.sleep(0.05)
    assert await read_all(await pool.send("GET", "/", [], None)) == b'{"ok": 42}\n'
    assert upstream.connections == 2
    await pool.close()


async def test_line_breaks_in_headers_are_refused_before_sending(scripted: Start) -> None:
    upstream = await scripted(lambda head, body, n: JSON_OK)
    pool = pool_for(upstream)
    with pytest.raises(ValueError, match="line break"):
        await pool.send("GET", "/", [("X-Broker-Employee", "e1\r\nX-Admin: yes")], None)
    assert upstream.requests == []
    await pool.close()


# --- found by a review of the client; each failed before its fix --------------------------


async def test_head_on_a_reused_connection_does_not_eat_the_next_answer(scripted: Start) -> None:
    def answer(head: bytes, body: bytes, n: int) -> bytes:
        if head.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + head.split()[1][-5:]

    upstream = await scripted(answer)
    pool = pool_for(upstream, limit=1)
    assert await read_all(await pool.send("GET", "/aaaa", [], None)) == b"/aaaa"
    head = await pool.send("HEAD", "/", [], None)  # on the kept-alive connection
    assert head.status == 200 and await read_all(head) == b""
    assert await read_all(await pool.send("GET", "/bbbb", [], None)) == b"/bbbb"
    assert upstream.connections == 2  # the HEAD's connection was not reused
    await pool.close()


async def test_answer_running_to_the_close_that_stalls_is_an_error_not_a_short_body(scripted: Start) -> None:
    upstream = await scripted(lambda head, body, n: b"HTTP/1.1 200 OK\r\n\r\n[1,2,3,")
    pool = pool_for(upstream, read_timeout=0.3)
    answer = await pool.send("GET", "/", [], None)
    with pytest.raises(UpstreamTimeout):
        await answer.read(1 << 20)
    answer.release()
    answer = await pool.send("GET", "/", [], None)
    pieces = []
    with pytest.raises(UpstreamTimeout):
        while (chunk := await answer.next_chunk()) is not None:
            pieces.append(chunk)
    answer.release()
    assert pieces == [b"[1,2,3,"]
    await pool.close()


async def test_a_connection_handed_to_a_request_that_just_gave_up_stays_in_the_pool(scripted: Start) -> None:
    upstream = await scripted(lambda head, body, n: JSON_OK)
    pool = pool_for(upstream, limit=1)
    first = await pool.send("GET", "/1", [], None)
    await first.read(100)
    waiting = asyncio.create_task(pool.send("GET", "/2", [], None))
    await asyncio.sleep(0.05)
    first.release()  # hands the connection to the waiting request...
    waiting.cancel()  # ...whose client went away in the same step
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert pool.open_connections == 1
    assert await read_all(await pool.send("GET", "/3", [], None)) == b'{"ok": 42}\n'
    assert upstream.connections == 1
    await pool.close()


async def test_a_freed_place_goes_to_the_waiting_request_and_the_limit_holds(scripted: Start) -> None:
    live = peak = 0

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                await asyncio.sleep(0.1)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            live -= 1
            writer.close()

    server = await asyncio.start_server(slow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(f"http://127.0.0.1:{port}", limit=1, connect_timeout=2.0, read_timeout=2.0)
    first = await pool.send("GET", "/a", [], None)
    waiting = asyncio.create_task(pool.send("GET", "/b", [], None))
    await asyncio.sleep(0.01)
    newcomer = asyncio.create_task(pool.send("GET", "/c", [], None))
    first.release()  # unread: its connection closes, and its place goes to /b
    for task in (waiting, newcomer):
        assert await read_all(await task) == b"ok"
    assert peak == 1
    await pool.close()
    server.close()


async def test_upstream_that_stops_reading_a_streamed_body_times_out(scripted: Start) -> None:
    stalled = asyncio.Event()

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await stalled.wait()  # never reads the body
        writer.close()

    server = await asyncio.start_server(deaf, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(f"http://127.0.0.1:{port}", limit=1, connect_timeout=2.0, read_timeout=0.3)

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(4096):  # 256 MiB at most: far more than the sockets buffer
            yield b"x" * 65536

    started = asyncio.get_running_loop().time()
    with pytest.raises(UpstreamTimeout, match="stopped reading the request"):
        await pool.send("POST", "/", [], endless())
    assert asyncio.get_running_loop().time() - started < 5
    assert pool.open_connections == 0
    stalled.set()
    server.close()


async def test_an_early_answer_is_passed_on_while_the_body_was_still_being_sent(scripted: Start) -> None:
    async def refuses(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Content Too Large\r\nConnection: close\r\nContent-Length: 4\r\n\r\nbig!")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuses, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = UpstreamPool(f"http://127.0.0.1:{port}", limit=1, connect_timeout=2.0, read_timeout=1.0)

    async def trickle() -> AsyncIterator[bytes]:
        for _ in range(50):
            await asyncio.sleep(0.01)
            yield b"x" * 1000

    answer = await pool.send("POST", "/", [], trickle())
    assert answer.status == 413 and await read_all(answer) == b"big!"
    await pool.close()
    server.close()


async def test_transfer_codings_other_than_chunked_are_refused(scripted: Start) -> None:
    gzip = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    upstream = await scripted(lambda head, body, n: gzip, close_after_answer=True)
    pool = pool_for(upstream)
    with pytest.raises(MalformedAnswer, match=r"transfer coding the broker does not undo \(gzip, chunked\)"):
        await pool.send("GET", "/", [], None)
    await pool.close()


async def test_an_answer_released_twice_leaves_the_next_request_alone(scripted: Start) -> None:
    upstream = await scripted(lambda head, body, n: JSON_OK)
    pool = pool_for(upstream, limit=1)
    first = await pool.send("GET", "/", [], None)
    assert await read_all(first) == b'{"ok": 42}\n'
    second = await pool.send("GET", "/", [], None)  # the same connection
    first.release()  # again: must not close the connection the second answer is on
    assert await read_all(second) == b'{"ok": 42}\n'
    with pytest.raises(RuntimeError, match="after it was released"):
        await first.read(10)
    assert upstream.connections == 1
    await pool.close()


async def test_closing_the_pool_fails_the_waiting_requests(scripted: Start) -> None:
    upstream = await scripted(lambda head, body, n: JSON_OK)
    pool = pool_for(upstream, limit=1)
    held = await pool.send("GET", "/", [], None)
    waiting = asyncio.create_task(pool.send("GET", "/", [], None))
    await asyncio.sleep(0.02)
    await pool.close()
    with pytest.raises(UpstreamError, match="shutting down"):
        await waiting
    with pytest.raises(UpstreamError, match="shutting down"):
        await pool.send("GET", "/", [], None)
    held.release()
    assert pool.open_connections == 0
