"""An identity provider made authoritative for branch and roles (off by default)."""

from __future__ import annotations

from broker.identity.jwt_authenticator import mint_token
from tests.conftest import BrokerFactory
from tests.harness import SECRET, Harness

CLAIMS = {"branch_claim": "branch", "roles_claim": "roles"}


def bearer(broker: Harness, employee: str, **claims: object) -> dict[str, str]:
    token = mint_token(SECRET, employee, now=broker.clock.now(), extra=claims)
    return {"Authorization": f"Bearer {token}"}


async def test_by_default_claims_are_ignored_and_the_roster_decides(broker: Harness) -> None:
    headers = bearer(broker, "e1001", branch="BR002", roles=["auditor"])
    reply = await broker.get("/api/branches/BR002/waybills?limit=1", headers=headers)
    assert reply.status == 403 and reply.json["reason"] == "policy.other_branch"


async def test_trusted_claims_replace_roster_branch_and_roles(make_broker: BrokerFactory) -> None:
    broker = await make_broker(identity=CLAIMS)
    headers = bearer(broker, "e1001", branch="BR002", roles=["courier"])
    assert (await broker.get("/api/branches/BR002/waybills?limit=1", headers=headers)).status == 200
    other = await broker.get("/api/branches/BR001/waybills?limit=1", headers=headers)
    assert other.status == 403 and other.json["reason"] == "policy.other_branch"
    me = (await broker.get("/-/me", headers=headers)).json
    assert me["branches"] == ["BR002"] and me["roles"] == ["courier"] and me["shifts"] == ["day-cn"]
    # the next token may say otherwise: nothing about the claims is remembered
    moved = bearer(broker, "e1001", branch="BR003", roles=["courier"])
    assert (await broker.get("/api/branches/BR003/waybills?limit=1", headers=moved)).status == 200
    assert (await broker.get("/api/branches/BR002/waybills?limit=1", headers=moved)).status == 403
    events = await broker.audit_events(at_least=5)
    assert events[-1]["branches"] == ["BR003"]


async def test_shifts_still_come_from_the_roster(make_broker: BrokerFactory) -> None:
    broker = await make_broker(identity=CLAIMS)
    stranger = bearer(broker, "e5555", branch="BR002", roles=["courier"])
    reply = await broker.get("/api/branches/BR002/waybills?limit=1", headers=stranger)
    assert reply.status == 403 and reply.json["reason"] == "shift.outside"
    assert "no shift on the roster" in reply.json["detail"]


async def test_unknown_or_missing_claims_are_refused(make_broker: BrokerFactory) -> None:
    broker = await make_broker(identity=CLAIMS)
    unknown = await broker.get(
        "/api/branches/BR001/waybills", headers=bearer(broker, "e1001", branch="BR001", roles=["root"])
    )
    assert unknown.status == 403 and unknown.json["reason"] == "identity.bad_claims"
    assert "root" in unknown.json["detail"]
    missing = await broker.get("/api/branches/BR001/waybills", headers=bearer(broker, "e1001", branch="BR001"))
    assert missing.status == 401 and missing.json["reason"] == "identity.malformed"
    assert "'roles' claim" in missing.json["detail"]


async def test_limits_follow_the_claimed_roles_token_by_token(make_broker: BrokerFactory) -> None:
    """Limits are memoised per set of roles, never per employee: the same person's next
    token with other roles gets that token's cap and quota, and back again."""
    broker = await make_broker(identity=CLAIMS)
    as_courier = bearer(broker, "e1001", branch="BR001", roles=["courier"])
    as_manager = bearer(broker, "e1001", branch="BR001", roles=["manager"])
    over_courier_cap = "/api/branches/BR001/waybills?limit=60"
    refused = await broker.get(over_courier_cap, headers=as_courier)
    assert refused.status == 403 and refused.json["reason"] == "bulk.over_cap"
    assert "at most 50 per request" in refused.json["detail"]
    allowed = await broker.get(over_courier_cap, headers=as_manager)
    assert allowed.status == 200
    assert '"waybill";q=5000' in allowed.headers["RateLimit-Policy"]
    again = await broker.get(over_courier_cap, headers=as_courier)
    assert again.status == 403 and again.json["reason"] == "bulk.over_cap"
    small = await broker.get("/api/branches/BR001/waybills?limit=5", headers=as_courier)
    assert small.status == 200 and '"waybill";q=500' in small.headers["RateLimit-Policy"]
