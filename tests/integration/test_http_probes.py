"""The probe budget (`p5` lines): refusals an employee causes after the service answered
(another branch's record, more records than the cap, the service's not-found) are yes/no
answers about the data. Past the budget, every record request is refused with 429 until
the window ends, whichever way the employee asks.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from broker.policy.lint import lint
from broker.policy.problem import PolicyError
from broker.policy.snapshot import load_snapshot
from tests.conftest import BrokerFactory
from tests.harness import Harness
from tests.integration.test_http_wire import EXTRA_ROUTES
from tests.raw_upstream import RawUpstream


def own(n: int, branch: str = "BR001") -> dict[str, Any]:
    return {"waybill_no": f"SF{n}", "branch_code": branch}


def set_probe_budget(policy_dir: Path, role: str, line: str) -> None:
    limits = policy_dir / "limits.csv"
    kept = [row for row in limits.read_text().splitlines() if not row.startswith(f"p5, {role},")]
    limits.write_text("\n".join([*kept, line]) + "\n")


@pytest.fixture
async def probed(make_broker: BrokerFactory, raw_upstream: RawUpstream, policy_dir: Path) -> Harness:
    """A courier (e1001) and a clerk (e1004) with a budget of 3 refusals an hour."""
    set_probe_budget(policy_dir, "courier", "p5, courier, 3, 1h")
    set_probe_budget(policy_dir, "clerk", "p5, clerk, 3, 1h")
    routes = policy_dir / "routes.toml"
    routes.write_text(routes.read_text() + EXTRA_ROUTES)
    raw_upstream.answer("/api/waybills/SF1", own(1))
    raw_upstream.answer("/api/waybills/SF2", own(2, "BR002"))
    return await make_broker(raw_upstream.url)


async def test_refusals_after_the_answer_spend_the_budget_then_record_requests_get_429(
    probed: Harness, raw_upstream: RawUpstream
) -> None:
    assert (await probed.get("/api/waybills/SF2", "e1001")).status == 403  # another branch's
    assert (await probed.get("/api/waybills/SF404", "e1001")).status == 404  # the service's not-found
    assert (await probed.get("/api/waybills/SF2", "e1001")).status == 403
    asked = len(raw_upstream.requests)
    refused = await probed.get("/api/waybills/SF1", "e1001")  # even the employee's own record
    assert refused.status == 429 and refused.json["reason"] == "probe.exceeded"
    assert "3 of your requests" in refused.json["detail"] and "BR002" not in refused.body.decode()
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    assert len(raw_upstream.requests) == asked  # decided before the upstream saw it
    listing = await probed.get("/api/branches/BR001/waybills?limit=1", "e1001")
    assert listing.status == 429 and listing.json["reason"] == "probe.exceeded"
    events = await probed.audit_events(at_least=5)
    assert [e["probe"] for e in events[-5:]] == [True, True, True, False, False]
    assert events[-1]["reason"] == "probe.exceeded" and events[-1]["rule"].startswith("p5, courier, 3, 1h")
    # another employee is not affected, and the window's end frees the budget
    assert (await probed.get("/api/waybills/SF1", "e1004")).status == 200
    probed.clock.advance(3600)
    assert (await probed.get("/api/waybills/SF1", "e1001")).status == 200


async def test_answers_the_employee_may_see_spend_nothing(probed: Harness) -> None:
    for _ in range(6):
        assert (await probed.get("/api/waybills/SF1", "e1001")).status == 200
    events = await probed.audit_events(at_least=6)
    assert not any(e["probe"] for e in events)


async def test_the_services_failures_are_not_probes(probed: Harness, raw_upstream: RawUpstream) -> None:
    raw_upstream.answer("/api/waybills/SF9", {"error": "down"}, status=503)
    for _ in range(5):
        assert (await probed.get("/api/waybills/SF9", "e1001")).status == 502
    assert (await probed.get("/api/waybills/SF1", "e1001")).status == 200


async def test_writes_that_look_up_another_branchs_record_are_probes(
    probed: Harness, raw_upstream: RawUpstream
) -> None:
    raw_upstream.answer("/v2/parcels/SF2", own(2, "BR002"))
    raw_upstream.answer("/v2/parcels/SF2/scans", own(2, "BR002"), status=201)
    for _ in range(3):
        reply = await probed.request("POST", "/v2/parcels/SF2/scans", "e1004", json={"status": "sorted"})
        assert reply.status == 403 and reply.json["reason"] == "policy.other_branch"
    spent = await probed.request("POST", "/v2/parcels/SF2/scans", "e1004", json={"status": "sorted"})
    assert spent.status == 429 and spent.json["reason"] == "probe.exceeded"
    assert [r.method for r in raw_upstream.requests] == ["GET", "GET", "GET"]  # no write ever went out


async def test_too_many_records_in_an_answer_is_a_probe(probed: Harness, raw_upstream: RawUpstream) -> None:
    raw_upstream.answer("/api/branches/BR001/waybills", {"items": [own(n) for n in range(60)]})
    for _ in range(3):
        reply = await probed.get("/api/branches/BR001/waybills?limit=5", "e1001")
        assert reply.status == 403 and reply.json["reason"] == "upstream.too_many_records", reply.json
    reply = await probed.get("/api/waybills/SF1", "e1001")
    assert reply.status == 429 and reply.json["reason"] == "probe.exceeded"


def test_a_role_without_a_probe_budget_is_a_lint_warning(policy_dir: Path) -> None:
    limits = policy_dir / "limits.csv"
    limits.write_text("\n".join(r for r in limits.read_text().splitlines() if not r.startswith("p5, clerk,")) + "\n")
    warnings = lint(load_snapshot(policy_dir))
    found = [w for w in warnings if "probe budget" in w.message]
    assert [w.message for w in found] == ["role clerk reads records over HTTP but has no probe budget"]
    assert "p5, clerk" in found[0].hint


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("p5, courier, 0, shift", "probes '0' is not a positive whole number"),
        ("p5, courier, unlimited, shift", "a probe line must give a number of refusals"),
        ("p5, courier, 10, 3w", "window '3w'"),
        ("p5, driver, 10, 1h", "limit for unknown role 'driver'"),
    ],
)
def test_a_bad_probe_line_is_refused_with_its_reason(policy_dir: Path, line: str, problem: str) -> None:
    set_probe_budget(policy_dir, "courier", line)
    with pytest.raises(PolicyError) as caught:
        load_snapshot(policy_dir)
    assert any(problem in str(p) for p in caught.value.problems), caught.value.problems


async def test_probes_sent_all_at_once_cannot_overrun_the_budget(probed: Harness, raw_upstream: RawUpstream) -> None:
    """20 requests for another branch's waybill at once, budget 3: a request waiting for its
    answer counts as a possible probe, so at most 3 ever reach the upstream."""
    raw_upstream.answer("/api/waybills/SF2", own(2, "BR002"))
    replies = await asyncio.gather(*(probed.get("/api/waybills/SF2", "e1001") for _ in range(20)))
    statuses = sorted(reply.status for reply in replies)
    assert statuses.count(403) <= 3 and set(statuses) <= {403, 429}, statuses
    assert len([r for r in raw_upstream.requests if r.target == "/api/waybills/SF2"]) <= 3
    later = await probed.get("/api/waybills/SF1", "e1001")
    assert later.status == 429 and later.json["reason"] == "probe.exceeded"


async def test_honest_requests_in_parallel_give_their_places_back(probed: Harness) -> None:
    for _ in range(3):
        replies = await asyncio.gather(*(probed.get("/api/waybills/SF1", "e1001") for _ in range(2)))
        assert [reply.status for reply in replies] == [200, 200]
