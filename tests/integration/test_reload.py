"""Hot reload: a good edit takes effect, a broken edit is refused and the old policy serves."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import time
from pathlib import Path

from broker.policy.build import SnapshotBuilder
from broker.policy.problem import PolicyProblem
from broker.policy.snapshot import PolicySnapshot
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


def add_staff(policy_dir: Path, count: int) -> None:
    """`count` more couriers of BR002 on the day shift: a roster that takes a while to
    build, so a test can reach its build process while it runs."""
    with (policy_dir / "roster.csv").open("a") as roster:
        roster.writelines(f"g, e9{n:05d}, courier, BR002\ng2, e9{n:05d}, day-cn\n" for n in range(count))


def hire_e3001(policy_dir: Path) -> None:
    """e3001 joins BR002: what a failed build must not put on the roster."""
    first = "g, e1001, courier, BR001\n"
    edit(policy_dir / "roster.csv", first, first + "g, e3001, courier, BR002\ng2, e3001, day-cn\n")


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def build_process(broker: Harness, within: float = 10.0) -> int:
    """The pid of the process building the policy now, once there is one."""
    builder = broker.broker.policy.builder
    deadline = time.monotonic() + within
    while builder.running is None:
        assert time.monotonic() < deadline, "no build process started"
        await asyncio.sleep(0.001)
    pid = builder.running.pid
    assert pid is not None
    return pid


async def still_the_old_policy(broker: Harness, before: dict[str, object]) -> dict[str, object]:
    """/-/policy after a failed build: the old revision, one refusal; and requests decided
    by the old roster (the new one would have put e3001 on it)."""
    state = (await broker.get("/-/policy")).json
    assert state["revision"] == before["revision"] and state["rejected"] == 1 and state["reloads"] == 0
    assert (await broker.get("/api/branches/BR001/waybills?limit=1", "e1001")).status == 200
    reply = await broker.get("/api/branches/BR002/waybills?limit=1", "e3001")
    assert reply.status == 403 and reply.json["reason"] == "identity.not_on_roster"
    assert (await broker.get("/-/readyz")).status == 200
    return state  # type: ignore[no-any-return]


async def test_a_build_process_killed_midway_is_a_failed_build_and_the_last_good_policy_serves(
    broker: Harness, policy_dir: Path
) -> None:
    """What the out-of-memory killer would do to a build: the reload fails, says so, is
    counted as a crash, and the next reload builds again."""
    before = (await broker.get("/-/policy")).json
    add_staff(policy_dir, 20_000)
    hire_e3001(policy_dir)
    reload = asyncio.create_task(broker.broker.reload("test"))
    pid = await build_process(broker)
    os.kill(pid, signal.SIGKILL)
    assert await reload is False
    state = await still_the_old_policy(broker, before)
    problem = state["last_rejected"]["problems"][0]  # type: ignore[index]
    assert f"the build process (pid {pid}) was killed by SIGKILL without answering" in problem
    assert "the last good policy stays" in problem
    metrics = (await broker.get("/-/metrics")).body.decode()
    assert 'broker_policy_build_failures_total{cause="crash"} 1.0' in metrics
    assert 'broker_policy_reloads_total{outcome="rejected"} 1.0' in metrics
    assert await broker.broker.reload("test") is True
    assert (await broker.get("/api/branches/BR002/waybills?limit=1", "e3001")).status == 200


async def test_a_build_that_overruns_its_time_is_killed_and_the_last_good_policy_serves(
    broker: Harness, policy_dir: Path
) -> None:
    before = (await broker.get("/-/policy")).json
    add_staff(policy_dir, 20_000)
    hire_e3001(policy_dir)
    broker.broker.policy.builder.timeout = 0.1
    reload = asyncio.create_task(broker.broker.reload("test"))
    pid = await build_process(broker)
    assert await reload is False
    assert not is_running(pid)  # killed and reaped, not left building
    state = await still_the_old_policy(broker, before)
    problem = state["last_rejected"]["problems"][0]  # type: ignore[index]
    assert "building the policy took longer than 0.1 s ([policy] build_timeout_seconds)" in problem
    assert f"the build process (pid {pid}) was killed" in problem
    metrics = (await broker.get("/-/metrics")).body.decode()
    assert 'broker_policy_build_failures_total{cause="timeout"} 1.0' in metrics


def verify_that_raises(_snapshot: PolicySnapshot) -> list[PolicyProblem]:
    """A check that breaks, whatever the policy (run in the build process)."""
    raise RuntimeError("the case files went away")


async def test_a_build_that_raises_is_a_failed_build_with_the_error_named(broker: Harness, policy_dir: Path) -> None:
    before = (await broker.get("/-/policy")).json
    hire_e3001(policy_dir)
    broker.broker.policy.builder = SnapshotBuilder(verify_that_raises, 60.0)
    assert await broker.broker.reload("test") is False
    state = await still_the_old_policy(broker, before)
    problem = state["last_rejected"]["problems"][0]  # type: ignore[index]
    assert "building the policy failed: RuntimeError: the case files went away" in problem
    metrics = (await broker.get("/-/metrics")).body.decode()
    assert 'broker_policy_build_failures_total{cause="error"} 1.0' in metrics


async def test_a_reload_leaves_the_new_policy_out_of_the_cyclic_gc(broker: Harness, policy_dir: Path) -> None:
    """The installed snapshot is frozen: a full collection after a reload does not walk it."""
    roster = policy_dir / "roster.csv"
    roster.write_text(roster.read_text() + "g, e3001, courier, BR002\ng2, e3001, day-cn\n")
    assert await broker.broker.reload("test") is True
    snapshot = broker.broker.policy.current
    assert snapshot is not None
    frozen = gc.get_freeze_count()
    assert frozen > 0
    assert not any(obj is snapshot.index for obj in gc.get_objects())


async def test_a_reload_cut_short_by_shutdown_leaves_no_build_process(broker: Harness, policy_dir: Path) -> None:
    before = (await broker.get("/-/policy")).json
    add_staff(policy_dir, 20_000)
    reload = asyncio.create_task(broker.broker.reload("test"))
    pid = await build_process(broker)
    reload.cancel()
    try:
        await reload
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("the reload finished before it could be cancelled")
    assert not is_running(pid)
    assert broker.broker.policy.builder.running is None
    assert (await broker.get("/-/policy")).json["revision"] == before["revision"]
