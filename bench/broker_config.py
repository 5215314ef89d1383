"""The part of `broker run`'s config that every end-to-end benchmark shares.

bench/http.py and bench/pg.py each put the broker in front of something else, but the
broker itself should be set up alike in both, so their figures stay comparable: the policy
read once (no watching the directory), quota counters in memory (no Redis round trip; that
is bench/meter.py's subject) and the audit log written to a file, as in production.
"""

from __future__ import annotations

from pathlib import Path


def common_sections(policy: Path, audit: Path) -> str:
    """The [policy], [meter] and [audit] tables of a benchmark broker's TOML."""
    return f"""\
[policy]
directory = "{policy}"
watch = false

[meter]
store = "memory"

[audit]
path = "{audit}"
"""
