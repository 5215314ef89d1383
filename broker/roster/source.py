"""Where a roster comes from: the seam every source implements, and the one the config names."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from broker.config import ConfigError
from broker.roster.csv_source import CsvRosterSource
from broker.roster.mapping import ColumnMap
from broker.roster.row import Fetched
from broker.roster.settings import RosterSettings


class RosterSource(Protocol):
    @property
    def name(self) -> str:
        """Which source, for people: shown, logged and written into roster.csv (never a
        password)."""
        ...

    def fetch(self) -> Fetched:
        """Every row, with a problem for each bad one; raises SourceUnreadable when the
        source cannot be read as a roster at all. Blocking: run it off the event loop."""
        ...

    def fingerprint(self) -> object | None:
        """Something cheap that changes whenever the rows might (a file's size and time), or
        None when only a fetch can tell (a query). Lets the running broker skip pulls of
        a source that has not changed."""
        ...


def source_from(settings: RosterSettings, csv_file: Path | None = None) -> RosterSource:
    """The configured source, or the CSV export `csv_file` read with the configured
    columns, delimiter and encoding. Raises ConfigError naming what is missing."""
    problems = settings.problems()
    if problems:
        raise ConfigError("; ".join(problems))
    columns = ColumnMap.from_settings(settings)
    if csv_file is not None or settings.source == "csv":
        path = csv_file or Path(settings.csv_file)
        return CsvRosterSource(path, columns, settings.delimiter, settings.encoding, settings.max_rows)
    if settings.source == "postgres":
        from broker.roster.pg_source import PostgresRosterSource  # noqa: PLC0415 - psycopg only when it is used

        try:
            return PostgresRosterSource(
                settings.dsn, settings.query, columns, settings.query_timeout_seconds, settings.max_rows
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    raise ConfigError('no roster source: set [roster] source = "csv" or "postgres" (or give --csv FILE)')
