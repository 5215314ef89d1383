"""HR's roster as a query on a PostgreSQL database.

The query runs in a read-only transaction under a statement timeout, as one prepared
statement (the extended protocol refuses a second statement, so `SELECT ...; COMMIT;
DELETE ...` cannot step out of the transaction): a mistaken `DELETE ... RETURNING` fails
instead of changing HR's data, and a slow join cannot hold a pull for ever. Values must
come back as text (NULL and other types are refused, never converted).
"""

from __future__ import annotations

import math

import psycopg
from psycopg import errors
from psycopg.conninfo import conninfo_to_dict

from broker.roster.csv_source import MAX_ROWS_HINT
from broker.roster.mapping import ColumnMap
from broker.roster.row import Fetched, RosterProblem, SourceUnreadable
from broker.roster.settings import without_quoted

BATCH_ROWS = 1000
LIBPQ_MIN_CONNECT_TIMEOUT = 2
"""libpq reads a connect_timeout below 2 seconds as 2."""


class PostgresRosterSource:
    def __init__(self, dsn: str, query: str, columns: ColumnMap, timeout_seconds: float, max_rows: int) -> None:
        self._dsn = dsn
        self._query = query
        self._columns = columns
        self._timeout = timeout_seconds
        self._max_rows = max_rows
        self.name = _describe(dsn)
        """The database, never the password: it is shown, logged and written into roster.csv."""

    def fingerprint(self) -> object | None:
        return None  # only the query can tell

    def fetch(self) -> Fetched:
        connect_timeout = max(LIBPQ_MIN_CONNECT_TIMEOUT, math.ceil(self._timeout))
        try:
            connection = psycopg.connect(self._dsn, connect_timeout=connect_timeout, autocommit=False)
        except psycopg.Error as exc:
            raise self._unreadable(f"cannot connect: {_first_line(exc)}") from exc
        with connection:
            connection.read_only = True
            try:
                return self._run(connection)
            finally:
                connection.rollback()

    def _run(self, connection: psycopg.Connection[tuple[object, ...]]) -> Fetched:
        with connection.cursor() as cursor:
            try:
                milliseconds = str(max(1, round(self._timeout * 1000)))
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", (milliseconds,))
                cursor.execute(self._query.encode(), prepare=True)  # prepared: one statement only
                if cursor.description is None:
                    raise self._unreadable("the query returns no rows: it must be one SELECT")
                names = [column.name for column in cursor.description]
                self._check_columns(names)
                fetched = Fetched()
                while batch := cursor.fetchmany(BATCH_ROWS):
                    self._add(fetched, names, batch)
            except errors.QueryCanceled as exc:
                raise self._unreadable(
                    f"the query ran longer than {self._timeout:g} s", "raise [roster] query_timeout_seconds"
                ) from exc
            except errors.ReadOnlySqlTransaction as exc:
                raise self._unreadable(
                    f"the query tries to write ({_first_line(exc)})", "the roster query may only read"
                ) from exc
            except psycopg.Error as exc:
                state = f" (SQLSTATE {exc.sqlstate})" if exc.sqlstate else ""
                raise self._unreadable(f"the query failed: {_first_line(exc)}{state}") from exc
        fetched.check_repeats()
        return fetched

    def _check_columns(self, names: list[str]) -> None:
        missing = self._columns.missing(names)
        if missing:
            raise self._unreadable(
                f"the query returns no column {', '.join(map(repr, missing))} (it returns {', '.join(names)})",
                "name each column with AS, or set [roster] employee_column, role_column, branch_column, shift_column",
            )
        repeated = [name for name in self._columns.columns.values() if names.count(name) > 1]
        if repeated:
            raise self._unreadable(f"the query returns {', '.join(map(repr, repeated))} more than once")

    def _add(self, fetched: Fetched, names: list[str], batch: list[tuple[object, ...]]) -> None:
        for values in batch:
            number = len(fetched.rows) + len(fetched.problems) + 1
            if number > self._max_rows:
                raise self._unreadable(f"more than {self._max_rows} rows", MAX_ROWS_HINT)
            cells = dict(zip(names, values, strict=True))
            fetched.add(self._columns.row(cells, f"query row {number}", lambda column: f"column {column}"))

    def _unreadable(self, message: str, hint: str = "") -> SourceUnreadable:
        return SourceUnreadable(RosterProblem(self.name, message, hint))


def _describe(dsn: str) -> str:
    """ "PostgreSQL hr@db.example:5432/people": enough to know which, nothing secret."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"[roster] dsn is not a connection string: {without_quoted(str(exc))}") from None
    user = f"{parts['user']}@" if parts.get("user") else ""
    host, port, database = parts.get("host") or "localhost", parts.get("port") or "5432", parts.get("dbname") or ""
    return f"PostgreSQL {user}{host}:{port}/{database}"


def _first_line(exc: Exception) -> str:
    return str(exc).strip().split("\n")[0]
