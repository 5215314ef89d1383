"""Replaying a recorded day under a changed policy: the day is real traffic through the
real broker (shipped policy, real sockets), the log is the broker's own audit file."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from broker.policy.snapshot import PolicySnapshot, load_snapshot
from broker.review.replay import Recorded, impact_json, impact_text, read_audit, replay
from tests.harness import Harness

LIST_BR001 = "/api/branches/BR001/waybills"
SHIPPED_COURIER_QUOTA = "p3, courier, waybill, 50, 500, shift"
NEW_WAYBILL = {"recipient": {"name": "Li Lei", "phone": "13800000000", "address": "1 Nanjing Rd"}}


def shanghai(text: str) -> float:
    return datetime.fromisoformat(f"2026-12-01 {text}").replace(tzinfo=ZoneInfo("Asia/Shanghai")).timestamp()


async def drive_day(broker: Harness) -> int:
    """A known Tuesday through the broker; returns how many requests were audited.

    Courier e1001 (day shift, quota 500) asks for 48 waybills every half hour from 10:00
    to 15:30, and once at 13:45 searches 20 without naming a branch (refused by the door,
    charged as a probe): the ten reads and the probe take exactly 500, the 11th and 12th
    reads are 429 quota.exceeded.
    """
    sent = 0

    async def expect(at: str, method: str, path: str, employee: str | None, status: int, **kw: Any) -> None:
        nonlocal sent
        broker.clock.set(shanghai(at))
        reply = await broker.request(method, path, employee, **kw)
        assert reply.status == status, (at, employee, path, reply.body)
        sent += 1

    await expect("10:00", "GET", f"{LIST_BR001}?limit=20", "e1003", 200)  # trainee
    await expect("10:00", "GET", "/api/branches/BR002/waybills?limit=5", "e1002", 403)  # night courier, off shift
    await expect("10:00", "GET", f"{LIST_BR001}?limit=5", None, 401)  # no token: no employee, not replayed
    await expect("10:00", "GET", f"{LIST_BR001}?limit=5", "e7777", 403)  # not on the roster
    await expect("10:01", "GET", "/api/branches/BR002/waybills?limit=5", "e1001", 403)  # other branch
    await expect("10:02", "POST", "/api/waybills", "e1004", 201, json={"branch_code": "BR001", **NEW_WAYBILL})
    await expect("10:03", "POST", "/api/waybills", "e1004", 403, json={"branch_code": "BR002", **NEW_WAYBILL})
    for n in range(12):
        at = f"{10 + n // 2:02d}:{30 * (n % 2):02d}"
        await expect(at, "GET", f"{LIST_BR001}?limit=48", "e1001", 200 if n < 10 else 429)
        if n == 7:  # 13:45, after 400 records: a search without a branch, refused by the door
            await expect("13:45", "GET", "/api/waybills?limit=20", "e1001", 403)
    await expect("14:00", "GET", f"{LIST_BR001}?limit=20", "e1003", 200)
    await broker.audit_events(at_least=sent)
    return sent


def with_courier_quota(policy_dir: Path, tmp_path: Path, quota: int) -> PolicySnapshot:
    """The shipped policy with another courier quota (its own tests would now fail, but
    `load_snapshot` does not run them: only a reload or `broker check` does)."""
    target = tmp_path / f"quota-{quota}"
    shutil.copytree(policy_dir, target)
    limits = target / "limits.csv"
    text = limits.read_text()
    assert SHIPPED_COURIER_QUOTA in text
    limits.write_text(text.replace(SHIPPED_COURIER_QUOTA, f"p3, courier, waybill, 50, {quota}, shift"))
    return load_snapshot(target)


async def test_a_tighter_quota_flips_exactly_the_decisions_past_it(
    broker: Harness, policy_dir: Path, tmp_path: Path
) -> None:
    sent = await drive_day(broker)
    events, notes = read_audit(broker.audit_path)
    assert notes == ["skipped 1 event with no employee (identity failures)"]
    assert len(events) == sent - 1

    unchanged = await replay(load_snapshot(policy_dir), events)
    assert (unchanged.total, unchanged.flips, unchanged.reason_changed) == (sent - 1, 0, 0)

    tighter = with_courier_quota(policy_dir, tmp_path, 200)
    impact = await replay(tighter, events)
    # 200 records are the first four requests; the 5th..10th (12:00..14:30) flip, the 11th
    # and 12th were already quota denials.
    assert (impact.total, impact.allow_to_deny, impact.deny_to_allow) == (sent - 1, 6, 0)
    assert impact.unchanged == sent - 1 - 6 - 1
    # the 13:45 search was refused by the door (other-branch records); now the quota refuses it
    assert impact.reason_changes == {("deny upstream.other_branch", "deny quota.exceeded"): 1}
    for name, key in (
        ("employee", "e1001"),
        ("branch", "BR001"),
        ("route", "waybills of one branch"),
        ("reason", "quota.exceeded"),
    ):
        groups = impact.groups[name]
        assert list(groups) == [key] and groups[key].allow_to_deny == 6, name
    examples = impact.groups["reason"]["quota.exceeded"].examples
    assert [e.time for e in examples] == [
        f"2026-12-01T{t}:00+08:00" for t in ("12:00", "12:30", "13:00", "13:30", "14:00", "14:30")
    ]
    first = examples[0]
    assert first.request == f"GET {LIST_BR001}?limit=48" and first.employee == "e1001"
    assert (first.old_verdict, first.old_reason, first.new_verdict, first.new_reason) == (
        "allow",
        "allow",
        "deny",
        "quota.exceeded",
    )
    assert "8 of 200 records left" in first.new_detail
    assert impact.recorded_revisions == {load_snapshot(policy_dir).revision: sent - 1}


async def test_a_looser_quota_lets_the_first_429_through_and_charges_what_it_asked_for(
    broker: Harness, policy_dir: Path, tmp_path: Path
) -> None:
    await drive_day(broker)
    events, _ = read_audit(broker.audit_path)
    looser = with_courier_quota(policy_dir, tmp_path, 550)
    impact = await replay(looser, events)
    # The 11th (15:00) now fits: 500 + 48 <= 550. It is charged the 48 it asked for (nothing
    # came back originally, so that is the best guess), so the 12th (15:30) is still refused.
    assert (impact.allow_to_deny, impact.deny_to_allow, impact.reason_changed) == (0, 1, 0)
    group = impact.groups["reason"]["allow (was quota.exceeded)"]
    assert group.deny_to_allow == 1
    assert group.examples[0].time == "2026-12-01T15:00:00+08:00"
    assert (group.examples[0].old_reason, group.examples[0].new_reason) == ("quota.exceeded", "allow")


async def test_the_report_for_ci_and_for_tools(broker: Harness, policy_dir: Path, tmp_path: Path) -> None:
    sent = await drive_day(broker)
    events, _ = read_audit(broker.audit_path)
    tighter = with_courier_quota(policy_dir, tmp_path, 200)
    impact = await replay(tighter, events)

    text = impact_text(impact, examples=2)
    lines = text.splitlines()
    assert lines[0] == f"{sent - 1} decisions replayed: 6 flip (6 allow→deny, 0 deny→allow)"
    assert f"  replayed under policy {tighter.revision}" in lines
    assert f"  {sent - 1 - 7} unchanged, 1 keep their verdict with another reason" in lines
    for title, key in (
        ("by employee", "e1001"),
        ("by branch", "BR001"),
        ("by route", "waybills of one branch"),
        ("by reason", "quota.exceeded"),
    ):
        at = next(i for i, line in enumerate(lines) if line.startswith(title))
        assert lines[at].split()[-2:] == ["allow→deny", "deny→allow"]
        assert lines[at + 1].split() == [*key.split(), "6", "0"]
    assert any(line.strip().startswith("deny upstream.other_branch → deny quota.exceeded") for line in lines)
    shown = [line for line in lines if f"e1001  GET {LIST_BR001}?limit=48" in line]
    assert len(shown) == 2 and shown[0].strip().startswith("2026-12-01T12:00:00+08:00")
    assert "allow (allow) → deny (quota.exceeded): Your waybill quota" in text

    report = json.loads(json.dumps(impact_json(impact)))
    assert (report["total"], report["flips"], report["allow_to_deny"], report["deny_to_allow"]) == (sent - 1, 6, 6, 0)
    assert report["groups"]["employee"][0]["key"] == "e1001"
    assert len(report["groups"]["route"][0]["examples"]) == 6
    assert report["groups"]["reason"][0]["examples"][0]["new_reason"] == "quota.exceeded"

    assert impact_text(await replay(load_snapshot(policy_dir), events)).startswith(
        f"{sent - 1} decisions replayed: 0 flip (0 allow→deny, 0 deny→allow)\n"
    )


async def test_malformed_lines_are_reported_with_their_line_numbers_and_skipped(
    broker: Harness, tmp_path: Path
) -> None:
    for _ in range(3):
        assert (await broker.get(f"{LIST_BR001}?limit=5", "e1001")).status == 200
    await broker.audit_events(at_least=3)
    good = broker.audit_path.read_text().splitlines()
    bad_time = json.loads(good[1]) | {"time": "yesterday"}
    other_door = json.loads(good[1]) | {"door": "sql"}
    damaged = tmp_path / "damaged.log"
    damaged.write_text(
        "\n".join(
            [
                good[0],  # 1
                "garbage",  # 2
                good[1],  # 3
                "[1, 2]",  # 4
                json.dumps(bad_time),  # 5
                "",  # 6: blank lines are ignored
                json.dumps(other_door),  # 7
                good[2][: len(good[2]) // 2],  # 8: the writer was killed mid-line
            ]
        )
    )
    events, notes = read_audit(damaged)
    assert [e.line for e in events] == [1, 3]
    assert all(isinstance(e, Recorded) and e.employee == "e1001" for e in events)
    assert [note.split(":")[0] for note in notes[:4]] == ["line 2", "line 4", "line 5", "line 8"]
    assert notes[0].startswith("line 2: not JSON")
    assert notes[1] == "line 4: not a JSON object"
    assert notes[2] == "line 5: time 'yesterday' is not an ISO 8601 instant"
    assert notes[4:] == ["skipped 1 event of doors other than http"]


async def test_replay_from_the_command_line(broker: Harness, policy_dir: Path, tmp_path: Path) -> None:
    await drive_day(broker)
    changed = with_courier_quota(policy_dir, tmp_path, 200).directory
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "replay", "--policies", str(changed), "--audit", str(broker.audit_path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert "20 decisions replayed: 6 flip (6 allow→deny, 0 deny→allow)" in out.decode()
    assert "skipped 1 event with no employee" in err.decode()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "replay", "--policies", str(tmp_path / "nowhere"), "--audit",
        str(broker.audit_path), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await process.communicate()
    assert process.returncode == 1 and "policy directory does not exist" in err.decode()
    # an empty or unreadable audit is an error, not "nothing flips" (#17)
    (tmp_path / "empty.log").write_text("")
    (tmp_path / "unreadable").mkdir()
    for audit, says in ((tmp_path / "empty.log", "holds no HTTP decision"), (tmp_path / "unreadable", "cannot read")):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "broker", "replay", "--policies", str(changed), "--audit", str(audit),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await process.communicate()
        assert process.returncode == 2 and says in err.decode() and b"flip" not in out, err.decode()
