"""Proving a set of audit files complete and unaltered up to their last checkpoint.

Reads the files in the order given (rotated files first, as `ls` sorts them, then the
live file) as one chain: each line's `seq` must follow the previous one and its `prev`
must be the hash of the previous line's bytes; each checkpoint must cover the line
before it and, with a key, carry a valid signature. The first line where this fails is
named with what it means (edited, removed, inserted or reordered lines, a torn line).
Lines after the last signed checkpoint are reported as unproven: nobody can tell their
removal from their never having been written, which is what the checkpoint interval
bounds (`--max-age`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.audit.chain import GENESIS, line_hash
from broker.audit.checkpoint import CHECKPOINT_EVENT, FINAL, KINDS, RESUMED, RESUMED_UNCLEAN, signature_holds


@dataclass(slots=True)
class Verdict:
    lines: int = 0
    events: int = 0
    checkpoints: int = 0
    proven_through: str = ""
    """`file:line` of the last valid checkpoint ("" if none)."""
    last_checkpoint_time: str = ""
    unproven: int = 0
    """Lines after the last valid checkpoint."""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(paths: Sequence[Path], key: Ed25519PublicKey | None) -> Verdict:
    verdict = Verdict()
    seq, head = 0, ""
    previous: dict[str, Any] | None = None
    for path in paths:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            verdict.problems.append(f"{path}: cannot read: {exc.strerror}")
            return verdict
        if raw and not raw.endswith(b"\n"):
            last = raw.count(b"\n") + 1
            verdict.problems.append(f"{path}:{last}: the last line is torn (no newline at its end)")
        for number, line in enumerate(raw.splitlines(), start=1):
            where = f"{path}:{number}"
            verdict.lines += 1
            event = _parse(line)
            if event is None:
                verdict.problems.append(f"{where}: not a whole JSON line (torn by a crash, or edited)")
                continue
            found = event.get("seq")
            if not isinstance(found, int) or not isinstance(event.get("prev"), str):
                verdict.problems.append(f"{where}: has no seq/prev: not written by a chaining broker, or edited")
                continue
            if seq == 0 and not head:  # the chain this set starts with
                if found != 1:
                    verdict.problems.append(
                        f"{where}: the chain starts at seq {found}: the lines before it are missing "
                        "(pass the rotated files too, oldest first)"
                    )
                seq, head = found - 1, event["prev"] if found > 1 else GENESIS
            problem = _link_problem(found, event["prev"], seq, head)
            if problem:
                verdict.problems.append(f"{where}: {problem}")
            seq, head = found, line_hash(line)
            verdict.unproven += 1
            if event.get("event") == CHECKPOINT_EVENT:
                problem = _checkpoint_problem(event, key) or _resume_problem(event, previous, verdict)
                previous = event
                if problem:
                    verdict.problems.append(f"{where}: {problem}")
                    continue
                verdict.checkpoints += 1
                verdict.proven_through, verdict.last_checkpoint_time = where, str(event.get("time", ""))
                verdict.unproven = 0
            else:
                previous = event
                verdict.events += 1
    return verdict


def _resume_problem(event: dict[str, Any], previous: dict[str, Any] | None, verdict: Verdict) -> str:
    """A run that started on a file must say how the run before it ended, truthfully."""
    kind = event.get("kind")
    after = f"after {verdict.proven_through}" if verdict.proven_through else "from the start"
    if kind == RESUMED_UNCLEAN:
        return (
            f"the run before ended without its final checkpoint (a crash, or the file was cut or edited): "
            f"the {verdict.unproven - 1} line(s) {after} up to here cannot be proven"
        )
    if kind == RESUMED and not (
        previous and previous.get("event") == CHECKPOINT_EVENT and previous.get("kind") == FINAL
    ):
        return "a run resumed as if the one before had stopped cleanly, but the line before is not its final checkpoint"
    return ""


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        event = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return event if isinstance(event, dict) else None


def _link_problem(found: int, prev: str, seq: int, head: str) -> str:
    if found == seq + 1 and prev == head:
        return ""
    if found <= seq:
        return f"seq {found} after seq {seq}: lines were reordered or inserted"
    if found > seq + 1:
        return f"seq {found} after seq {seq}: {found - seq - 1} line(s) before this one were removed"
    return "does not follow the line before it: that line was edited, or this one was inserted"


def _checkpoint_problem(event: dict[str, Any], key: Ed25519PublicKey | None) -> str:
    covers, head, time = event.get("covers"), event.get("head"), event.get("time")
    if covers != event["seq"] - 1 or head != event["prev"]:
        return "checkpoint does not cover the line before it"
    if key is None:
        return ""
    signature, kind = event.get("signature"), event.get("kind")
    if not isinstance(signature, str) or not isinstance(head, str) or not isinstance(time, str):
        return "checkpoint is not signed"
    if kind not in KINDS or not signature_holds(key, signature, covers, head, time, str(kind)):
        return "checkpoint signature does not verify with this key: forged, edited, or another key"
    return ""


def checkpoint_age(verdict: Verdict, now: float) -> float | None:
    """Seconds from the last valid checkpoint to `now`, or None without one."""
    if not verdict.last_checkpoint_time:
        return None
    when = datetime.fromisoformat(verdict.last_checkpoint_time.replace("Z", "+00:00"))
    return now - when.timestamp()
