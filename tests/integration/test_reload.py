"""Hot reload: a good edit takes effect, a broken edit is refused and the old policy serves."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.conftest import BrokerFactory
from tests.harness import Harness


async def wait_for(broker: Harness, key: str, expected_change_from: object, within: float = 10.0) -> dict[str, object]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        state = (await broker.get("/-/policy")).json
        if state[key] != expected_change_from:
            return state  # type: ignore[no-any-return]
        await asyncio.sleep(0.05)
    raise AssertionError(f"/-/policy {key} stayed {expected_change_from!r}")


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


async def test_good_edit_takes_effect_on_file_change(make_broker: BrokerFactory, policy_dir: Path) -> None:
    broker = await make_broker(watch=True)
    before = (await broker.get("/-/policy")).json["revision"]
    assert (await broker.get("/api/branches/BR002/waybills?limit=1", "e3001")).json[
        "reason"
    ] == "identity.not_on_roster"
    await asyncio.sleep(0.3)  # let the watcher start
    roster = policy_dir / "roster.csv"
    roster.write_text(roster.read_text() + "g, e3001, courier, BR002\ng2, e3001, day-cn\n")
    state = await wait_for(broker, "revision", before)
    assert state["reloads"] == 1 and state["employees"] == 8
    assert (await broker.get("/api/branches/BR002/waybills?limit=1", "e3001")).status == 200
    assert (await broker.get("/api/branches/BR001/waybills?limit=1", "e3001")).status == 403
    events = await broker.audit_events(at_least=3)
    assert events[0]["policy_revision"] == before and events[-1]["policy_revision"] == state["revision"]


async def test_edit_that_fails_the_policys_own_tests_is_refused(broker: Harness, policy_dir: Path) -> None:
    # Valid on its own, but it moves e1001 out of BR001, which policies/tests/shipped.toml pins.
    edit(policy_dir / "roster.csv", "g, e1001, courier, BR001", "g, e1001, courier, BR002")
    assert await broker.broker.reload("test") is False
    problems = [str(p) for p in broker.broker.policy.last_error.problems]  # type: ignore[union-attr]
    assert any(
        "shipped.toml:" in p and "'a courier reads their own branch in their shift' expected allow, got" in p
        for p in problems
    ), problems
    assert (await broker.get("/api/branches/BR001/waybills?limit=1", "e1001")).status == 200


async def test_broken_edit_is_refused_and_last_good_policy_serves(make_broker: BrokerFactory, policy_dir: Path) -> None:
    broker = await make_broker(watch=True)
    before = (await broker.get("/-/policy")).json
    await asyncio.sleep(0.3)
    roster = policy_dir / "roster.csv"
    lines = roster.read_text().splitlines()
    roster.write_text(roster.read_text().replace("g, e1001, courier, BR001", "G, e1001, courier, BR002"))
    state = await wait_for(broker, "rejected", 0)
    assert state["revision"] == before["revision"]
    problems = state["last_rejected"]["problems"]  # type: ignore[index]
    line = next(n for n, text in enumerate(lines, start=1) if text.startswith("g, e1001"))
    assert f"roster.csv:{line}: unknown line type 'G'" in problems[0]
    # still the old policy: own branch allowed, the branch the bad edit wanted denied
    assert (await broker.get("/api/branches/BR001/waybills?limit=1", "e1001")).status == 200
    assert (await broker.get("/api/branches/BR002/waybills?limit=1", "e1001")).status == 403
    assert (await broker.get("/-/readyz")).status == 200
    metrics = (await broker.get("/-/metrics")).body.decode()
    assert "broker_policy_loaded 1.0" in metrics


async def test_model_arity_change_is_refused_on_reload(broker: Harness, policy_dir: Path) -> None:
    edit(policy_dir / "model.conf", "g = _, _, _", "g = _, _")
    assert await broker.broker.reload("test") is False
    problems = [str(p) for p in broker.broker.policy.last_error.problems]  # type: ignore[union-attr]
    assert any("model.conf" in p and "g is defined with 2 fields but g lines have 3" in p for p in problems)
    assert (await broker.get("/api/branches/BR002/waybills?limit=1", "e1001")).status == 403


async def test_partial_write_then_fix(broker: Harness, policy_dir: Path) -> None:
    limits = policy_dir / "limits.csv"
    good = limits.read_text()
    limits.write_text(good[: good.index("p3, trainee") + 20])  # truncated mid-line, no newline
    assert await broker.broker.reload("test") is False
    problems = "\n".join(str(p) for p in broker.broker.policy.last_error.problems)  # type: ignore[union-attr]
    assert "may have been truncated" in problems
    limits.write_text(good.replace("p3, manager, customer, 100, 1000, shift", "p3, manager, customer, 100, 900, shift"))
    assert await broker.broker.reload("test") is True
    reply = await broker.get("/api/branches/BR003/customers?limit=10", "e2001")
    assert reply.status == 200 and reply.headers["RateLimit-Policy"].startswith('"customer";q=900;')


async def test_edits_to_the_policys_own_tests_reload_and_every_file_reload_is_counted(
    make_broker: BrokerFactory, policy_dir: Path
) -> None:
    """A changed case under policies/tests/ re-decides whether the policy may serve (#17),
    and broker_policy_reloads_total counts reloads from file changes, not only SIGHUP."""
    broker = await make_broker(watch=True)
    await asyncio.sleep(0.3)  # let the watcher start
    cases = policy_dir / "tests" / "shipped.toml"
    original = cases.read_text()
    edit(
        cases, 'at = "2026-12-01T10:00:00+08:00"\nexpect = "allow"', 'at = "2026-12-01T10:00:00+08:00"\nexpect = "deny"'
    )
    state = await wait_for(broker, "rejected", 0)
    assert any("shipped.toml:" in p for p in state["last_rejected"]["problems"])  # type: ignore[index]
    assert (await broker.get("/api/branches/BR001/waybills?limit=1", "e1001")).status == 200  # still serving
    cases.write_text(original)
    roster = policy_dir / "roster.csv"
    before = state["revision"]
    roster.write_text(roster.read_text() + "g, e3001, courier, BR002\ng2, e3001, day-cn\n")
    await wait_for(broker, "revision", before)
    metrics = (await broker.get("/-/metrics")).body.decode()
    assert 'broker_policy_reloads_total{outcome="rejected"} 1.0' in metrics
    assert 'broker_policy_reloads_total{outcome="applied"}' in metrics
