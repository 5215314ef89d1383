"""The HTTP door decides on what crosses the wire (issue #12): a raw-socket upstream records
every byte it receives, so a smuggled request, an unchecked record or a leaked answer shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import socket
import subprocess
import sys
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt as pyjwt  # noqa: TID251 - the test plays the upstream, which checks the assertion
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from structlog.testing import capture_logs

from broker.config import ConfigError
from tests.conftest import BrokerFactory
from tests.harness import Harness, own_words, raw_exchange, raw_request
from tests.raw_upstream import Canned, RawUpstream

SMUGGLED = (
    b'{"branch_code": "BR001"}'
    b"\r\n\r\nPOST /api/waybills HTTP/1.1\r\nHost: upstream\r\nContent-Length: 26\r\n\r\n"
    b'{"branch_code": "BR002"} '
)
EXTRA_ROUTES = """
[[route]]
name = "nested records"
method = "GET"
path = "/v2/parcels"
resource = "waybill"
action = "read"
branch = "query:branch"
records = "list"
default_limit = 20
response_items = "result.records"
branch_field = "org.branch_code"

[[route]]
name = "scan by number against the raw upstream"
method = "POST"
path = "/v2/parcels/{no}/scans"
resource = "waybill"
action = "write"
owner = "/v2/parcels/{no}"
records = "one"
branch_field = "branch_code"

[[route]]
name = "a one-record route a client may HEAD"
method = ["GET", "HEAD"]
path = "/v2/one/{no}"
resource = "waybill"
action = "read"
records = "one"
branch_field = "branch_code"

[[route]]
name = "health, mapped as carrying no records"
method = "GET"
path = "/api/status"
resource = "waybill"
action = "read"
records = "none"
"""


def post(broker: Harness, employee: str, body: bytes, *headers: str) -> bytes:
    head = [
        "POST /api/waybills HTTP/1.1",
        "Host: broker.test",
        "Connection: close",
        f"Authorization: Bearer {broker.token(employee)}",
        "Content-Type: application/json",
        *headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


WiredFactory = Callable[..., Awaitable[Harness]]


@pytest.fixture
def make_wired(make_broker: BrokerFactory, raw_upstream: RawUpstream, policy_dir: Path) -> WiredFactory:
    """A broker in front of the raw upstream, with the extra routes, and `settings` for [upstream]."""

    async def make(**settings: Any) -> Harness:
        routes = policy_dir / "routes.toml"
        routes.write_text(routes.read_text() + EXTRA_ROUTES)
        return await make_broker(raw_upstream.url, **settings)

    return make


@pytest.fixture
async def wired(make_wired: WiredFactory) -> Harness:
    return await make_wired()


def own(n: int, branch: str = "BR001", **more: Any) -> dict[str, Any]:
    return {"waybill_no": f"SF{n}", "branch_code": branch, **more}


# -- framing: the broker frames every byte it sends --------------------------------------


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "gzip, identity"])
async def test_a_compressed_request_body_is_refused_and_nothing_reaches_the_upstream(
    wired: Harness, raw_upstream: RawUpstream, coding: str
) -> None:
    packed = gzip.compress(SMUGGLED) if coding.startswith("gzip") else zlib.compress(SMUGGLED)
    data = post(wired, "e1004", packed, f"Content-Encoding: {coding}", f"Content-Length: {len(packed)}")
    reply = await raw_exchange(wired.port, data)
    assert raw_upstream.raw == b"" and raw_upstream.requests == []
    assert reply.status == 415, reply.body
    assert b"request.encoded_body" in reply.body
    events = await wired.audit_events()
    assert events[-1]["reason"] == "request.encoded_body" and events[-1]["employee"] == "e1004"


async def test_a_transfer_coding_the_broker_does_not_produce_is_refused(
    wired: Harness, raw_upstream: RawUpstream
) -> None:
    chunk = gzip.compress(SMUGGLED)
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk)
    reply = await raw_exchange(wired.port, post(wired, "e1004", body, "Transfer-Encoding: gzip, chunked"))
    assert reply.status in (400, 415), reply.body
    assert raw_upstream.raw == b""


async def test_a_chunked_body_goes_upstream_with_the_brokers_own_length(
    wired: Harness, raw_upstream: RawUpstream
) -> None:
    raw_upstream.answer("/api/waybills", own(1), status=201)
    document = b'{"branch_code": "BR001", "note": "hello"}'
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (document[:10], document[10:])) + b"0\r\n\r\n"
    reply = await raw_exchange(wired.port, post(wired, "e1004", chunked, "Transfer-Encoding: chunked"))
    assert reply.status == 201, reply.body
    [received] = raw_upstream.requests
    names = {k.lower(): v for k, v in received.headers}
    assert "transfer-encoding" not in names and names["content-length"] == str(len(document))
    assert received.body == document
    assert raw_upstream.raw.count(b"HTTP/1.1\r\n") == 1


async def test_a_body_that_trickles_is_cut_off_and_holds_no_upstream_connection(
    make_broker: BrokerFactory, raw_upstream: RawUpstream
) -> None:
    broker = await make_broker(raw_upstream.url, request_body_timeout_seconds=0.5)
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    writer.write(post(broker, "e1004", b'{"branch', "Content-Length: 40"))
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    body = await asyncio.wait_for(reader.readexactly(length), 5)
    writer.close()
    await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 408"), head
    assert b"request.slow_body" in body
    assert raw_upstream.raw == b""


async def test_duplicate_keys_in_a_body_the_decision_reads_are_refused(
    wired: Harness, raw_upstream: RawUpstream
) -> None:
    body = b'{"branch_code": "BR001", "branch_code": "BR002"}'
    reply = await raw_exchange(wired.port, post(wired, "e1004", body, f"Content-Length: {len(body)}"))
    assert reply.status == 400 and b"request.bad_body" in reply.body and b"twice" in reply.body
    nested = b'{"branch_code": "BR001", "meta": {"a": 1, "a": 2}}'
    reply = await raw_exchange(wired.port, post(wired, "e1004", nested, f"Content-Length: {len(nested)}"))
    assert reply.status == 400
    assert raw_upstream.raw == b""


# -- answers: every record, whatever the status, wherever it sits ------------------------


@pytest.mark.parametrize("status", [201, 302, 400, 404, 409, 500, 503, 600])
async def test_an_answer_of_any_status_on_a_record_route_passes_nothing_unchecked(
    wired: Harness, raw_upstream: RawUpstream, status: int
) -> None:
    leak = {"items": [own(1, "BR002", phone="13900000000")], "error": "see items"}
    raw_upstream.answer("/api/branches/BR001/waybills", leak, status=status)
    reply = await wired.get("/api/branches/BR001/waybills?limit=5", "e1001")
    assert b"13900000000" not in reply.body and b"BR002" not in reply.body and b"see items" not in reply.body
    assert reply.headers["Content-Type"] == "application/problem+json"
    assert reply.status == (status if 400 <= status < 500 else 403 if status < 300 else 502)


@pytest.mark.parametrize(
    "answer",
    [
        {"items": [own(1, related=[own(2, "BR002")])]},  # nested in an item
        {"items": [own(1)], "also": [own(2, "BR002")]},  # beside the list
        {"items": [own(1)], "meta": {"deep": {"deeper": [own(2, "BR002")]}}},  # deep beside it
        {"items": [own(1)], "waybill_no": "SF9", "branch_code": "BR002"},  # at the top level
        {"items": [own(1, sender={"branch_code": "BR003"})]},  # a nested object carrying a branch
    ],
)
async def test_records_outside_the_expected_place_are_checked(
    wired: Harness, raw_upstream: RawUpstream, answer: dict[str, Any]
) -> None:
    raw_upstream.answer("/api/branches/BR001/waybills", answer)
    reply = await wired.get("/api/branches/BR001/waybills?limit=5", "e1001")
    assert reply.status == 403 and reply.json["reason"] == "upstream.other_branch"
    assert b"BR002" not in reply.body and b"BR003" not in reply.body


async def test_a_one_record_answer_carrying_another_record_is_checked(
    wired: Harness, raw_upstream: RawUpstream
) -> None:
    raw_upstream.answer("/api/waybills/SF1", own(1, previous=own(0, "BR002")))
    reply = await wired.get("/api/waybills/SF1", "e1001")
    assert reply.status == 403 and reply.json["reason"] == "upstream.other_branch"
    raw_upstream.answer("/api/waybills/SF1", own(1, previous=own(0)))
    reply = await wired.get("/api/waybills/SF1", "e1001")
    assert reply.status == 403 and reply.json["reason"] == "upstream.too_many_records"  # two records, one allowed
    assert "2" not in own_words(reply.json["detail"])


async def test_nested_records_count_against_the_cap(wired: Harness, raw_upstream: RawUpstream) -> None:
    items = [own(n, related=[own(100 + n), own(200 + n)]) for n in range(4)]  # 12 records in 4 items
    raw_upstream.answer("/api/branches/BR001/waybills", {"items": items})
    refused = await wired.get("/api/branches/BR001/waybills?limit=10", "e1001")
    assert refused.status == 403 and refused.json["reason"] == "upstream.too_many_records"
    assert "12" not in own_words(refused.json["detail"])  # the answer's count is not told
    allowed = await wired.get("/api/branches/BR001/waybills?limit=12", "e1001")
    assert allowed.status == 200
    events = await wired.audit_events(at_least=2)
    assert events[-1]["records_returned"] == 12


async def test_a_nested_branch_field_and_list_path_can_be_mapped(wired: Harness, raw_upstream: RawUpstream) -> None:
    def parcel(n: int, branch: str) -> dict[str, Any]:
        return {"id": n, "org": {"branch_code": branch, "name": "x"}}

    raw_upstream.answer("/v2/parcels", {"result": {"records": [parcel(1, "BR001"), parcel(2, "BR001")]}})
    ok = await wired.get("/v2/parcels?branch=BR001&limit=5", "e1001")
    assert ok.status == 200 and len(ok.json["result"]["records"]) == 2
    raw_upstream.answer("/v2/parcels", {"result": {"records": [parcel(1, "BR001"), parcel(2, "BR002")]}})
    refused = await wired.get("/v2/parcels?branch=BR001&limit=5", "e1001")
    assert refused.status == 403 and refused.json["reason"] == "upstream.other_branch"
    raw_upstream.answer("/v2/parcels", {"result": {"rows": [parcel(1, "BR001")]}})
    with capture_logs() as logs:
        moved = await wired.get("/v2/parcels?branch=BR001&limit=5", "e1001")
    assert moved.status == 502 and moved.json["reason"] == "upstream.uninspectable"
    assert "result.records" in moved.json["detail"]
    assert [e["route"] for e in logs if e["event"] == "http.route_map_does_not_fit_the_answer"] == ["nested records"]
    metrics = (await wired.get("/-/metrics")).body.decode()
    assert 'broker_upstream_errors_total{kind="route_map_misfit"} 1.0' in metrics


async def test_a_route_mapped_without_records_is_caught_when_records_come_through(
    wired: Harness, raw_upstream: RawUpstream
) -> None:
    raw_upstream.answer("/api/status", {"ok": True})
    assert (await wired.get("/api/status", "e1001")).status == 200
    raw_upstream.answer("/api/status", {"ok": True, "recent": [own(1), own(2, "BR002")]})
    caught = await wired.get("/api/status", "e1001")
    assert caught.status == 502 and caught.json["reason"] == "upstream.uninspectable"
    assert b"SF1" not in caught.body
    metrics = (await wired.get("/-/metrics")).body.decode()
    assert 'broker_upstream_errors_total{kind="records_on_unmapped_route"} 1.0' in metrics


async def test_probing_with_refused_answers_costs_quota(wired: Harness, raw_upstream: RawUpstream) -> None:
    raw_upstream.answer("/api/waybills/SF1", own(1, "BR002"))
    for _ in range(3):
        assert (await wired.get("/api/waybills/SF1", "e1001")).status == 403
    assert (await wired.get("/api/waybills/SF404", "e1001")).status == 404  # the upstream's not-found
    me = (await wired.get("/-/me", "e1001")).json
    assert me["quotas"][0]["used"] == 4


# -- what crosses besides the body ---------------------------------------------------------

SPOOFED = {
    "X-HTTP-Method-Override": "DELETE",
    "X-Original-URL": "/api/branches/BR002/waybills",
    "X-Rewrite-URL": "/admin",
    "X-Real-IP": "10.0.0.1",
    "X-Forwarded-User": "e9001",
    "X-Remote-User": "e9001",
    "X_Broker_Employee": "e9001",
    "X-Broker_Decision": "forged",
    "X_Real_IP": "10.0.0.2",
    "X-Custom-Trust": "yes",
}


async def test_override_and_identity_headers_never_reach_the_upstream(
    make_broker: BrokerFactory, raw_upstream: RawUpstream
) -> None:
    broker = await make_broker(raw_upstream.url, strip_headers=("X-Custom-Trust",))
    raw_upstream.answer("/api/branches/BR001/waybills", {"items": [own(1)]})
    reply = await broker.get("/api/branches/BR001/waybills?limit=5", "e1001", headers=SPOOFED | {"X-Kept": "1"})
    assert reply.status == 200
    [received] = raw_upstream.requests
    names = {name.lower().replace("_", "-"): value for name, value in received.headers}
    for spoofed, value in SPOOFED.items():
        key = spoofed.lower().replace("_", "-")
        assert key not in names or names[key] != value, spoofed
    assert names["x-broker-employee"] == "e1001" and names["x-kept"] == "1"
    assert b"e9001" not in raw_upstream.raw and b"forged" not in raw_upstream.raw


@pytest.mark.parametrize("target", ["/api/branches/BR001/waybills?limit=5&_method=DELETE", "/api/waybills?_METHOD=put"])
async def test_a_method_override_in_the_query_is_refused(
    wired: Harness, raw_upstream: RawUpstream, target: str
) -> None:
    reply = await wired.get(target, "e1004")
    assert reply.status == 400 and reply.json["reason"] == "request.method_override"
    assert raw_upstream.raw == b""


async def test_a_method_override_in_a_form_body_is_refused(wired: Harness, raw_upstream: RawUpstream) -> None:
    body = b"branch_code=BR001&_method=DELETE"
    reply = await raw_exchange(
        wired.port,
        post(wired, "e1004", body, f"Content-Length: {len(body)}").replace(
            b"Content-Type: application/json", b"Content-Type: application/x-www-form-urlencoded"
        ),
    )
    assert reply.status == 400, reply.body
    assert raw_upstream.raw == b""


def multipart(*parts: tuple[str, bytes]) -> tuple[str, bytes]:
    body = b"".join(b"--XyZ\r\n%s\r\n\r\n%s\r\n" % (head.encode(), data) for head, data in parts) + b"--XyZ--\r\n"
    return "multipart/form-data; boundary=XyZ", body


@pytest.mark.parametrize(
    "disposition",
    [
        'Content-Disposition: form-data; name="_method"',
        "content-disposition: form-data; name=_METHOD",
        'Content-Disposition: form-data; name="x-http-method-override"',
        "Content-Disposition: form-data; name*=UTF-8''%5Fmethod",
        'Content-Disposition: form-data; name="_m%65thod"',
    ],
)
async def test_a_method_override_in_a_multipart_body_is_refused(
    wired: Harness, raw_upstream: RawUpstream, disposition: str
) -> None:
    raw_upstream.answer("/v2/parcels/SF1", own(1))
    kind, body = multipart(('Content-Disposition: form-data; name="status"', b"sorted"), (disposition, b"DELETE"))
    reply = await wired.request("POST", "/v2/parcels/SF1/scans", "e1004", data=body, headers={"Content-Type": kind})
    assert reply.status == 400 and reply.json["reason"] == "request.method_override", reply.body
    assert raw_upstream.requests == []


async def test_an_honest_multipart_body_is_forwarded_as_sent(wired: Harness, raw_upstream: RawUpstream) -> None:
    raw_upstream.answer("/v2/parcels/SF1", own(1))
    raw_upstream.answer("/v2/parcels/SF1/scans", own(1), status=201)
    kind, body = multipart(('Content-Disposition: form-data; name="status"', b"sorted"))
    reply = await wired.request("POST", "/v2/parcels/SF1/scans", "e1004", data=body, headers={"Content-Type": kind})
    assert reply.status == 201, reply.body
    assert raw_upstream.requests[-1].body == body


async def test_a_token_in_the_query_string_is_not_written_to_the_audit(
    wired: Harness, raw_upstream: RawUpstream
) -> None:
    token = wired.token("e1001")
    raw_upstream.answer("/api/branches/BR001/waybills", {"items": [own(1)]})
    await wired.get(f"/api/branches/BR001/waybills?limit=5&access_token={token}", "e1001")
    await wired.get(f"/api/branches/BR001/waybills?limit=5&x={token}", "e1001")
    events = await wired.audit_events(at_least=2)
    audit = wired.audit_path.read_text()
    assert token not in audit and token.split(".")[1] not in audit
    assert events[-2]["path"] == "/api/branches/BR001/waybills?limit=5&access_token=REDACTED"
    assert events[-1]["path"] == "/api/branches/BR001/waybills?limit=5&x=REDACTED"


# -- requests that do not name their record's branch ---------------------------------------


async def test_a_write_by_record_number_is_decided_on_the_records_branch(broker: Harness) -> None:
    own_no = (await broker.get("/api/branches/BR001/waybills?limit=1", "e9001")).json["items"][0]["waybill_no"]
    other_no = (await broker.get("/api/branches/BR002/waybills?limit=1", "e9001")).json["items"][0]["waybill_no"]
    scanned = await broker.request("POST", f"/api/waybills/{own_no}/scans", "e1004", json={"status": "sorted"})
    assert scanned.status == 201 and scanned.json["scans"] == ["sorted"]
    refused = await broker.request("POST", f"/api/waybills/{other_no}/scans", "e1004", json={"status": "sorted"})
    assert refused.status == 403 and refused.json["reason"] == "policy.other_branch"
    assert b"BR002" not in refused.body  # the record's branch is not told
    # the other branch's waybill was not changed: a later scan by its own clerk is its first
    again = await broker.request("POST", f"/api/waybills/{own_no}/scans", "e1004", json={"status": "arrived"})
    assert again.json["scans"] == ["sorted", "arrived"]
    unknown = await broker.request("POST", "/api/waybills/SF0000000000/scans", "e1004", json={"status": "sorted"})
    assert unknown.status == 404 and unknown.json["reason"] == "upstream.refused"
    events = await broker.audit_events(at_least=5)
    assert [e["record_branch"] for e in events[-3:-1]] == ["BR002", "BR001"]


async def test_looking_records_up_through_writes_costs_quota(broker: Harness) -> None:
    other_no = (await broker.get("/api/branches/BR002/waybills?limit=1", "e9001")).json["items"][0]["waybill_no"]
    for _ in range(3):
        reply = await broker.request("POST", f"/api/waybills/{other_no}/scans", "e1004", json={"status": "sorted"})
        assert reply.status == 403
    me = (await broker.get("/-/me", "e1004")).json
    assert me["quotas"][0]["used"] == 3


def test_a_write_route_with_no_way_to_know_its_branch_is_a_check_error(policy_dir: Path) -> None:
    routes = policy_dir / "routes.toml"
    routes.write_text(routes.read_text().replace('owner = "/api/waybills/{waybill_no}"', ""))
    result = subprocess.run(
        [sys.executable, "-m", "broker", "check", "--policies", str(policy_dir)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "BROKER_DEV_SECRET": "x" * 40},
    )
    assert result.returncode != 0
    assert "says no way to know whose" in result.stdout + result.stderr


# -- bounds ----------------------------------------------------------------------------------


async def closed_without_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, within: float) -> float:
    """Seconds until the broker closed the connection; fails if it answered anything."""
    started = asyncio.get_running_loop().time()
    answer = await asyncio.wait_for(reader.read(), within)
    elapsed = asyncio.get_running_loop().time() - started
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    assert answer == b"", answer
    return elapsed


@pytest.mark.parametrize("sent", [b"", b"GET /api/branches/BR001/waybills?limit=1 HTTP/1.1\r\nHost: b"])
async def test_a_connection_that_sends_no_whole_request_is_closed_after_the_idle_timeout(
    make_broker: BrokerFactory, raw_upstream: RawUpstream, sent: bytes
) -> None:
    broker = await make_broker(raw_upstream.url, server={"idle_timeout_seconds": 1.0})
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    writer.write(sent)
    assert 0.9 <= await closed_without_answer(reader, writer, 5) < 3
    assert raw_upstream.raw == b""


async def test_a_header_block_that_trickles_is_closed_however_steadily_it_comes(
    make_broker: BrokerFactory, raw_upstream: RawUpstream
) -> None:
    """Slowloris: a byte every 50 ms keeps a connection busy but never finishes the
    headers. The idle timeout runs from the connection's start (or the last answer), not
    from the last byte, so the trickle cannot hold the connection open."""
    broker = await make_broker(raw_upstream.url, server={"idle_timeout_seconds": 1.0})
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    head = b"GET /api/branches/BR001/waybills?limit=1 HTTP/1.1\r\nHost: broker.test\r\nX-Pad: " + b"a" * 200

    async def trickle() -> None:
        with contextlib.suppress(ConnectionError):
            for byte in head:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.05)

    trickling = asyncio.create_task(trickle())
    try:
        assert await closed_without_answer(reader, writer, 8) < 3  # the trickle alone would last 10 s
    finally:
        trickling.cancel()
    assert raw_upstream.raw == b""
    assert (await broker.get("/-/healthz")).status == 200  # everyone else is served


async def test_an_upstream_header_block_past_the_bound_is_refused(wired: Harness, raw_upstream: RawUpstream) -> None:
    raw_upstream.answer("/api/branches/BR001/waybills", {"items": [own(1)]}, extra=[("X-Pad", "p" * 100_000)])
    reply = await wired.get("/api/branches/BR001/waybills?limit=5", "e1001")
    assert reply.status == 502 and reply.json["reason"] == "upstream.unavailable"
    assert "headers" in reply.json["detail"] and b"ppppp" not in reply.body


async def test_an_answer_over_the_held_answers_budget_is_refused_with_retry_after(
    make_broker: BrokerFactory, raw_upstream: RawUpstream
) -> None:
    broker = await make_broker(raw_upstream.url, held_answers_budget_bytes=10_000)
    raw_upstream.answer("/api/branches/BR001/waybills", {"items": [own(n, note="x" * 1000) for n in range(15)]})
    reply = await broker.get("/api/branches/BR001/waybills?limit=20", "e1001")
    assert reply.status == 503 and reply.json["reason"] == "upstream.busy"
    assert reply.headers["Retry-After"] == "1" and b"xxxx" not in reply.body
    me = (await broker.get("/-/me", "e1001")).json
    assert me["quotas"][0]["used"] == 0


async def test_a_client_that_does_not_read_holds_its_answer_against_the_budget(
    make_broker: BrokerFactory, raw_upstream: RawUpstream
) -> None:
    broker = await make_broker(raw_upstream.url, held_answers_budget_bytes=10 << 20)
    big = {"items": [own(n, note="x" * 160_000) for n in range(50)]}  # about 8 MB
    raw_upstream.answer("/api/branches/BR001/waybills", big)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.setblocking(False)
    await asyncio.get_running_loop().sock_connect(slow, ("127.0.0.1", broker.port))
    reader, writer = await asyncio.open_connection(sock=slow)
    token = broker.token("e1001")
    writer.write(
        b"GET /api/branches/BR001/waybills?limit=50 HTTP/1.1\r\nHost: b\r\n"
        + f"Authorization: Bearer {token}\r\nConnection: close\r\n\r\n".encode()
    )
    await writer.drain()
    await asyncio.sleep(1.0)  # the broker has read and checked the answer; the client reads nothing
    refused = await broker.get("/api/branches/BR001/waybills?limit=50", "e1001")
    assert refused.status == 503 and refused.json["reason"] == "upstream.busy"
    received = await asyncio.wait_for(reader.read(), 20)  # the first client reads at last
    writer.close()
    await writer.wait_closed()
    assert received.startswith(b"HTTP/1.1 200") and len(received) > 8_000_000
    assert (await broker.get("/api/branches/BR001/waybills?limit=50", "e1001")).status == 200


async def test_a_percent_encoded_method_override_is_refused_too(wired: Harness, raw_upstream: RawUpstream) -> None:
    reply = await wired.get("/api/branches/BR001/waybills?limit=5&_m%65thod=DELETE", "e1004")
    assert reply.status == 400 and reply.json["reason"] == "request.method_override"
    assert raw_upstream.raw == b""


@pytest.mark.parametrize(
    ("lookup_status", "lookup", "status", "reason", "charged"),
    [
        (500, {"error": "down"}, 502, "upstream.refused", 0),  # the service's failure
        (410, {"error": "gone"}, 410, "upstream.refused", 1),  # a probe: charged like a read
        (200, {"items": [own(1), own(2, "BR002")]}, 502, "upstream.uninspectable", 0),  # two branches: whose?
        (200, {"waybill_no": "SF1"}, 502, "upstream.uninspectable", 0),  # no branch at all
    ],
)
async def test_a_write_whose_owner_cannot_be_read_is_not_forwarded(
    wired: Harness, raw_upstream: RawUpstream, lookup_status: int, lookup: Any, status: int, reason: str, charged: int
) -> None:
    raw_upstream.answer("/v2/parcels/SF1", lookup, status=lookup_status)
    raw_upstream.answer("/v2/parcels/SF1/scans", own(1), status=201)
    reply = await wired.request("POST", "/v2/parcels/SF1/scans", "e1004", json={"status": "sorted"})
    assert reply.status == status and reply.json["reason"] == reason
    assert b"BR002" not in reply.body and b"gone" not in reply.body and b"down" not in reply.body
    assert [r.method for r in raw_upstream.requests] == ["GET"]  # the write itself never went out
    me = (await wired.get("/-/me", "e1004")).json
    assert me["quotas"][0]["used"] == charged


async def test_an_owner_lookup_counts_against_the_held_answers_budget(
    make_wired: WiredFactory, raw_upstream: RawUpstream
) -> None:
    broker = await make_wired(held_answers_budget_bytes=1000)
    raw_upstream.answer("/v2/parcels/SF1", own(1, note="x" * 5000))
    reply = await broker.request("POST", "/v2/parcels/SF1/scans", "e1004", json={"status": "sorted"})
    assert reply.status == 503 and reply.json["reason"] == "upstream.busy"
    assert [r.method for r in raw_upstream.requests] == ["GET"]


@pytest.mark.parametrize("content_type", ["text/json", "application/vnd.api+json", "", "application/x-json-stream"])
async def test_a_route_without_records_is_scanned_whatever_json_label_the_answer_has(
    wired: Harness, raw_upstream: RawUpstream, content_type: str
) -> None:
    raw_upstream.answers["/api/status"] = Canned(
        200, orjson.dumps({"recent": [own(1), own(2, "BR002")]}), content_type=content_type
    )
    reply = await wired.get("/api/status", "e1001")
    assert reply.status == 502 and reply.json["reason"] == "upstream.uninspectable"
    assert b"BR002" not in reply.body


async def test_a_json_answer_on_a_route_without_records_too_large_to_scan_is_refused(
    make_wired: WiredFactory, raw_upstream: RawUpstream
) -> None:
    broker = await make_wired(max_response_inspect_bytes=2000)
    raw_upstream.answer("/api/status", {"recent": [own(n, "BR002") for n in range(100)]})
    reply = await broker.get("/api/status", "e1001")
    assert reply.status == 502 and reply.json["reason"] == "upstream.uninspectable"
    assert b"BR002" not in reply.body


async def test_head_on_a_record_route_is_checked_like_a_get_and_answers_without_a_body(
    wired: Harness, raw_upstream: RawUpstream
) -> None:
    raw_upstream.answer("/v2/one/SF1", own(1))
    raw_upstream.answer("/v2/one/SF2", own(2, "BR002"))
    reply = await wired.request("HEAD", "/v2/one/SF1", "e1001")
    assert reply.status == 200 and reply.body == b""
    other = await wired.request("HEAD", "/v2/one/SF2", "e1001")  # "does SF2 exist?" is a probe, not free
    assert other.status == 403
    assert [r.method for r in raw_upstream.requests] == ["GET", "GET"]
    events = await wired.audit_events(at_least=2)
    assert events[-1]["reason"] == "upstream.other_branch" and events[-1]["probe"] is True


async def test_range_and_conditional_headers_never_reach_the_upstream(
    wired: Harness, raw_upstream: RawUpstream
) -> None:
    """A 206 cannot be checked and a 304 says "this record exists" with no record to count:
    the broker always asks for the whole answer."""
    raw_upstream.answer("/v2/one/SF1", own(1))
    conditional = {
        "Range": "bytes=1-", "If-Range": '"v1"', "If-None-Match": "*", "If-Match": '"v1"',
        "If-Modified-Since": "Tue, 01 Dec 2026 00:00:00 GMT", "If-Unmodified-Since": "Tue, 01 Dec 2026 00:00:00 GMT",
    }  # fmt: skip
    reply = await wired.get("/v2/one/SF1", "e1001", headers=conditional)
    assert reply.status == 200
    sent = {name.lower() for name, _ in raw_upstream.requests[-1].headers}
    assert not sent & {name.lower() for name in conditional}, sent


@pytest.mark.parametrize("status", [206, 304])
async def test_a_partial_or_not_modified_answer_on_a_record_route_is_refused(
    wired: Harness, raw_upstream: RawUpstream, status: int
) -> None:
    raw_upstream.answers["/v2/one/SF1"] = Canned(status, b'{"waybill_no": "SF1", "branch_code": "BR002"}')
    reply = await wired.get("/v2/one/SF1", "e1001")
    assert reply.status == 502 and reply.json["reason"] == "upstream.refused"
    assert b"BR002" not in reply.body


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"branch_code": "BR002", "phone": "138"}\n{"branch_code": "BR003"}\n'),  # NDJSON
        ("application/json", b'{"branch_code": "BR002", "weight": NaN}'),
        ("application/javascript", b'callback({"branch_code": "BR002"})'),
        ("application/octet-stream", b"waybill_no,branch_code\nSF1,BR002\n"),
        ("application/x-msgpack", b"\x81\xabbranch_code\xa5BR002"),
    ],
)
async def test_answers_that_are_not_json_after_all_are_searched_as_text_on_unmapped_routes(
    wired: Harness, raw_upstream: RawUpstream, content_type: str, body: bytes
) -> None:
    raw_upstream.answers["/api/status"] = Canned(200, body, content_type)
    reply = await wired.get("/api/status", "e1001")
    assert reply.status == 502 and reply.json["reason"] == "upstream.uninspectable", reply.body
    assert b"BR002" not in reply.body


async def test_a_percent_encoded_token_in_the_query_is_redacted_too(wired: Harness, raw_upstream: RawUpstream) -> None:
    token = wired.token("e1001")
    encoded = "".join(f"%{ord(c):02X}" for c in token[:3]) + token[3:]  # %65%79%4A... = eyJ...
    raw_upstream.answer("/api/branches/BR001/waybills", {"items": [own(1)]})
    auth = {"Authorization": f"Bearer {token}"}
    await raw_request(wired.port, f"/api/branches/BR001/waybills?limit=5&t={encoded}", auth)
    await raw_request(wired.port, "/api/branches/BR001/waybills?limit=5&%74oken=hunter2", auth)
    events = await wired.audit_events(at_least=2)
    assert events[-2]["path"].endswith("&t=REDACTED") and events[-1]["path"].endswith("&%74oken=REDACTED")
    assert "hunter2" not in wired.audit_path.read_text()


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/csv", b"waybill_no,branch_code,recipient_phone\r\nSF1,BR002,13800000000\r\n"),
        ("text/plain; charset=utf-8", b"waybill_no\tBranch_Code\nSF1\tBR002\n"),
        ("application/xml", b"<waybills><waybill><branch_code>BR002</branch_code></waybill></waybills>"),
        ("text/html", b"<table><tr><th>branch_code</th></tr><tr><td>BR002</td></tr></table>"),
    ],
)
async def test_a_text_export_on_a_route_mapped_without_records_is_refused(
    wired: Harness, raw_upstream: RawUpstream, content_type: str, body: bytes
) -> None:
    raw_upstream.answers["/api/status"] = Canned(200, body, content_type)
    reply = await wired.get("/api/status", "e1001")
    assert reply.status == 502 and reply.json["reason"] == "upstream.uninspectable"
    assert b"BR002" not in reply.body and b"13800000000" not in reply.body
    metrics = (await wired.get("/-/metrics")).body.decode()
    assert 'broker_upstream_errors_total{kind="records_on_unmapped_route"} 1.0' in metrics


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("text/plain", b"ok: all branches up (branch_codes are listed elsewhere)"),  # another word
        ("text/csv", b"service,state\r\nsorting,up\r\n"),
        ("image/png", b"\x89PNG\r\n\x1a\nbranch_code"),  # binary passes as it comes
    ],
)
async def test_text_without_a_branch_field_passes_on_a_route_mapped_without_records(
    wired: Harness, raw_upstream: RawUpstream, content_type: str, body: bytes
) -> None:
    raw_upstream.answers["/api/status"] = Canned(200, body, content_type)
    reply = await wired.get("/api/status", "e1001")
    assert reply.status == 200 and reply.body == body


async def test_a_compressed_answer_on_a_route_mapped_without_records_is_refused(
    wired: Harness, raw_upstream: RawUpstream
) -> None:
    packed = gzip.compress(orjson.dumps({"items": [own(1, "BR002")]}))
    raw_upstream.answers["/api/status"] = Canned(200, packed, "application/json", [("Content-Encoding", "gzip")])
    reply = await wired.get("/api/status", "e1001", headers={"Accept-Encoding": "gzip"})
    assert reply.status == 502 and reply.json["reason"] == "upstream.uninspectable"
    sent = {name.lower(): value for name, value in raw_upstream.requests[-1].headers}
    assert sent["accept-encoding"] == "identity"  # the broker never asks for a compressed answer


@pytest.mark.parametrize("kind", ["ed25519", "rsa"])
async def test_the_upstream_gets_a_signed_assertion_of_the_decision_and_never_the_clients(
    make_broker: BrokerFactory, raw_upstream: RawUpstream, tmp_path: Path, kind: str
) -> None:
    key = ed25519.Ed25519PrivateKey.generate() if kind == "ed25519" else rsa.generate_private_key(65537, 2048)
    key_file = tmp_path / "assertion.pem"
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    broker = await make_broker(raw_upstream.url, assertion_key_file=str(key_file))
    raw_upstream.answer("/api/branches/BR001/waybills", {"items": [own(1)]})
    forged = pyjwt.encode(
        {"sub": "e9001", "roles": ["auditor"]}, "a-guessed-secret-of-thirty-two-bytes", algorithm="HS256"
    )
    reply = await broker.get("/api/branches/BR001/waybills?limit=5", "e1001", headers={"X-Broker-Assertion": forged})
    assert reply.status == 200
    sent = [value for name, value in raw_upstream.requests[-1].headers if name.lower() == "x-broker-assertion"]
    assert len(sent) == 1 and sent[0] != forged
    claims = pyjwt.decode(
        sent[0], key.public_key(), algorithms=["EdDSA" if kind == "ed25519" else "RS256"], audience=raw_upstream.url
    )
    assert claims["sub"] == "e1001" and claims["roles"] == ["courier"] and claims["branches"] == ["BR001"]
    assert (claims["resource"], claims["action"], claims["record_branch"]) == ("waybill", "read", "BR001")
    assert claims["jti"] == reply.headers["X-Broker-Decision"] and claims["exp"] - claims["iat"] == 30


async def test_an_unusable_assertion_key_stops_the_broker_naming_the_setting(
    make_broker: BrokerFactory, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a key")
    with pytest.raises(ConfigError, match=r"\[upstream\] assertion_key_file: .*not an unencrypted PEM private key"):
        await make_broker(assertion_key_file=str(bad))


@pytest.mark.parametrize(
    ("target", "body"),
    [
        ("/api/waybills?branch_code=BR002", b'{"branch_code": "BR001"}'),  # Rails, Flask, PHP merge the two
        ("/api/waybills?Branch_Code=BR002", b'{"branch_code": "BR001"}'),
        ("/api/waybills", b'{"branch_code": "BR001", "Branch_Code": "BR002"}'),  # Go, .NET ignore case
    ],
)
async def test_a_write_that_names_its_branch_twice_is_refused_before_the_upstream(
    wired: Harness, raw_upstream: RawUpstream, target: str, body: bytes
) -> None:
    reply = await wired.request("POST", target, "e1004", data=body, headers={"Content-Type": "application/json"})
    assert reply.status == 400 and reply.json["reason"] == "request.bad_body", reply.body
    assert raw_upstream.requests == []


async def test_metrics_and_policy_state_answer_only_this_machine_on_the_proxy_port(wired: Harness) -> None:
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        for path in ("/-/metrics", "/-/policy"):
            async with session.get(wired.url(path)) as reply:
                assert reply.status == 403, path
        async with session.get(wired.url("/-/readyz")) as reply:
            assert reply.status == 200  # probes still reach readiness
    assert (await wired.get("/-/metrics")).status == 200  # from 127.0.0.1


# -- a key named twice: the parse keeps the last value, a client may read the first ------


@pytest.mark.parametrize(
    ("path", "target", "body"),
    [
        # a list of records without their branch field, hidden under a repeated "items"
        (
            "/api/branches/BR001/waybills",
            "/api/branches/BR001/waybills?limit=5",
            b'{"items":[{"waybill_no":"SF1","phone":"13900000001"}],"items":[{"waybill_no":"SF2","branch_code":"BR001"}]}',
        ),
        # another branch's code under a repeated branch field
        (
            "/api/branches/BR001/waybills",
            "/api/branches/BR001/waybills?limit=5",
            b'{"items":[{"waybill_no":"SF1","branch_code":"BR002","phone":"13900000001","branch_code":"BR001"}]}',
        ),
        # another branch's record nested under a repeated key, in an answer the byte proof leaves to the walk
        (
            "/api/branches/BR001/waybills",
            "/api/branches/BR001/waybills?limit=5",
            b'{"items":[{"waybill_no":"SF1","branch_code":"BR001","related":[{"waybill_no":"SF2","branch_code":"BR001"}],'
            b'"x":{"branch_code":"BR002","phone":"13900000001"},"x":null}]}',
        ),
        # the same with an escape in it (no byte proof at all)
        (
            "/api/branches/BR001/waybills",
            "/api/branches/BR001/waybills?limit=5",
            b'{"items":[{"waybill_no":"SF\\u0031","branch_code":"BR001",'
            b'"x":{"branch_code":"BR002","phone":"13900000001"},"x":null}]}',
        ),
        # a dotted branch field named twice inside its object
        (
            "/v2/parcels",
            "/v2/parcels?branch=BR001",
            b'{"result":{"records":[{"org":{"branch_code":"BR002","branch_code":"BR001"},"phone":"13900000001"}]}}',
        ),
        # a one-record answer whose record hides behind a repeated top-level field
        (
            "/api/waybills/SF1",
            "/api/waybills/SF1",
            b'{"waybill_no":"SF1","branch_code":"BR001","previous":{"branch_code":"BR002","phone":"13900000001"},'
            b'"previous":null}',
        ),
        # a route mapped as carrying no records: a record hidden under a repeated key
        (
            "/api/status",
            "/api/status",
            b'{"ok":true,"detail":{"waybill_no":"SF9","branch_code":"BR002","phone":"13900000001"},"detail":"fine"}',
        ),
    ],
)
async def test_an_answer_naming_a_key_twice_is_refused_when_it_could_hide_records(
    wired: Harness, raw_upstream: RawUpstream, path: str, target: str, body: bytes
) -> None:
    raw_upstream.answers[path] = Canned(200, body)
    reply = await wired.get(target, "e1001")
    assert reply.status == 502 and reply.json["reason"] == "upstream.uninspectable", reply.body
    assert b"13900000001" not in reply.body and b"BR002" not in reply.body


async def test_an_escaped_answer_with_every_key_once_still_passes(wired: Harness, raw_upstream: RawUpstream) -> None:
    """The strict parse refuses repeated keys, not escapes: a service that escapes its
    non-ASCII text (Python's json.dumps does by default) is served as before."""
    body = b'{"items":[{"waybill_no":"SF1","branch_code":"BR001","recipient":"\\u5f20\\u4e09"}]}'
    raw_upstream.answers["/api/branches/BR001/waybills"] = Canned(200, body)
    reply = await wired.get("/api/branches/BR001/waybills?limit=5", "e1001")
    assert reply.status == 200 and reply.body == body


async def test_a_record_looked_up_for_its_owner_naming_its_branch_twice_is_refused(
    wired: Harness, raw_upstream: RawUpstream
) -> None:
    raw_upstream.answers["/v2/parcels/SF1"] = Canned(
        200, b'{"waybill_no":"SF1","branch_code":"BR002","branch_code":"BR001"}'
    )
    reply = await wired.request("POST", "/v2/parcels/SF1/scans", "e1004", json={"status": "sorted"})
    assert reply.status == 502 and reply.json["reason"] == "upstream.uninspectable", reply.body
    assert [r.method for r in raw_upstream.requests] == ["GET"]  # the lookup only: the write never went upstream
