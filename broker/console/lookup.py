"""The help desk's "why was I refused?": a decision id, answered from the audit.

The event is looked for in the console's ring first (recent decisions, no disk read),
then in the audit file, in a worker thread so the event loop never reads a file. The
question it answered is then decided again step by step under the live policy, as
`broker explain --decision ID --audit FILE` does.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker.console.feed import ConsoleFeed
from broker.policy.snapshot import PolicySnapshot
from broker.review.explain import Explanation, explain
from broker.review.offline import decide_offline
from broker.review.recorded_decision import find_event, question_of

DECISION_ID = re.compile(r"[0-9a-zA-Z_-]{6,64}\Z")


@dataclass(frozen=True, slots=True)
class Lookup:
    event: dict[str, Any] | None
    explanation: Explanation | None
    recorded: dict[str, Any]
    problem: str = ""


async def look_up(decision_id: str, feed: ConsoleFeed, audit_path: str, snapshot: PolicySnapshot | None) -> Lookup:
    if not DECISION_ID.match(decision_id):
        return Lookup(None, None, {}, "A decision id is the letters and digits of X-Broker-Decision.")
    event = _in_ring(feed, decision_id) or await _in_file(audit_path, decision_id)
    if event is None:
        return Lookup(None, None, {}, f"Decision {decision_id} is neither in memory nor in the audit file.")
    if snapshot is None:
        return Lookup(event, None, {}, "No valid policy is loaded, so the decision cannot be explained again.")
    try:
        question, recorded = question_of(snapshot, event)
    except ValueError as exc:
        return Lookup(event, None, {}, str(exc))
    decision, route = await decide_offline(snapshot, question)
    explanation = explain(snapshot, decision, route, f"{question.method} {question.target}")
    if explanation.reason != event.get("reason"):
        recorded = {**recorded, "note": _differs(str(event.get("reason")), explanation.reason, recorded.get("note"))}
    return Lookup(event, explanation, recorded)


def _differs(recorded: str, now: str, revision_note: Any) -> str:
    """Why the trace may not end where the recorded decision did: the trace re-decides
    the policy, not the counters and freezes of that moment."""
    if recorded == "identity.suspended":
        why = "the login was frozen at the time (a signal or a person froze it); the trace shows the policy alone"
    else:
        why = "the trace replays the policy and the quota used, not the request rate, probes or freezes of that moment"
    text = f"Recorded {recorded}, the trace ends in {now}: {why}."
    return f"{text} {revision_note}" if revision_note else text


def _in_ring(feed: ConsoleFeed, decision_id: str) -> dict[str, Any] | None:
    events: list[dict[str, Any]] = feed.recent()
    for event in reversed(events):
        if event.get("decision_id") == decision_id and event.get("event") in (None, "decision"):
            found: dict[str, Any] = event
            return found
    return None


async def _in_file(audit_path: str, decision_id: str) -> dict[str, Any] | None:
    if audit_path == "-" or audit_path.startswith(("http://", "https://")):
        return None
    try:
        found: dict[str, Any] = await asyncio.to_thread(find_event, Path(audit_path), decision_id)
    except (ValueError, OSError):
        return None
    return found
