"""Shadow mode: a changed policy decides alongside the live one and is only audited."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from broker.policy.problem import PolicyError
from tests.conftest import BrokerFactory

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
