"""Every decision of the HTTP door, seen from the client's side over real sockets."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from multidict import CIMultiDict

from broker.identity.jwt_authenticator import mint_token
from broker.meter.store import MemoryCounterStore, Reservation
from tests.conftest import BrokerFactory
from tests.harness import SECRET, Harness

LIST_BR001 = "/api/branches/BR001/waybills"
PROBLEM = "application/problem+json"


def shanghai(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()


def assert_problem(reply: object, status: int, reason: str) -> dict[str, object]:
    assert reply.status == status, reply.body  # type: ignore[attr-defined]
    assert reply.headers["Content-Type"].startswith(PROBLEM)  # type: ignore[attr-defined]
    body = reply.json  # type: ignore[attr-defined]
    assert body["reason"] == reason
    assert body["status"] == status
    assert body["type"] == f"/-/problems/{reason}"
    assert body["decision_id"] == reply.headers["X-Broker-Decision"]  # type: ignore[attr-defined]
    assert body["detail"]
    return body  # type: ignore[no-any-return]


async def test_own_branch_read_is_allowed_with_ratelimit_headers(broker: Harness) -> None:
    reply = await broker.get(f"{LIST_BR001}?limit=5", "e1001")
    assert reply.status == 200
    items = reply.json["items"]
    assert len(items) == 5 and {i["branch_code"] for i in items} == {"BR001"}
    assert reply.headers["RateLimit-Policy"] == '"waybill";q=500;w=36000, "requests";q=120;w=60'
    assert reply.headers["RateLimit"].startswith('"waybill";r=495;t=28800, "requests";r=119;')
    assert reply.headers["X-Broker-Decision"]


async def test_other_branch_in_path_is_denied(broker: Harness) -> None:
    body = assert_problem(await broker.get("/api/branches/BR002/waybills?limit=5", "e1001"), 403, "policy.other_branch")
    assert body["employee"] == "e1001"
    assert body["your_branches"] == ["BR001"]
    assert "roles.csv:3" in str(body["rule"])
    assert "BR002" in str(body["detail"])


async def test_other_branch_in_query_is_denied(broker: Harness) -> None:
    assert_problem(await broker.get("/api/waybills?branch=BR002&limit=5", "e1001"), 403, "policy.other_branch")
    assert (await broker.get("/api/waybills?branch=BR001&limit=5", "e1001")).status == 200


async def test_search_without_branch_is_checked_record_by_record(broker: Harness) -> None:
    # The upstream happily returns every branch: the answer is held back, nothing leaks.
    body = assert_problem(await broker.get("/api/waybills?limit=20", "e1001"), 403, "upstream.other_branch")
    assert "nothing was passed on" in str(body["detail"])
    # An HQ auditor may see every branch.
    reply = await broker.get("/api/waybills?limit=20", "e9001")
    assert reply.status == 200 and len({i["branch_code"] for i in reply.json["items"]}) > 1


async def test_single_record_of_another_branch_is_not_passed_on(broker: Harness) -> None:
    auditor_view = (await broker.get("/api/branches/BR002/waybills?limit=1", "e9001")).json["items"][0]
    number = auditor_view["waybill_no"]
    assert_problem(await broker.get(f"/api/waybills/{number}", "e1001"), 403, "upstream.other_branch")
    own = (await broker.get(f"{LIST_BR001}?limit=1", "e1001")).json["items"][0]["waybill_no"]
    reply = await broker.get(f"/api/waybills/{own}", "e1001")
    assert reply.status == 200 and reply.json["waybill_no"] == own


async def test_action_not_permitted_for_role(broker: Harness) -> None:
    body = assert_problem(
        await broker.request("POST", "/api/waybills", "e1001", json={"branch_code": "BR001"}),
        403,
        "policy.not_permitted",
    )
    assert "courier" in str(body["detail"])
    assert_problem(await broker.get("/api/branches/BR001/customers", "e1001"), 403, "policy.not_permitted")


async def test_write_to_own_branch_allowed_and_other_branch_refused_before_upstream(broker: Harness) -> None:
    recipient = {"name": "Wang Fang", "phone": "13800000000", "address": "1 Nanjing Rd, Shanghai"}
    created = await broker.request(
        "POST", "/api/waybills", "e1004", json={"branch_code": "BR001", "recipient": recipient}
    )
    assert created.status == 201 and created.json["branch_code"] == "BR001"
    before = (await broker.get("/api/waybills?branch=BR002&limit=1", "e9001")).json["total"]
    assert_problem(
        await broker.request("POST", "/api/waybills", "e1004", json={"branch_code": "BR002", "recipient": recipient}),
        403,
        "policy.other_branch",
    )
    after = (await broker.get("/api/waybills?branch=BR002&limit=1", "e9001")).json["total"]
    assert after == before  # nothing was written upstream
    assert_problem(
        await broker.request("POST", "/api/waybills", "e1004", data=b"not json", headers={"Content-Type": "x"}),
        400,
        "request.bad_body",
    )


async def test_unknown_route_is_denied_by_default(broker: Harness) -> None:
    assert_problem(await broker.get("/api/health", "e1001"), 403, "route.unknown")
    body = assert_problem(await broker.request("DELETE", LIST_BR001, "e1001"), 403, "route.unknown")
    assert "GET" in str(body["detail"])


async def test_employee_not_on_roster(broker: Harness) -> None:
    assert_problem(await broker.get(LIST_BR001, "e7777"), 403, "identity.not_on_roster")


# --- shifts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("local_time", "status"),
    [
        ("2026-12-01 21:59:59", 403),  # night shift not started
        ("2026-12-01 22:00:00", 200),  # start is inclusive
        ("2026-12-01 23:59:59", 200),
        ("2026-12-02 00:00:00", 200),  # across midnight
        ("2026-12-02 05:59:59", 200),
        ("2026-12-02 06:00:00", 403),  # end is exclusive
        ("2026-12-02 10:00:00", 403),
    ],
)
async def test_night_shift_edges(broker: Harness, local_time: str, status: int) -> None:
    broker.clock.set(shanghai(local_time))
    reply = await broker.get("/api/branches/BR002/waybills?limit=1", "e1002")
    assert reply.status == status, reply.body
    if status == 403:
        body = assert_problem(reply, 403, "shift.outside")
        assert "night-cn" in str(body["detail"])
        assert body["next_shift_start"]


async def test_off_shift_denial_says_when_the_next_shift_starts(broker: Harness) -> None:
    body = assert_problem(await broker.get("/api/branches/BR002/waybills", "e1002"), 403, "shift.outside")
    assert body["next_shift_start"] == "2026-12-01T22:00:00+08:00"  # 22:00 in Shanghai


async def test_day_shift_is_weekdays_only(broker: Harness) -> None:
    broker.clock.set(shanghai("2026-12-05 10:00:00"))  # a Saturday
    assert_problem(await broker.get(LIST_BR001, "e1001"), 403, "shift.outside")
    broker.clock.set(shanghai("2026-12-07 08:00:00"))  # Monday, first second of the shift
    assert (await broker.get(LIST_BR001, "e1001")).status == 200


async def test_shift_is_in_the_branch_time_zone(broker: Harness) -> None:
    # e2012 works 09:30-19:30 in Asia/Urumqi (UTC+6): 11:29 in Shanghai is 09:29 there.
    broker.clock.set(shanghai("2026-12-01 11:29:59"))
    assert_problem(await broker.get("/api/branches/BR012/waybills", "e2012"), 403, "shift.outside")
    broker.clock.set(shanghai("2026-12-01 11:30:00"))
    assert (await broker.get("/api/branches/BR012/waybills", "e2012")).status == 200


async def test_hq_auditor_works_any_hour(broker: Harness) -> None:
    broker.clock.set(shanghai("2026-12-06 03:00:00"))  # Sunday night
    assert (await broker.get("/api/branches/BR007/waybills?limit=3", "e9001")).status == 200


# --- bulk, rate, quota ---------------------------------------------------------------------


async def test_bulk_request_over_cap_is_refused_before_upstream(broker: Harness) -> None:
    body = assert_problem(await broker.get(f"{LIST_BR001}?limit=51", "e1001"), 403, "bulk.over_cap")
    assert body["cap"] == 50 and body["requested"] == 51
    assert "limits.csv:4" in str(body["rule"])
    assert (await broker.get(f"{LIST_BR001}?limit=50", "e1001")).status == 200


async def test_quota_runs_out_with_retry_after_and_resets_next_shift(broker: Harness) -> None:
    for _ in range(3):
        assert (await broker.get(f"{LIST_BR001}?limit=20", "e1003")).status == 200
    reply = await broker.get(f"{LIST_BR001}?limit=20", "e1003")
    body = assert_problem(reply, 429, "quota.exceeded")
    assert body["quota"] == {
        "resource": "waybill",
        "limit": 60,
        "used": 60,
        "remaining": 0,
        "resets_at": "2026-12-01T18:00:00+08:00",
    }
    assert reply.headers["Retry-After"] == str(8 * 3600)
    assert reply.headers["RateLimit"].startswith('"waybill";r=0;t=28800')
    assert reply.headers["RateLimit-Policy"].startswith('"waybill";q=60;w=36000')
    # asking for what is left still works; the next shift starts afresh
    broker.clock.set(shanghai("2026-12-02 08:00:00"))
    assert (await broker.get(f"{LIST_BR001}?limit=20", "e1003")).status == 200


async def test_quota_denial_when_asking_more_than_is_left(broker: Harness) -> None:
    for _ in range(2):
        assert (await broker.get(f"{LIST_BR001}?limit=20", "e1003")).status == 200
    assert (await broker.get(f"{LIST_BR001}?limit=15", "e1003")).status == 200
    body = assert_problem(await broker.get(f"{LIST_BR001}?limit=6", "e1003"), 429, "quota.exceeded")
    assert body["quota"]["remaining"] == 5  # type: ignore[index]
    assert (await broker.get(f"{LIST_BR001}?limit=5", "e1003")).status == 200


async def test_rate_limit_gives_429_with_retry_after(broker: Harness) -> None:
    # a courier may send 120 requests a minute (limits.csv); each asks for one record
    statuses = [(await broker.get(f"{LIST_BR001}?limit=1", "e1001")).status for _ in range(120)]
    assert statuses == [200] * 120
    reply = await broker.get(f"{LIST_BR001}?limit=1", "e1001")
    body = assert_problem(reply, 429, "rate.exceeded")
    assert int(reply.headers["Retry-After"]) >= 1
    assert body["retry_after"] >= 1  # type: ignore[operator]
    # the RateLimit header tells the same wait as Retry-After (#17), not when the whole
    # allowance has refilled
    requests = [p for p in reply.headers["RateLimit"].split(", ") if p.startswith('"requests"')]
    assert requests == [f'"requests";r=0;t={reply.headers["Retry-After"]}'], reply.headers["RateLimit"]
    broker.clock.advance(1)
    assert (await broker.get(f"{LIST_BR001}?limit=1", "e1001")).status == 200


async def test_me_shows_own_quota_state(broker: Harness) -> None:
    await broker.get(f"{LIST_BR001}?limit=7", "e1001")
    me = (await broker.get("/-/me", "e1001")).json
    assert me["employee"] == "e1001" and me["branches"] == ["BR001"] and me["in_shift"] is True
    assert me["quotas"] == [
        {"resource": "waybill", "limit": 500, "used": 7, "remaining": 493, "resets_at": "2026-12-01T18:00:00+08:00"}
    ]
    # what they may do and how much, from the policy (roles.csv, limits.csv), not only quotas
    assert me["permissions"] == [{"resource": "waybill", "action": "read", "branches": ["BR001"]}]
    assert me["limits"] == [{"resource": "waybill", "per_request": 50, "quota": 500, "quota_window": "shift"}]
    assert me["request_rate"] == {"requests": 120, "per_seconds": 60}
    assert me["probe_budget"] == {"refusals_after_answer": 30, "window": "shift"}
    unauthenticated = await broker.get("/-/me")
    assert unauthenticated.status == 401 and unauthenticated.json["reason"] == "identity.missing"


# --- identity ----------------------------------------------------------------------------


async def test_missing_token(broker: Harness) -> None:
    reply = await broker.get(LIST_BR001)
    assert_problem(reply, 401, "identity.missing")
    assert reply.headers["WWW-Authenticate"] == 'Bearer realm="broker"'


@pytest.mark.parametrize(
    "header",
    ["Basic ZTEwMDE6cGFzcw==", "Bearer", "Bearer a b", "Bearer not-a-jwt", "Bearer a.b.c"],
)
async def test_malformed_credentials(broker: Harness, header: str) -> None:
    reply = await broker.get(LIST_BR001, headers={"Authorization": header})
    assert_problem(reply, 401, "identity.malformed")
    assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]


async def test_expired_token_names_the_problem_and_never_echoes_it(broker: Harness) -> None:
    token = broker.token("e1001", ttl_seconds=-120)
    reply = await broker.get(LIST_BR001, headers={"Authorization": f"Bearer {token}"})
    assert_problem(reply, 401, "identity.expired")
    assert token not in reply.body.decode() and token not in reply.headers["WWW-Authenticate"]
    events = await broker.audit_events()
    assert token not in broker.audit_path.read_text()
    assert events[-1]["reason"] == "identity.expired"


async def test_token_signed_with_another_secret(broker: Harness) -> None:
    forged = mint_token("another-secret-that-is-long-enough-000000", "e9001", now=broker.clock.now())
    assert_problem(
        await broker.get(LIST_BR001, headers={"Authorization": f"Bearer {forged}"}), 401, "identity.bad_signature"
    )


async def test_alg_none_token_is_refused(broker: Harness) -> None:
    def part(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = json.dumps({"alg": "none", "typ": "JWT"}).encode()
    claims = json.dumps({"sub": "e9001", "exp": int(broker.clock.now()) + 600}).encode()
    token = f"{part(header)}.{part(claims)}."
    assert_problem(
        await broker.get(LIST_BR001, headers={"Authorization": f"Bearer {token}"}), 401, "identity.bad_algorithm"
    )


async def test_two_authorization_headers_are_refused(broker: Harness) -> None:
    token = broker.token("e1001")
    headers = CIMultiDict([("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")])
    async with broker.session.get(broker.url(LIST_BR001), headers=headers) as response:
        assert response.status == 401
        assert (await response.json(content_type=None))["reason"] == "identity.malformed"


# --- audit and admin ---------------------------------------------------------------------


async def test_every_decision_is_audited_allow_and_deny(broker: Harness) -> None:
    await broker.get(f"{LIST_BR001}?limit=4", "e1001")
    await broker.get("/api/branches/BR002/waybills", "e1001")
    events = await broker.audit_events(at_least=2)
    allow, deny = events[-2], events[-1]
    assert allow["verdict"] == "allow" and allow["records_returned"] == 4 and allow["records_requested"] == 4
    assert allow["employee"] == "e1001" and allow["roles"] == ["courier"] and allow["branches"] == ["BR001"]
    assert allow["resource"] == "waybill" and allow["action"] == "read" and allow["status"] == 200
    assert allow["policy_revision"] == broker.broker.policy.current.revision  # type: ignore[union-attr]
    assert allow["quota_left"] == 496 and allow["latency_ms"] > 0 and allow["client"] == "127.0.0.1"
    assert allow["method"] == "GET" and allow["path"] == f"{LIST_BR001}?limit=4"
    assert deny["verdict"] == "deny" and deny["reason"] == "policy.other_branch" and deny["status"] == 403
    assert deny["records_returned"] == 0 and deny["decision_id"] != allow["decision_id"]
    assert "rule" in deny and deny["rule"].startswith("p, courier, waybill, read")


async def test_admin_endpoints(broker: Harness) -> None:
    await broker.get(f"{LIST_BR001}?limit=1", "e1001")
    await broker.get("/api/branches/BR002/waybills", "e1001")
    assert (await broker.get("/-/healthz")).json == {"status": "ok"}
    ready = await broker.get("/-/readyz")
    assert ready.status == 200 and ready.json["ready"] is True
    metrics = (await broker.get("/-/metrics")).body.decode()
    assert 'broker_decisions_total{reason="allow",verdict="allow"} 1.0' in metrics
    assert 'broker_decisions_total{reason="policy.other_branch",verdict="deny"} 1.0' in metrics
    assert "broker_request_duration_seconds_bucket" in metrics
    policy = (await broker.get("/-/policy")).json
    assert policy["revision"] == broker.broker.policy.current.revision  # type: ignore[union-attr]
    assert policy["employees"] == 7 and policy["last_rejected"] is None
    explained = (await broker.get("/-/problems/shift.outside")).json
    assert explained["status"] == 403 and "shift" in explained["explanation"]
    assert (await broker.get("/-/problems/no.such")).status == 404


class BrokenStore(MemoryCounterStore):
    """A counter store whose backend fails: the broker must refuse, not guess."""

    async def reserve(
        self, key: str, amount: int, limit: int, expires_at: float, now: float, raise_key: str = ""
    ) -> Reservation:
        raise ConnectionError("counter backend unreachable")


async def test_internal_error_fails_closed_and_is_counted(make_broker: BrokerFactory) -> None:
    broker = await make_broker(store=BrokenStore())
    reply = await broker.get(f"{LIST_BR001}?limit=1", "e1001")
    body = assert_problem(reply, 503, "broker.error")
    assert body["verdict"] == "error"
    metrics = (await broker.get("/-/metrics")).body.decode()
    assert 'broker_decisions_total{reason="broker.error",verdict="error"} 1.0' in metrics
    events = await broker.audit_events()
    assert events[-1]["verdict"] == "error" and events[-1]["records_returned"] == 0


async def test_daily_quota_resets_at_local_midnight(broker: Harness) -> None:
    broker.clock.set(shanghai("2026-12-01 23:30:00"))
    assert (await broker.get("/api/branches/BR005/waybills?limit=10", "e9001")).status == 200
    quotas = {q["resource"]: q for q in (await broker.get("/-/me", "e9001")).json["quotas"]}
    assert quotas["waybill"]["used"] == 10 and quotas["waybill"]["resets_at"] == "2026-12-02T00:00:00+08:00"
    broker.clock.set(shanghai("2026-12-02 00:00:00"))
    quotas = {q["resource"]: q for q in (await broker.get("/-/me", "e9001")).json["quotas"]}
    assert quotas["waybill"]["used"] == 0


async def test_issuer_audience_and_not_before_are_checked(make_broker: BrokerFactory) -> None:
    broker = await make_broker(identity={"issuer": "https://login.example.test/", "audience": "broker"})
    now = broker.clock.now()

    def token(**claims: object) -> dict[str, str]:
        base: dict[str, object] = {"iss": "https://login.example.test/", "aud": "broker"}
        return {"Authorization": f"Bearer {mint_token(SECRET, 'e1001', now=now, extra=base | claims)}"}

    assert (await broker.get(f"{LIST_BR001}?limit=1", headers=token())).status == 200
    cases = [
        (token(aud="another-service"), "identity.wrong_audience"),
        (token(iss="https://login.example.test.evil/"), "identity.wrong_issuer"),
        (token(nbf=int(now) + 600), "identity.not_yet_valid"),
    ]
    for headers, reason in cases:
        reply = await broker.get(f"{LIST_BR001}?limit=1", headers=headers)
        assert_problem(reply, 401, reason)
        assert 'error="invalid_token"' in reply.headers["WWW-Authenticate"]


async def test_a_request_without_any_bound_is_refused(make_broker: BrokerFactory, policy_dir: Path) -> None:
    routes = policy_dir / "routes.toml"
    text = routes.read_text()
    first = text.index("default_limit = 20")
    routes.write_text(text[:first] + text[first + len("default_limit = 20") :])  # the first list route
    broker = await make_broker()
    body = assert_problem(await broker.get(LIST_BR001, "e1001"), 403, "bulk.unbounded")
    assert body["cap"] == 50 and body["requested"] == "unbounded"
    assert (await broker.get(f"{LIST_BR001}?limit=5", "e1001")).status == 200
