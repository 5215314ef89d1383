"""Shadow mode: a changed policy decides alongside the live one and is only audited."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from broker.policy.problem import PolicyError
from tests.conftest import BrokerFactory
from tests.raw_upstream import RawUpstream

LIST = "/api/branches/BR001/waybills"


def tightened_copy(policy_dir: Path, tmp_path: Path) -> Path:
    shadow = tmp_path / "policies-next"
    shutil.copytree(policy_dir, shadow)
    limits = shadow / "limits.csv"
    limits.write_text(
        limits.read_text().replace("p3, courier, waybill, 50, 500, shift", "p3, courier, waybill, 10, 30, shift")
    )
    # its own cases change with it, as they would in the pull request
    cases = shadow / "tests" / "shipped.toml"
    cases.write_text(
        cases.read_text()
        .replace('waybills?limit=50"', 'waybills?limit=10"')
        .replace('waybills?limit=51"', 'waybills?limit=11"')
        .replace(
            'waybills?limit=20"\nat = "2026-12-01T10:00:00+08:00"\nused = 490',
            'waybills?limit=10"\nat = "2026-12-01T10:00:00+08:00"\nused = 25',
        )
    )
    return shadow


async def test_shadow_policy_is_audited_but_not_enforced(
    make_broker: BrokerFactory, policy_dir: Path, tmp_path: Path
) -> None:
    broker = await make_broker(shadow=tightened_copy(policy_dir, tmp_path))
    served = await broker.get(f"{LIST}?limit=20", "e1001")
    assert served.status == 200 and len(served.json["items"]) == 20  # the enforced policy serves
    small = [await broker.get(f"{LIST}?limit=10", "e1001") for _ in range(4)]
    assert [r.status for r in small] == [200, 200, 200, 200]
    events = await broker.audit_events(at_least=5)
    first, *rest = events[-5:]
    assert first["verdict"] == "allow" and first["shadow_verdict"] == "deny"
    assert first["shadow_reason"] == "bulk.over_cap" and "limits.csv" in first["shadow_rule"]
    assert first["shadow_revision"] != first["policy_revision"]
    # the shadow keeps its own quota of 30: the fourth small request would have been refused
    assert [e["shadow_reason"] for e in rest] == ["allow", "allow", "allow", "quota.exceeded"]
    assert [e["verdict"] for e in rest] == ["allow", "allow", "allow", "allow"]
    me = (await broker.get("/-/me", "e1001")).json
    assert me["quotas"][0]["used"] == 60  # the real quota was charged by the enforced policy only
    metrics = (await broker.get("/-/metrics")).body.decode()
    assert 'broker_shadow_decisions_total{reason="bulk.over_cap",verdict="deny"} 1.0' in metrics
    assert 'broker_shadow_decisions_total{reason="quota.exceeded",verdict="deny"} 1.0' in metrics


async def test_without_shadow_the_event_has_no_shadow_fields(make_broker: BrokerFactory) -> None:
    broker = await make_broker()
    await broker.get(f"{LIST}?limit=1", "e1001")
    events = await broker.audit_events()
    assert "shadow_verdict" not in events[-1]


async def test_the_shadow_policy_must_pass_its_own_tests_and_shows_in_policy_state(
    make_broker: BrokerFactory, policy_dir: Path, tmp_path: Path
) -> None:
    """#17: a shadow that contradicts its own cases would report its own mistakes as
    flips; it is refused like a live policy would be, naming its own directory."""
    broken = tmp_path / "policies-broken"
    shutil.copytree(policy_dir, broken)
    roster = broken / "roster.csv"
    roster.write_text(roster.read_text().replace("g, e1001, courier, BR001", "g, e1001, courier, BR002"))
    with pytest.raises(PolicyError) as refused:
        await make_broker(shadow=broken)
    problems = [str(p) for p in refused.value.problems]
    assert any(str(broken.resolve()) in p and "shipped.toml" in p for p in problems), problems
    shadow = tightened_copy(policy_dir, tmp_path)
    broker = await make_broker(shadow=shadow)
    state = (await broker.get("/-/policy")).json
    assert state["shadow"]["directory"] == str(shadow) and state["shadow"]["revision"] != state["revision"]
    assert state["shadow"]["rejected"] == 0


async def test_a_shadow_is_charged_what_the_live_policy_charged_when_the_client_hangs_up(
    make_broker: BrokerFactory, policy_dir: Path, tmp_path: Path, raw_upstream: RawUpstream
) -> None:
    # the live policy charges the 10 records of an answer whose client hung up before it
    # was written; the shadow (a quota of 30) must count them too, or it would report
    # one answer fewer than was charged: its third later request would still pass
    ten = {"items": [{"waybill_no": f"SF{n}", "branch_code": "BR001"} for n in range(10)], "total": 10}
    raw_upstream.answer(LIST, ten, delay=0.5)
    broker = await make_broker(raw_upstream.url, shadow=tightened_copy(policy_dir, tmp_path))
    token = broker.token("e1001")
    _reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    writer.write(f"GET {LIST}?limit=10 HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()  # gone before the answer comes
    await writer.wait_closed()
    gone = (await broker.audit_events())[-1]
    assert (gone["status"], gone["records_returned"], gone["records_charged"]) == (499, 0, 10)
    raw_upstream.answer(LIST, ten)
    later = [await broker.get(f"{LIST}?limit=10", "e1001") for _ in range(3)]
    assert [r.status for r in later] == [200, 200, 200]  # the live quota is 500
    events = await broker.audit_events(at_least=4)
    assert [e["shadow_reason"] for e in events[-3:]] == ["allow", "allow", "quota.exceeded"]
