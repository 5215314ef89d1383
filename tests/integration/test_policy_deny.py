"""Deny lines from the client's side: what a security team writes when a login is rented,
what the employee then sees (status, reason, the rule, a detail they can act on), and
that a reload applies and lifts them. Also the matcher edit deny lines replace: refused
on reload, the last good policy keeps serving."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import psycopg
import pytest

from tests.conftest import BrokerFactory
from tests.harness import Harness, door_settings
from tests.integration.test_http_decisions import assert_problem
from tests.integration.test_reload import wait_for

pytestmark = pytest.mark.timeout(60)

OWN = "/api/branches/BR001/waybills?limit=1"
SHIPPED_TESTS = Path(__file__).resolve().parents[2] / "policies" / "tests"


@pytest.fixture
def policy_dir(policy_dir: Path) -> Path:
    """The shipped policy without its own test cases, which pin e1001's access: a deny
    line that contradicts a case is refused like any other edit (tested below)."""
    shutil.rmtree(policy_dir / "tests")
    return policy_dir


def deny(policy_dir: Path, *lines: str) -> None:
    (policy_dir / "deny.csv").write_text("# incident 2026-12-01\n" + "".join(f"{line}\n" for line in lines))


async def reload(broker: Harness) -> None:
    assert await broker.broker.reload("test") is True, broker.broker.policy.last_error


def assert_denied(reply: object, rule: str, detail: str) -> None:
    body = assert_problem(reply, 403, "policy.denied")
    assert body["rule"] == rule
    assert detail in str(body["detail"]) and "deny rule" in str(body["detail"])
    assert "help desk" in str(body["detail"])


async def test_suspending_one_employee_and_lifting_it(broker: Harness, policy_dir: Path) -> None:
    assert (await broker.get(OWN, "e1001")).status == 200
    deny(policy_dir, "p, e1001, *, *, *, deny")
    await reload(broker)
    assert_denied(
        await broker.get(OWN, "e1001"), "p, e1001, *, *, *, deny (deny.csv:2)", "read waybill records of every branch"
    )
    assert_denied(await broker.get("/api/waybills?limit=1", "e1001"), "p, e1001, *, *, *, deny (deny.csv:2)", "")
    assert (await broker.get(OWN, "e1003")).status == 200  # a colleague in the same branch
    deny(policy_dir)
    await reload(broker)
    assert (await broker.get(OWN, "e1001")).status == 200


async def test_closing_a_role_in_one_branch(broker: Harness, policy_dir: Path) -> None:
    deny(policy_dir, "p, courier, *, *, BR001, deny")
    await reload(broker)
    assert_denied(await broker.get(OWN, "e1001"), "p, courier, *, *, BR001, deny (deny.csv:2)", "branch BR001")
    assert (await broker.get(OWN, "e1004")).status == 200  # a clerk of BR001
    assert (await broker.get(OWN, "e9001")).status == 200  # the HQ auditor
    # a courier of another branch is not affected: e1002 is only off shift at 10:00
    assert_problem(await broker.get("/api/branches/BR002/waybills?limit=1", "e1002"), 403, "shift.outside")


async def test_closing_a_resource_during_an_incident(broker: Harness, policy_dir: Path) -> None:
    deny(policy_dir, "p, *, customer, *, *, deny")
    await reload(broker)
    rule = "p, *, customer, *, *, deny (deny.csv:2)"
    assert_denied(await broker.get("/api/branches/BR003/customers?limit=1", "e2001"), rule, "read customer records")
    assert_denied(await broker.get("/api/branches/BR001/customers?limit=1", "e9001"), rule, "customer")
    assert (await broker.get("/api/branches/BR003/waybills?limit=1", "e2001")).status == 200


async def test_closing_one_branch_to_an_hq_role_keeps_the_others_open(broker: Harness, policy_dir: Path) -> None:
    deny(policy_dir, "p, auditor, waybill, read, BR001, deny")
    await reload(broker)
    assert_denied(await broker.get(OWN, "e9001"), "p, auditor, waybill, read, BR001, deny (deny.csv:2)", "BR001")
    assert (await broker.get("/api/branches/BR002/waybills?limit=1", "e9001")).status == 200
    # a search naming no branch: records of the closed branch in the answer are refused
    assert_problem(await broker.get("/api/waybills?limit=50", "e9001"), 403, "upstream.other_branch")


async def test_a_new_deny_file_is_picked_up_on_file_change(make_broker: BrokerFactory, policy_dir: Path) -> None:
    broker = await make_broker(watch=True)
    before = (await broker.get("/-/policy")).json
    await asyncio.sleep(0.3)  # let the watcher start
    (policy_dir / "incident.csv").write_text("p, e1001, waybill, *, *, deny\n")
    await wait_for(broker, "revision", before["revision"])
    assert_denied(await broker.get(OWN, "e1001"), "p, e1001, waybill, *, *, deny (incident.csv:1)", "waybill")


async def test_a_typo_in_a_suspension_is_refused_and_says_so(broker: Harness, policy_dir: Path) -> None:
    deny(policy_dir, "p, e10001, *, *, *, deny")
    assert await broker.broker.reload("test") is False
    problems = [str(p) for p in broker.broker.policy.last_error.problems]  # type: ignore[union-attr]
    assert problems == [
        "deny.csv:2: deny line: subject 'e10001' is neither a role nor an employee on the roster "
        "(hint: fix the spelling, or write * for any)"
    ]
    state = (await broker.get("/-/policy")).json
    assert state["last_rejected"]["problems"] == problems


async def test_a_deny_line_that_contradicts_the_policys_own_tests_is_refused(
    make_broker: BrokerFactory, policy_dir: Path
) -> None:
    shutil.copytree(SHIPPED_TESTS, policy_dir / "tests")
    broker = await make_broker()
    deny(policy_dir, "p, e1001, *, *, *, deny")
    assert await broker.broker.reload("test") is False
    problems = [str(p) for p in broker.broker.policy.last_error.problems]  # type: ignore[union-attr]
    assert any(
        "'a courier reads their own branch in their shift' expected allow, got policy.denied" in p for p in problems
    )


async def test_excluding_an_employee_in_the_matcher_is_refused_on_reload(broker: Harness, policy_dir: Path) -> None:
    """The matcher edit of issue #17 is refused (the last good policy serves, and says why);
    the deny line is what suspends the employee."""
    model = policy_dir / "model.conf"
    lines = model.read_text().splitlines()
    at = next(n for n, line in enumerate(lines) if line.startswith("m = "))
    lines[at] += ' && r.sub != "e1001"'
    model.write_text("\n".join(lines) + "\n")
    assert await broker.broker.reload("test") is False
    state = (await broker.get("/-/policy")).json
    assert state["last_rejected"]["problems"][0].startswith(
        f'model.conf:{at + 1}: the matcher tests `r.sub != "e1001"`, which the allow-and-deny model does not'
    )
    assert (await broker.get(OWN, "e1001")).status == 200  # nothing half-applied: the old policy serves
    lines[at] = lines[at].removesuffix(' && r.sub != "e1001"')
    model.write_text("\n".join(lines) + "\n")
    deny(policy_dir, "p, e1001, *, *, *, deny")
    await reload(broker)
    assert_problem(await broker.get(OWN, "e1001"), 403, "policy.denied")


async def test_the_postgresql_door_answers_a_deny_line_with_42501(
    make_broker: BrokerFactory, policy_dir: Path, pg_database: str
) -> None:
    broker = await make_broker(postgres=door_settings(pg_database))
    deny(policy_dir, "p, e1001, waybill, read, *, deny")
    await reload(broker)
    conn = await psycopg.AsyncConnection.connect(broker.pg_dsn("e1001"), autocommit=True)
    with pytest.raises(psycopg.Error) as caught:
        await conn.execute("SELECT waybill_no FROM waybills LIMIT 5")
    assert caught.value.sqlstate == "42501"
    assert "policy.denied" in str(caught.value) and "deny rule" in str(caught.value)
    assert caught.value.diag.message_hint and "help desk" in caught.value.diag.message_hint
    assert [row async for row in await conn.execute("SELECT 1")] == [(1,)]
    await conn.close()
