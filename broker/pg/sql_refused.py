"""The one exception SQL analysis raises: the broker will not run this statement."""

from __future__ import annotations

from broker.messages.said import Said
from broker.messages.shipped import english


class SqlRefused(Exception):
    """The broker will not run this statement; rendered as SQLSTATE 42501 (or the given code).

    `message` is the broker's own English sentence (the denial's `cause`, audited as
    is); the hint is named (`said`) and worded in the session's locale when shown."""

    def __init__(self, message: str, hint: Said | None, sqlstate: str = "42501") -> None:
        super().__init__(message)
        self.message = message
        self.said = hint
        self.sqlstate = sqlstate

    @property
    def hint(self) -> str:
        """The hint in English."""
        return english(self.said)
