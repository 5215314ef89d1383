"""The image check's findings: one line per promise, held, broken or not checkable here."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

Outcome = Literal["held", "BROKEN", "not checked"]


@dataclass(frozen=True, slots=True)
class Check:
    promise: str
    how: str
    outcome: Outcome
    details: list[str] = field(default_factory=list)


def verdict(promise: str, how: str, problems: list[str], details: Iterable[str] = ()) -> Check:
    """Held when there are no problems; the problems (else the details) are shown."""
    return Check(promise, how, "BROKEN" if problems else "held", problems or list(details))


def save(checks: list[Check], path: Path) -> None:
    path.write_text(json.dumps([asdict(c) for c in checks], indent=1), encoding="utf-8")


def load(path: Path) -> list[Check]:
    return [Check(**item) for item in json.loads(path.read_text(encoding="utf-8"))]


def render(checks: list[Check]) -> str:
    width = max(len(c.outcome) for c in checks)
    lines = ["", "image check: the Dockerfile's promises", ""]
    for check in checks:
        lines.append(f"  [{check.outcome:<{width}}] {check.promise}")
        lines.append(f"  {'':<{width + 2}} how: {check.how}")
        lines.extend(f"  {'':<{width + 2}}   - {detail}" for detail in check.details)
    held = sum(c.outcome == "held" for c in checks)
    broken = sum(c.outcome == "BROKEN" for c in checks)
    lines += ["", f"{held} held, {broken} broken, {len(checks) - held - broken} not checkable on this machine"]
    return "\n".join(lines)
