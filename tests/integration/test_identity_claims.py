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
