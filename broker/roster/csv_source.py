"""HR's roster export as a CSV file: a header row naming the columns, the delimiter and
encoding named in the config, never guessed (a guess that is wrong one day moves people
between branches)."""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator
from pathlib import Path

from broker.roster.mapping import ColumnMap
from broker.roster.row import Fetched, RosterProblem, RosterRow, SourceUnreadable

BOM = codecs.BOM_UTF8
OTHER_DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_TOML = {"\t": "\\t"}
MAX_ROWS_HINT = "raise [roster] max_rows if this is right"


class CsvRosterSource:
    def __init__(self, path: Path, columns: ColumnMap, delimiter: str, encoding: str, max_rows: int) -> None:
        self.path = path
        self._columns = columns
        self._delimiter = delimiter
        self._encoding = encoding
        self._max_rows = max_rows

    @property
    def name(self) -> str:
        return str(self.path)

    def fingerprint(self) -> object | None:
        try:
            found = self.path.stat()
        except OSError:
            return None
        return found.st_ino, found.st_size, found.st_mtime_ns

    def fetch(self) -> Fetched:
        reader = csv.reader(io.StringIO(self._text(), newline=""), delimiter=self._delimiter, strict=True)
        fetched = Fetched()
        try:
            header = self._header(reader)
            last_line = reader.line_num
            for cells in reader:
                line, last_line = last_line + 1, reader.line_num
                if cells:  # a blank line
                    fetched.add(self._row(cells, header, line))
                if len(fetched.rows) + len(fetched.problems) > self._max_rows:
                    raise self._unreadable(f"more than {self._max_rows} rows", MAX_ROWS_HINT)
        except csv.Error as exc:
            raise SourceUnreadable(
                RosterProblem(f"{self.path}:{reader.line_num}", f"not readable as CSV: {exc}")
            ) from exc
        fetched.check_repeats()
        return fetched

    def _text(self) -> str:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise self._unreadable(f"cannot read: {exc.strerror}") from exc
        if raw.startswith(BOM) and codecs.lookup(self._encoding).name == "utf-8":
            raise self._unreadable(
                'the file starts with a UTF-8 byte order mark (Excel\'s "CSV UTF-8")',
                'set [roster] encoding = "utf-8-sig" to read such exports',
                line=1,
            )
        try:
            return raw.decode(self._encoding)
        except UnicodeDecodeError as exc:
            raise self._unreadable(
                f"not valid {self._encoding} (byte 0x{raw[exc.start]:02x})",
                'set [roster] encoding to the export\'s: e.g. "gb18030" for a Chinese-locale Excel export',
                line=raw[: exc.start].count(b"\n") + 1,
            ) from exc

    def _header(self, reader: Iterator[list[str]]) -> list[str]:
        header = [name.strip() for name in next(reader, [])]
        if not any(header):
            raise self._unreadable("the first line is not a header row naming the columns", line=1)
        missing = self._columns.missing(header)
        if missing:
            raise self._unreadable(*self._why_missing(header, missing), line=1)
        repeated = [name for name in self._columns.columns.values() if header.count(name) > 1]
        if repeated:
            raise self._unreadable(f"the header names {', '.join(map(repr, repeated))} more than once", line=1)
        return header

    def _why_missing(self, header: list[str], missing: list[str]) -> tuple[str, str]:
        """Say "semicolon-separated" when that is what it is, not just "no column"."""
        joined = self._delimiter.join(header)
        for other, word in OTHER_DELIMITERS.items():
            names = [part.strip() for part in joined.split(other)]
            if other != self._delimiter and not self._columns.missing(names):
                return (
                    f"the header is {word}-separated, but [roster] delimiter is "
                    f"{OTHER_DELIMITERS.get(self._delimiter, repr(self._delimiter))}",
                    f'if the export is meant to be so, set [roster] delimiter = "{_TOML.get(other, other)}"',
                )
        found = ", ".join(repr(name) for name in header)
        return (
            f"the header has no column {', '.join(map(repr, missing))} (it has {found})",
            "name the export's columns in [roster] employee_column, role_column, branch_column, shift_column",
        )

    def _row(self, cells: list[str], header: list[str], line: int) -> RosterRow | RosterProblem:
        where = f"{self.path}:{line}"
        if len(cells) != len(header):
            return RosterProblem(
                where,
                f"{len(cells)} fields, the header has {len(header)}",
                "a value holding the delimiter must be quoted",
            )
        by_name = dict(zip(header, cells, strict=True))
        return self._columns.row(by_name, where, lambda column: f"column {header.index(column) + 1} ({column})")

    def _unreadable(self, message: str, hint: str = "", line: int = 0) -> SourceUnreadable:
        where = f"{self.path}:{line}" if line else str(self.path)
        return SourceUnreadable(RosterProblem(where, message, hint))
