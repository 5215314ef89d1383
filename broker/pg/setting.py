"""Settings the broker pins for every session, and why: its SQL analysis depends on them.

search_path decides which table a name means, standard_conforming_strings how a literal
is lexed; row security and roles are the database's second line of defence. A client may
change none of them, neither in its start-up `options` nor later with SET.

statement_timeout is bounded rather than pinned: a client may shorten it, never lift it
(0 means no limit: a 600^4-row cross join would run for hours on the broker's login).
"""

import re

MAX_STATEMENT_TIMEOUT_MS = 60_000
"""The longest a statement may run through the broker; also every session's default."""
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(us|ms|s|min|h|d)?\s*\Z")
_UNIT_MS = {"us": 0.001, "ms": 1, None: 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


def timeout_refusal(value: str) -> str | None:
    """Why a statement_timeout value is not accepted (None: it is), as PostgreSQL reads it:
    a number of milliseconds or a number with a unit."""
    match = _DURATION.match(value)
    if match is None:
        return f"statement_timeout {value[:40]!r} is not a duration the broker can read"
    milliseconds = float(match[1]) * _UNIT_MS[match[2]]
    if milliseconds <= 0 or milliseconds > MAX_STATEMENT_TIMEOUT_MS:
        return f"statement_timeout must be above 0 and at most {MAX_STATEMENT_TIMEOUT_MS} ms through the broker"
    return None


PINNED_SETTINGS: dict[str, str] = {
    "search_path": "table names resolve in the broker's schema; qualify them with it instead",
    "standard_conforming_strings": "the broker reads SQL with standard_conforming_strings on; use E'...' for escapes",
    "backslash_quote": "the broker reads SQL with standard_conforming_strings on; use E'...' for escapes",
    "row_security": "row-level security stays as the broker set it",
    "role": "the broker connects as one database user; what you may do comes from the access policy",
    "session_authorization": "the broker connects as one database user; what you may do comes from the access policy",
    "session_replication_role": "triggers stay as the database has them",
    "client_encoding": "the broker speaks UTF8; SET client_encoding TO 'UTF8' is the only change allowed",
}
"""Each pinned setting, with the hint a refusal gives."""


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
