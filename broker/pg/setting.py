"""Settings the broker pins for every session, and why: its SQL analysis depends on them.

search_path decides which table a name means, standard_conforming_strings how a literal
is lexed; row security and roles are the database's second line of defence. A client may
change none of them, neither in its start-up `options` nor later with SET.
"""

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
