"""Reading a benchmark broker's audit log (JSON lines) back, for the report's checks.

After a run the report says how many of each verdict the broker wrote: that every
measured request was allowed and audited, not refused fast. What an event is called
differs between the HTTP and the PostgreSQL door, so the caller names it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any


def count_audit(path: Path | None, describe: Callable[[dict[str, Any]], str]) -> Counter[str]:
    """How many events of each `describe(event)` the file at `path` holds; an unreadable
    line counts as "unparsable line", a missing file as nothing."""
    found: Counter[str] = Counter()
    if path is None or not path.exists():
        return found
    with path.open("rb") as lines:
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                found["unparsable line"] += 1
                continue
            found[describe(event)] += 1
    return found
