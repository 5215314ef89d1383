"""The one exception SQL analysis raises: the broker will not run this statement."""

from __future__ import annotations


class SqlRefused(Exception):
    """The broker will not run this statement; rendered as SQLSTATE 42501 (or the given code)."""

    def __init__(self, message: str, hint: str, sqlstate: str = "42501") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.sqlstate = sqlstate
