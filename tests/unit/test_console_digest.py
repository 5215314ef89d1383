"""The console's ring and the figures folded from it: bounded, and honest about what a
reader that fell behind missed (issue #14)."""

from __future__ import annotations

from broker.console.digest import Digest
from broker.console.feed import ConsoleFeed

NOON = 1_796_000_000.0


def decision(employee: str, verdict: str = "allow", reason: str = "allow", returned: int = 1) -> dict[str, object]:
    return {"employee": employee, "verdict": verdict, "reason": reason, "records_returned": returned, "client": "a"}


def test_the_ring_keeps_the_last_events_and_says_how_many_a_reader_missed() -> None:
    feed = ConsoleFeed(3)
    for n in range(5):
        feed.observe({"n": n})
    events, position, missed = feed.since(0)
    assert [e["n"] for e in events] == [2, 3, 4] and position == 5 and missed == 2
    feed.observe({"n": 5})
    assert feed.since(position) == ([{"n": 5}], 6, 0)
    assert feed.since(6) == ([], 6, 0)


def test_denials_top_employees_and_timelines_are_folded() -> None:
    feed = ConsoleFeed(100)
    digest = Digest(feed)
    for _ in range(3):
        feed.observe(decision("e1", returned=5))
    feed.observe(decision("e2", "deny", "policy.other_branch", 0))
    feed.observe({"event": "checkpoint", "employee": "e9"})  # not the console's business
    digest.catch_up(NOON)
    assert [(s.employee, s.records, s.requests, s.denials) for s in digest.top_employees()] == [
        ("e1", 15, 3, 0),
        ("e2", 0, 1, 1),
    ]
    assert digest.denials_by_reason(NOON)["policy.other_branch"][-1] == 1
    assert set(digest.timelines) == {"e1", "e2"} and digest.timelines["e1"].addresses["a"].requests == 3
    assert digest.denials_by_reason(NOON + 31 * 60) == {}  # older than the chart


def test_a_flag_stays_open_until_a_person_unfreezes_or_dismisses() -> None:
    feed = ConsoleFeed(100)
    digest = Digest(feed)
    feed.observe({"event": "signal", "signal": "shared_login", "employee": "e1"})
    feed.observe({"event": "console", "action": "freeze", "employee": "e1"})
    digest.catch_up(NOON)
    assert [f["employee"] for f in digest.open_flags()] == ["e1"]  # frozen, still to be resolved
    feed.observe({"event": "console", "action": "unfreeze", "employee": "e1"})
    digest.catch_up(NOON)
    assert digest.open_flags() == []
    feed.observe({"event": "signal", "signal": "probing", "employee": "e1"})
    digest.catch_up(NOON)
    assert [f["signal"] for f in digest.open_flags()] == ["probing"]  # a new one opens again
