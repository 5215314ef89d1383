"""The proxy port's dispatch (`broker.app.BrokerRunner`): upstream-bound requests skip
aiohttp's router, everything else goes through it. Both ways must decide alike, and
nothing may reach the upstream by looking like one way to the dispatch and the other
to the router."""

from __future__ import annotations

import asyncio
import json

from tests.harness import Harness, Reply, raw_request


async def test_the_brokers_own_paths_are_answered_by_the_broker_however_they_are_spelled(broker: Harness) -> None:
    for target in ("/-/healthz", "/%2D/healthz", "/%2d/healthz"):
        reply = await raw_request(broker.port, target)
        assert reply.status == 200 and json.loads(reply.body) == {"status": "ok"}, (target, reply)


async def test_a_target_is_answered_alike_whether_or_not_it_asks_for_100_continue(broker: Harness) -> None:
    # with an Expect header every request goes through the router: the fast path must agree
    token = {"Authorization": f"Bearer {broker.token('e1001')}"}
    for target in (
        "/-/healthz",
        "/%2D/healthz",
        "http://broker.test/-/healthz",
        "http://broker.test/api/branches/BR001/waybills?limit=1",
        "/api/branches/BR001/waybills?limit=1",
        "/api/branches/BR002/waybills?limit=1",
        "//-/healthz",
    ):
        plain = await raw_request(broker.port, target, token)
        expecting = await _after_continue(broker.port, target, token)
        assert plain.status == expecting.status, (target, plain, expecting)
        assert ("X-Broker-Decision" in plain.headers) == ("X-Broker-Decision" in expecting.headers), target


async def _after_continue(port: int, target: str, headers: dict[str, str]) -> Reply:
    """The final answer to a bodiless request sent with `Expect: 100-continue`."""
    lines = [f"GET {target} HTTP/1.1", "Host: broker.test", "Connection: close", "Expect: 100-continue"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    if answer.startswith(b"HTTP/1.1 100"):
        answer = answer.partition(b"\r\n\r\n")[2]
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = dict(line.split(": ", 1) for line in header_lines if ": " in line)
    return Reply(int(status_line.split()[1]), parsed, body)


async def test_a_spelling_the_router_decodes_is_decided_like_the_plain_one(broker: Harness) -> None:
    token = broker.token("e1001")
    plain = await raw_request(broker.port, "/api/branches/BR002/waybills?limit=1", {"Authorization": f"Bearer {token}"})
    encoded = await raw_request(
        broker.port, "/%61pi/branches/BR002/waybills?limit=1", {"Authorization": f"Bearer {token}"}
    )
    assert plain.status == 403 and json.loads(plain.body)["reason"] == "policy.other_branch"
    # the router's way: not the same route to the classifier (it decides on the path as
    # sent), but never an answer from another branch
    assert encoded.status in (403, 404), encoded
    assert b"BR002" not in encoded.body or json.loads(encoded.body).get("reason"), encoded


async def test_a_write_that_waits_for_100_continue_gets_it_and_is_decided(broker: Harness) -> None:
    recipient = {"name": "Ms Expect", "phone": "13800000000", "address": "1 Nanjing Rd, Shanghai"}
    body = json.dumps({"branch_code": "BR001", "recipient": recipient}).encode()
    head = (
        "POST /api/waybills HTTP/1.1\r\nHost: broker.test\r\nConnection: close\r\n"
        f"Authorization: Bearer {broker.token('e1004')}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        writer.write(head.encode())
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100 Continue"), interim
        writer.write(body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status = int(answer.split(b" ", 2)[1])
    assert status == 201, answer[-400:]
    assert b"X-Broker-Decision" in answer

    other = json.dumps({"branch_code": "BR002", "recipient": recipient}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    try:
        writer.write(head.replace(str(len(body)), str(len(other))).encode())
        await writer.drain()
        await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(other)
        await writer.drain()
        refused = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert int(refused.split(b" ", 2)[1]) == 403 and b"policy.other_branch" in refused, refused[:300]
