"""What the upstream answers is checked, and what crosses the broker is faithful."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import BrokerFactory
from tests.harness import Harness, own_words, raw_request

LIST = "/api/branches/BR001/waybills"


@pytest.fixture
async def guarded(make_broker: BrokerFactory, rogue: TestServer) -> Harness:
    return await make_broker(str(rogue.make_url("")).rstrip("/"), read_timeout_seconds=0.5)


async def me_used(broker: Harness, employee: str = "e1001") -> int:
    quotas = (await broker.get("/-/me", employee)).json["quotas"]
    return int(quotas[0]["used"])


async def test_quota_is_charged_with_records_actually_returned(guarded: Harness) -> None:
    reply = await guarded.get(f"{LIST}?limit=50", "e1001")  # the rogue returns 3
    assert reply.status == 200 and len(reply.json["items"]) == 3
    assert await me_used(guarded) == 3
    assert reply.headers["RateLimit"].startswith('"waybill";r=497;')
    events = await guarded.audit_events()
    assert events[-1]["records_requested"] == 50 and events[-1]["records_returned"] == 3


@pytest.mark.parametrize(
    ("mode", "status", "reason", "charged"),
    [
        # the employee's request drew records they may not have: metered like a read
        ("too_many", 403, "upstream.too_many_records", 10),
        ("other_branch", 403, "upstream.other_branch", 10),
        # the service's own failure: nothing charged
        ("no_branch_field", 502, "upstream.uninspectable", 0),
        ("invalid_json", 502, "upstream.uninspectable", 0),
        ("gzip", 502, "upstream.uninspectable", 0),
    ],
)
async def test_bad_answers_are_not_passed_on(
    guarded: Harness, mode: str, status: int, reason: str, charged: int
) -> None:
    reply = await guarded.get(f"{LIST}?limit=10", "e1001", headers={"X-Test-Mode": mode})
    assert reply.status == status, reply.body
    body = reply.json
    assert body["reason"] == reason
    assert b"SF-leak" not in reply.body and b"SF0" not in reply.body
    # no oracle: nothing of the answer (branch codes, counts) is in the refusal
    assert b"BR999" not in reply.body and b"records_in_answer" not in reply.body
    assert "13" not in own_words(body["detail"])  # the rogue answers 13 records
    assert await me_used(guarded) == charged
    events = await guarded.audit_events()
    assert events[-1]["verdict"] == "deny" and events[-1]["reason"] == reason
    assert events[-1]["records_returned"] == 0


async def test_upstream_timeout_gives_504(guarded: Harness) -> None:
    reply = await guarded.get(f"{LIST}?limit=1", "e1001", headers={"X-Test-Mode": "slow"})
    assert reply.status == 504 and reply.json["reason"] == "upstream.timeout"
    assert await me_used(guarded) == 0


async def test_upstream_down_gives_502(make_broker: BrokerFactory) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    broker = await make_broker(f"http://127.0.0.1:{port}")
    reply = await broker.get(f"{LIST}?limit=1", "e1001")
    assert reply.status == 502 and reply.json["reason"] == "upstream.unavailable"
    metrics = (await broker.get("/-/metrics")).body.decode()
    assert 'broker_upstream_errors_total{kind="connection"} 1.0' in metrics


async def test_headers_crossing_the_broker(guarded: Harness) -> None:
    headers = {
        "X-Test-Mode": "echo",
        "X-Broker-Employee": "e9001",  # a client must not be able to claim another identity
        "X-Forwarded-For": "10.9.9.9",
        "Connection": "keep-alive, X-Secret-Hop",
        "X-Secret-Hop": "drop me",
        "Proxy-Authorization": "Basic abc",
        "X-App-Trace": "kept",
    }
    reply = await guarded.get(f"{LIST}?limit=5", "e1001", headers=headers)
    assert reply.status == 200, reply.body
    seen = {k.lower(): v for k, v in reply.json["items"][0]["headers"].items()}
    assert seen["x-broker-employee"] == "e1001"
    assert seen["x-broker-decision"] == reply.headers["X-Broker-Decision"]
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"].startswith("127.0.0.1:")
    assert "x-secret-hop" not in seen and "proxy-authorization" not in seen
    assert seen["x-app-trace"] == "kept"
    assert seen["accept-encoding"] == "identity"
    assert seen["authorization"].startswith("Bearer ")


async def test_raw_path_is_forwarded_unchanged(guarded: Harness) -> None:
    token = guarded.token("e1001")
    reply = await raw_request(
        guarded.port,
        "/api/branches/BR00%31/waybills?limit=2&x=%7Ea",
        {"Authorization": f"Bearer {token}", "X-Test-Mode": "echo"},
    )
    assert reply.status == 200, reply.body
    assert reply.json["items"][0]["raw_path"] == "/api/branches/BR00%31/waybills?limit=2&x=%7Ea"


async def test_request_body_is_forwarded_and_limited(make_broker: BrokerFactory, rogue: TestServer) -> None:
    broker = await make_broker(str(rogue.make_url("")).rstrip("/"), max_request_body_bytes=2048)
    ok = await broker.request("POST", "/api/waybills", "e1004", json={"branch_code": "BR001", "note": "x" * 500})
    assert ok.status == 201 and ok.json["note"] == "x" * 500
    big = await broker.request("POST", "/api/waybills", "e1004", json={"branch_code": "BR001", "note": "x" * 5000})
    assert big.status == 413 and big.json["reason"] == "request.too_large"


async def test_error_answers_on_record_routes_are_the_brokers_own_and_metered(broker: Harness) -> None:
    reply = await broker.get("/api/waybills/SF0000000000", "e1001")
    assert reply.status == 404 and reply.headers["Content-Type"] == "application/problem+json"
    assert reply.json["reason"] == "upstream.refused" and "404" in reply.json["detail"]
    assert b"not found" not in reply.body.lower() or b"answered 404" in reply.body
    assert await me_used(broker) == 1  # a not-found probe costs what a read of one record costs


async def test_answer_too_large_to_count_is_not_passed_on(make_broker: BrokerFactory) -> None:
    broker = await make_broker(max_response_inspect_bytes=2000)
    reply = await broker.get("/api/branches/BR001/waybills?limit=20", "e1001")  # ~10 KB of records
    assert reply.status == 502 and reply.json["reason"] == "upstream.uninspectable"
    assert "larger than the 2000 bytes" in reply.json["detail"] and b"waybill_no" not in reply.body
    assert await me_used(broker) == 0


async def test_no_client_headers_are_made_up_upstream(guarded: Harness) -> None:
    """aiohttp's client adds User-Agent and Accept-Encoding on its own; the broker does not."""
    token = guarded.token("e1001")
    reply = await raw_request(
        guarded.port, f"{LIST}?limit=2", {"Authorization": f"Bearer {token}", "X-Test-Mode": "echo"}
    )
    assert reply.status == 200, reply.body
    seen = {k.lower(): v for k, v in reply.json["items"][0]["headers"].items()}
    assert "user-agent" not in seen
    assert seen["accept-encoding"] == "identity"  # the broker's own: answers it counts must be plain
    assert seen["accept"] == "*/*"


async def test_request_body_gets_no_made_up_content_type(guarded: Harness) -> None:
    token = guarded.token("e1004")
    body = b'{"branch_code": "BR001", "note": "n"}'
    reader, writer = await asyncio.open_connection("127.0.0.1", guarded.port)
    head = (
        f"POST /api/waybills HTTP/1.1\r\nHost: broker.test\r\nConnection: close\r\n"
        f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode("latin-1") + body)
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    answer = json.loads(data.partition(b"\r\n\r\n")[2])
    seen = {k.lower() for k in answer["received_headers"]}
    assert answer["note"] == "n"
    assert "content-type" not in seen and "user-agent" not in seen


WAYBILL_JSON = (
    b'{"items":[{"waybill_no":"SF1","branch_code":"BR001","recipient":{"phone":"13800000042"}}],'
    b'"total":1,"limit":5,"offset":0}'
)


@pytest.mark.parametrize(
    ("answer", "reason", "words"),
    [
        (b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\n{}", "upstream.unavailable", "not valid HTTP"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
            % (len(WAYBILL_JSON) + 50, WAYBILL_JSON),
            "upstream.unavailable",
            "closed the connection before it finished answering",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "upstream.unavailable",
            "transfer coding the broker does not undo",
        ),
    ],
    ids=["malformed", "cut-short", "gzip-transfer-coding"],
)
async def test_broken_upstream_answers_are_refused_uncharged_and_pass_nothing_on(
    make_broker: BrokerFactory, answer: bytes, reason: str, words: str
) -> None:
    """An upstream speaking broken HTTP, seen from the client's side: a 502 naming what
    broke, none of the answer's bytes, nothing charged."""

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(upstream, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        broker = await make_broker(f"http://127.0.0.1:{port}")
        reply = await broker.get(f"{LIST}?limit=5", "e1001")
        assert reply.status == 502, reply.body
        assert reply.json["reason"] == reason and words in reply.json["detail"]
        assert b"SF1" not in reply.body and b"13800000042" not in reply.body
        metrics = (await broker.get("/-/metrics")).body.decode()
        assert 'broker_upstream_errors_total{kind="connection"} 1.0' in metrics
    finally:
        server.close()
    assert await me_used(broker) == 0
