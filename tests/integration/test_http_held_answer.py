"""A held answer leaves the broker framed by the broker (broker/http/head.py): status line,
headers and a length it computed, read here byte for byte from a raw client socket."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from broker.http.head import WRITTEN, answer_head, write_held_answer
from tests.conftest import BrokerFactory
from tests.harness import Harness
from tests.raw_upstream import RawUpstream

PATH = "/api/branches/BR001/waybills"
RECORDS = {"items": [{"waybill_no": "SF1", "branch_code": "BR001", "note": "ünïcode"}], "total": 1}


@pytest.fixture
async def held(make_broker: BrokerFactory, raw_upstream: RawUpstream) -> Harness:
    raw_upstream.answer(PATH, RECORDS, extra=[("X-Upstream-Trace", "t-1"), ("Cache-Control", "no-store")])
    return await make_broker(raw_upstream.url)


def request_bytes(broker: Harness, *lines: str, version: str = "1.1", target: str = PATH + "?limit=5") -> bytes:
    head = [f"GET {target} HTTP/{version}", "Host: broker.test", f"Authorization: Bearer {broker.token('e1001')}"]
    return ("\r\n".join([*head, *lines]) + "\r\n\r\n").encode()


async def read_answer(reader: asyncio.StreamReader) -> tuple[str, list[tuple[str, str]], bytes]:
    """One answer as its bytes frame it: the status line, the header lines in order, and
    exactly Content-Length bytes of body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status, *lines = head[:-4].decode("utf-8").split("\r\n")
    headers = [(name, value) for name, _, value in (line.partition(": ") for line in lines)]
    lengths = [value for name, value in headers if name.lower() == "content-length"]
    assert len(lengths) == 1, headers
    body = await asyncio.wait_for(reader.readexactly(int(lengths[0])), 10)
    return status, headers, body


def named(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name.lower()]


async def test_a_held_answer_is_framed_by_the_broker(held: Harness) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", held.port)
    writer.write(request_bytes(held))
    status, headers, body = await read_answer(reader)
    writer.close()
    assert status == "HTTP/1.1 200 OK"
    assert orjson.loads(body) == RECORDS  # the upstream's bytes, non-ASCII included
    assert named(headers, "Content-Length") == [str(len(body))]
    assert named(headers, "Transfer-Encoding") == []
    assert named(headers, "X-Upstream-Trace") == ["t-1"]
    assert named(headers, "Cache-Control") == ["no-store"]
    assert len(named(headers, "X-Broker-Decision")) == 1
    assert named(headers, "Content-Type") == ["application/json"]
    # the raw upstream sends no Date: a proxy forwarding such an answer adds one
    assert len(named(headers, "Date")) == 1
    assert named(headers, "Connection") == []  # HTTP/1.1 keeps the connection by default


async def test_pipelined_requests_get_their_answers_in_order_on_one_connection(held: Harness) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", held.port)
    writer.write(request_bytes(held) + request_bytes(held, target=PATH + "?limit=1"))
    answers = [await read_answer(reader), await read_answer(reader)]
    writer.write(request_bytes(held, "Connection: close"))
    last = await read_answer(reader)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed after the answer that asked for it
    writer.close()
    assert [a[0] for a in answers] == ["HTTP/1.1 200 OK"] * 2
    assert named(last[1], "Connection") == ["close"]
    events = await held.audit_events(at_least=3)
    assert [(e["status"], e["records_returned"]) for e in events[-3:]] == [(200, 1)] * 3


@pytest.mark.parametrize(
    ("asked", "said", "stays_open"),
    [("Connection: keep-alive", ["keep-alive"], True), ("X-Nothing: 1", [], False)],
)
async def test_an_http_1_0_client_keeps_its_connection_only_when_it_asked(
    held: Harness, asked: str, said: list[str], stays_open: bool
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", held.port)
    writer.write(request_bytes(held, asked, version="1.0"))
    status, headers, _ = await read_answer(reader)
    assert status == "HTTP/1.0 200 OK"
    assert named(headers, "Connection") == said
    if stays_open:
        writer.write(request_bytes(held, version="1.0"))
        assert (await read_answer(reader))[0] == "HTTP/1.0 200 OK"
    else:
        assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_a_client_that_hangs_up_while_its_answer_is_written_is_audited_as_gone(
    make_broker: BrokerFactory, raw_upstream: RawUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    broker = await make_broker(raw_upstream.url, held_answers_budget_bytes=10 << 20)
    items = [{"waybill_no": f"SF{n}", "branch_code": "BR001", "note": "x" * 160_000} for n in range(50)]
    raw_upstream.answer(PATH, {"items": items})  # about 8 MB: more than the sockets buffer
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.setblocking(False)
    await asyncio.get_running_loop().sock_connect(slow, ("127.0.0.1", broker.port))
    _reader, writer = await asyncio.open_connection(sock=slow)
    with caplog.at_level(logging.DEBUG, logger="aiohttp"):
        writer.write(request_bytes(broker, target=PATH + "?limit=50"))
        await writer.drain()
        await asyncio.sleep(1.0)  # the answer is checked and being written; the client reads nothing
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()  # and hangs up with most of it unread
        event = (await broker.audit_events())[-1]
    # 499: the answer did not reach the client whole; the records count as returned (it may
    # have read some) and were charged
    assert (event["status"], event["verdict"], event["records_returned"]) == (499, "allow", 50)
    assert "Error handling request" not in caplog.text
    raw_upstream.answer(PATH, RECORDS)
    assert (await broker.get(PATH + "?limit=5", "e1001")).status == 200  # the budget was given back


async def test_a_client_that_hangs_up_before_its_answer_comes_is_audited_as_gone(
    held: Harness, raw_upstream: RawUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    raw_upstream.answer(PATH, RECORDS, delay=0.5)
    _reader, writer = await asyncio.open_connection("127.0.0.1", held.port)
    with caplog.at_level(logging.DEBUG, logger="aiohttp"):
        writer.write(request_bytes(held))
        await writer.drain()
        await asyncio.sleep(0.1)  # the request is upstream by now
        writer.close()
        await writer.wait_closed()
        event = (await held.audit_events())[-1]
    # nothing reached the client: no records returned (they were charged all the same)
    assert (event["status"], event["verdict"], event["records_returned"]) == (499, "allow", 0)
    assert event["latency_ms"] >= 400  # the broker waited for the service's answer
    assert "Error handling request" not in caplog.text
    raw_upstream.answer(PATH, RECORDS)
    assert (await held.get(PATH + "?limit=5", "e1001")).status == 200


async def test_draining_that_starts_while_an_answer_is_read_keeps_the_word_it_gave(
    make_broker: BrokerFactory, raw_upstream: RawUpstream
) -> None:
    # the first answer went out saying keep-alive; the broker then starts draining while
    # the client is still reading it: the pipelined second request is answered (closing)
    items = [{"waybill_no": f"SF{n}", "branch_code": "BR001", "note": "x" * 300_000} for n in range(50)]
    raw_upstream.answer(PATH, {"items": items})  # about 15 MB
    broker = await make_broker(
        raw_upstream.url, held_answers_budget_bytes=64 << 20, max_response_inspect_bytes=32 << 20
    )
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.setblocking(False)
    await asyncio.get_running_loop().sock_connect(slow, ("127.0.0.1", broker.port))
    reader, writer = await asyncio.open_connection(sock=slow)
    writer.write(request_bytes(broker, target=PATH + "?limit=50") * 2)
    await writer.drain()
    await asyncio.sleep(1.0)  # the first answer is being written; the client reads nothing yet
    broker.broker.admin.draining = True  # SIGTERM
    first = await read_answer(reader)
    second = await read_answer(reader)
    writer.close()
    assert (first[0], named(first[1], "Connection")) == ("HTTP/1.1 200 OK", [])
    assert (second[0], named(second[1], "Connection")) == ("HTTP/1.1 200 OK", ["close"])


async def test_a_handler_that_fails_after_writing_its_answer_appends_nothing() -> None:
    # aiohttp answers a handler's exception with a 500 unless its writer says an answer
    # has started: a 500 after a whole 200 would be read as the next request's answer
    async def handler(request: web.Request) -> web.StreamResponse:
        assert await write_held_answer(request, 200, [("Content-Type", "text/plain")], b"done", True) == WRITTEN
        raise RuntimeError("a fault after the answer was written")

    app = web.Application()
    app.router.add_get("/", handler)
    async with TestServer(app, host="127.0.0.1") as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, body = await read_answer(reader)
        rest = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert (status, body, named(headers, "Content-Length")) == ("HTTP/1.1 200 OK", b"done", ["4"])
    assert rest == b""  # the connection closed; no second answer


def test_a_header_with_a_line_break_is_never_written_as_is() -> None:
    for name, value in [
        ("X-A", "1\r\nX-Injected: 2"),
        ("X-A", "1\nX-B: 2"),
        ("X-A\r\nX-B", "1"),
        ("X-A", "1\r"),
        ("X-A", "1\x00"),
        ("X-A", "1\x7f"),
        ("X-A\x0b", "1"),
    ]:
        assert answer_head((1, 1), 200, [(name, value)], 2, True) is None, (name, value)
    head = answer_head((1, 1), 200, [("X-Raw", "caf\udce9")], 2, False)
    assert head is not None
    assert b"X-Raw: caf\xe9\r\n" in head  # the upstream's own byte, as it came
    assert head.endswith(b"Content-Length: 2\r\nConnection: close\r\n\r\n")
    assert answer_head((1, 1), 299, [], 0, True) is not None  # a status without a phrase
    assert answer_head((1, 1), 200, [("X-Tab", "a\tb")], 0, True) is not None  # a tab may be in a value
