"""Paths and query strings that two parsers could read differently are refused, not guessed."""

from __future__ import annotations

import pytest

from tests.harness import Harness, raw_request


def auth(broker: Harness, employee: str = "e1001") -> dict[str, str]:
    return {"Authorization": f"Bearer {broker.token(employee)}"}


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("/api/branches/BR001/../BR002/waybills", "'.' or '..'"),
        ("/api/branches/BR001/%2e%2e/BR002/waybills", "'.' or '..'"),
        ("/api/branches/BR002%2Fwaybills", "encoded slash"),
        ("/api/branches/BR001%252F/waybills", "encoded percent"),
        ("//api/branches/BR001/waybills", "empty segment"),
        ("/api//branches/BR001/waybills", "empty segment"),
        ("/api/branches/BR001;jsessionid=1/waybills", "; parameter"),
        ("/api/branches/BR001%3Bx/waybills", "';' path parameter"),
        ("/api/branches/BR001\\..\\BR002/waybills", "backslash"),
        ("/api/branches/BR%zz1/waybills", "broken percent escape"),
        ("/api/branches/BR001%00/waybills", "control character"),
        ("/api/branches/%C0%AE%C0%AE/waybills", "not valid UTF-8"),
    ],
)
async def test_ambiguous_paths_are_refused(broker: Harness, target: str, fragment: str) -> None:
    reply = await raw_request(broker.port, target, auth(broker))
    assert reply.status == 400, reply.body
    body = reply.json
    assert body["reason"] == "request.bad_path"
    assert fragment in body["detail"]
    events = await broker.audit_events()
    assert events[-1]["reason"] == "request.bad_path" and events[-1]["employee"] == "e1001"


async def test_percent_encoded_branch_is_decided_as_decoded_and_forwarded_raw(broker: Harness) -> None:
    # BR00%32 is BR002 to the upstream: the broker must decide on BR002, not on the raw text.
    denied = await raw_request(broker.port, "/api/branches/BR00%32/waybills?limit=1", auth(broker))
    assert denied.status == 403 and denied.json["reason"] == "policy.other_branch"
    allowed = await raw_request(broker.port, "/api/branches/BR00%31/waybills?limit=1", auth(broker))
    assert allowed.status == 200 and allowed.json["items"][0]["branch_code"] == "BR001"


async def test_case_matters_like_the_upstream_router(broker: Harness) -> None:
    reply = await raw_request(broker.port, "/API/branches/BR001/waybills", auth(broker))
    assert reply.status == 403 and reply.json["reason"] == "route.unknown"


async def test_trailing_slash_is_decided_as_the_route_and_passed_through(broker: Harness) -> None:
    # Decided as the list route (same policy); the demo upstream itself answers 404.
    other = await raw_request(broker.port, "/api/branches/BR002/waybills/", auth(broker))
    assert other.status == 403 and other.json["reason"] == "policy.other_branch"
    own = await raw_request(broker.port, "/api/branches/BR001/waybills/", auth(broker))
    assert own.status == 404


async def test_absolute_form_target_is_refused(broker: Harness) -> None:
    reply = await raw_request(broker.port, "http://evil.test/api/branches/BR002/waybills", auth(broker))
    assert reply.status in (400, 403)
    assert reply.json["reason"] in ("request.bad_path", "route.unknown")


@pytest.mark.parametrize(
    "query",
    [
        "limit=10&limit=100000",
        "limit=10&lim%69t=100000",
        "limit=10&limit=10",
    ],
)
async def test_repeated_limit_is_refused(broker: Harness, query: str) -> None:
    reply = await raw_request(broker.port, f"/api/branches/BR001/waybills?{query}", auth(broker))
    assert reply.status == 400
    assert reply.json["reason"] == "request.ambiguous_query"
    assert "'limit'" in reply.json["detail"]


async def test_repeated_branch_is_refused(broker: Harness) -> None:
    reply = await raw_request(broker.port, "/api/waybills?branch=BR001&branch=BR002&limit=1", auth(broker))
    assert reply.status == 400 and reply.json["reason"] == "request.ambiguous_query"
    empty = await raw_request(broker.port, "/api/waybills?branch=&limit=1", auth(broker))
    assert empty.status == 400 and empty.json["reason"] == "request.ambiguous_query"


@pytest.mark.parametrize("value", ["abc", "0", "-1", "1e5", "+5", "%2B5", "5.0", "", "1000000000", "%EF%BC%95"])
async def test_bad_limits_are_refused(broker: Harness, value: str) -> None:
    reply = await raw_request(broker.port, f"/api/branches/BR001/waybills?limit={value}", auth(broker))
    assert reply.status == 400, reply.body
    assert reply.json["reason"] == "request.bad_limit"


async def test_semicolon_is_not_a_query_separator_here(broker: Harness) -> None:
    # `limit=5;limit=100000` is one value to aiohttp; it is not a number, so it is refused.
    reply = await raw_request(broker.port, "/api/branches/BR001/waybills?limit=5;limit=100000", auth(broker))
    assert reply.status == 400 and reply.json["reason"] == "request.bad_limit"


async def test_missing_limit_uses_the_upstream_default(broker: Harness) -> None:
    reply = await raw_request(broker.port, "/api/branches/BR001/waybills", auth(broker))
    assert reply.status == 200 and len(reply.json["items"]) == 20
    events = await broker.audit_events()
    assert events[-1]["records_requested"] == 20 and events[-1]["records_returned"] == 20


async def test_both_content_length_and_chunked_is_refused(broker: Harness) -> None:
    headers = auth(broker, "e1004") | {"Content-Length": "5", "Transfer-Encoding": "chunked"}
    reply = await raw_request(broker.port, "/api/waybills", headers, method="POST")
    assert reply.status == 400
