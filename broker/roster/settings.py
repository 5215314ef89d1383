"""`[roster]` in broker.toml: where HR keeps the roster, and how `broker roster pull` reads it.

(Not to be confused with `[roster]` in the policy's own `policy.toml`, which says what a
roster may contain; this section says where one comes from.)
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

SOURCES = ("", "csv", "postgres")
QUOTE_AND_LINE_BREAKS = ('"', "\r", "\n")


@dataclass(frozen=True, slots=True)
class RosterSettings:
    source: str = ""
    """"csv" (HR's export file), "postgres" (a query on HR's database), or "" (none: the
    roster files are edited by hand)."""
    csv_file: str = ""
    """The export, for source = "csv" (relative to the config file)."""
    delimiter: str = ","
    """The export's field separator, named explicitly: a ';' export read as ',' is refused."""
    encoding: str = "utf-8"
    """The export's text encoding: "utf-8-sig" for Excel's "CSV UTF-8" (a byte order mark),
    "gb18030" for a Chinese-locale Excel export."""
    employee_column: str = "employee"
    role_column: str = "role"
    branch_column: str = "branch"
    shift_column: str = "shift"
    """Which column (CSV header name, or the query's column name) holds each field; other
    columns are ignored. One row per employee, role and shift."""
    headquarters_branch: str = "HQ"
    """The branch value that makes a row's role branch-less (a g3 line: every branch). An
    empty branch is always an error, never headquarters."""
    headquarters_roles: tuple[str, ...] = ()
    """Roles that may be held branch-less; a headquarters row with another role is refused.
    Empty: none (every headquarters row is refused), so a courier marked HQ in the export
    can never come to read every branch."""
    dsn: str = ""
    """For source = "postgres": a libpq connection string or URL; better given through
    BROKER_ROSTER_DSN_FILE, or with the password in PGPASSFILE."""
    query: str = ""
    """One SELECT returning the four named columns, as text; it runs in a read-only
    transaction."""
    query_timeout_seconds: float = 30.0
    """The longest the connection and the query may take (statement_timeout)."""
    max_rows: int = 1_000_000
    """A source with more rows than this is refused (a runaway join, or the wrong table)."""
    max_removed_fraction: float = 0.1
    """A pull removing more than this fraction of the current employees is refused unless
    `broker roster pull --allow-shrink`: an export that lost most of its rows must not
    become "no one may work"."""
    pull_interval_seconds: float = 0.0
    """The running broker pulls this often (0: never; `broker roster pull` only). Each pull
    is checked like a policy edit; a refused one is logged, counted and audited, and the
    last good roster stays."""

    def problems(self) -> list[str]:
        found = self._source_problems()
        columns = (self.employee_column, self.role_column, self.branch_column, self.shift_column)
        if not all(c.strip() for c in columns) or len({c.strip() for c in columns}) != len(columns):
            found.append("[roster] employee_column, role_column, branch_column and shift_column must be four names")
        if not 0 <= self.max_removed_fraction <= 1:
            found.append("[roster] max_removed_fraction must be between 0 and 1")
        if not self.query_timeout_seconds > 0 or self.max_rows < 1:
            found.append("[roster] query_timeout_seconds must be above 0 and max_rows at least 1")
        if self.pull_interval_seconds < 0 or 0 < self.pull_interval_seconds < 1:
            found.append("[roster] pull_interval_seconds must be 0 (never) or at least 1")
        if self.pull_interval_seconds and not self.source:
            found.append('[roster] pull_interval_seconds needs a source ("csv" or "postgres")')
        return found

    def _source_problems(self) -> list[str]:
        if self.source not in SOURCES:
            return [f"[roster] source = {self.source!r} must be csv, postgres or empty (none)"]
        found = []
        if self.source == "csv" and not self.csv_file:
            found.append('[roster] source = "csv" needs csv_file')
        if self.source == "postgres" and not (self.dsn and self.query.strip()):
            found.append('[roster] source = "postgres" needs dsn and query')
        elif self.source == "postgres":
            found += _dsn_problems(self.dsn)
        if len(self.delimiter) != 1 or self.delimiter in QUOTE_AND_LINE_BREAKS:
            found.append(f"[roster] delimiter {self.delimiter!r} must be one character, not a quote or line break")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            found.append(f"[roster] encoding {self.encoding!r} is not an encoding Python knows (e.g. utf-8, gb18030)")
        return found


def _dsn_problems(dsn: str) -> list[str]:
    from psycopg import ProgrammingError  # noqa: PLC0415 - psycopg only where a database is named
    from psycopg.conninfo import conninfo_to_dict  # noqa: PLC0415

    try:
        conninfo_to_dict(dsn)
    except ProgrammingError as exc:
        return [f"[roster] dsn is not a connection string: {without_quoted(str(exc))}"]
    return []


def without_quoted(message: str) -> str:
    """libpq's message with what it quotes of the string withheld: it may be the password."""
    return re.sub(r'"[^"]*"', '"..."', message.strip())
