"""Settings the broker pins for every session, and why: its SQL analysis depends on them.

search_path decides which table a name means, standard_conforming_strings how a literal
is lexed; row security and roles are the database's second line of defence. A client may
change none of them, neither in its start-up `options` nor later with SET.

statement_timeout is bounded rather than pinned: a client may shorten it, never lift it
(0 means no limit: a 600^4-row cross join would run for hours on the broker's login).
"""

import re

from broker.messages.said import Said, said

MAX_STATEMENT_TIMEOUT_MS = 60_000
"""The longest a statement may run through the broker; also every session's default."""
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?\s*\Z")
_UNIT_MS = {"us": 0.001, "ms": 1, None: 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


def timeout_refusal(value: str) -> Said | None:
    """Why a statement_timeout value is not accepted (None: it is), as PostgreSQL reads it:
    a number of milliseconds or a number with a unit."""
    match = _DURATION.match(value)
    if match is None:
        return said("timeout_unreadable", value=repr(value[:40]))
    milliseconds = float(match[1]) * _UNIT_MS[match[2]]
    if milliseconds <= 0 or milliseconds > MAX_STATEMENT_TIMEOUT_MS:
        return said("timeout_range", max=MAX_STATEMENT_TIMEOUT_MS)
    return None


PINNED_SETTINGS: dict[str, Said] = {
    "search_path": said("pinned_search_path"),
    "standard_conforming_strings": said("pinned_strings"),
    "backslash_quote": said("pinned_strings"),
    "row_security": said("pinned_row_security"),
    "role": said("pinned_role"),
    "session_authorization": said("pinned_role"),
    "session_replication_role": said("pinned_triggers"),
    "client_encoding": said("pinned_encoding"),
}
"""Each pinned setting, with the hint a refusal gives (a `pg` text: worded in the session's locale)."""


SHOWN_SETTINGS = frozenset(
    {
        "application_name", "client_encoding", "datestyle", "intervalstyle", "timezone", "extra_float_digits",
        "lc_monetary", "lc_numeric", "lc_time", "statement_timeout", "lock_timeout",
        "idle_in_transaction_session_timeout", "bytea_output", "search_path", "standard_conforming_strings",
        "server_version", "server_version_num", "server_encoding", "integer_datetimes",
        "transaction_isolation", "transaction_read_only", "default_transaction_read_only", "in_hot_standby",
        "scram_iterations", "max_identifier_length",
    }
)  # fmt: skip
"""Settings a client may read (SHOW) or be told of (ParameterStatus), lower case: what
drivers need. Not the others: `is_superuser` and `session_authorization` describe the
broker's own database login, `data_directory` and the like the server's machine."""
