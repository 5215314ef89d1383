"""A door's own sentence, named rather than written: worded when it is shown.

The PostgreSQL door's hints and its refusals outside a decision (a start-up option, a
reserved name, TLS) are keys of the catalogue's `pg` texts (`[pg]` in the shipped
locales, `[zh.pg]` in messages.toml) with the values their placeholders take. The code
that refuses names the sentence; the session words it in its own locale when it writes
the ErrorResponse, so one refusal reads in English to one client and in Chinese to
another, and the English stays what logs and tests read (`english`).
"""

from __future__ import annotations

from typing import NamedTuple


class Said(NamedTuple):
    """A `pg` text's key and its placeholders' values (a tuple, so a refusal without
    values is a constant, hashable and shared)."""

    key: str
    values: tuple[tuple[str, str], ...] = ()


def said(key: str, **values: object) -> Said:
    """`Said(key)` with `values` as text: `said("setting_pinned", name=name)`."""
    return Said(key, tuple((name, str(value)) for name, value in values.items()))
