"""What a front door hands the core: who is asking, for what, how much."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from broker.core.reason import Reason

UNBOUNDED: Final = 1 << 62
"""A request with no upper bound on the records it may return.

It is a number, not None, so comparisons against caps and quotas need no special case.
"""


@dataclass(frozen=True, slots=True)
class Principal:
    """An employee as the roster (the policy files) knows them."""

    employee: str
    roles: tuple[str, ...]
    branches: tuple[str, ...]
    global_roles: tuple[str, ...]
    shifts: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A door could not classify the request; the core still identifies and audits it."""

    reason: Reason
    detail: str


@dataclass(frozen=True, slots=True)
class Access:
    """One request, translated out of its protocol.

    `records` is an upper bound on what the request can return (UNBOUNDED if none);
    `branch` is the branch the record belongs to when the request names it, else None
    and the door checks each returned record instead.
    """

    credential: str | None
    client: str
    target: str
    resource: str = ""
    action: str = ""
    branch: str | None = None
    records: int = 0
    refusal: Refusal | None = None
    device: str | None = None
    """The SHA-256 fingerprint (hex) of the client's certificate when the door requires
    device certificates ("" when none was presented); None when it does not."""
    session: str | None = None
    """The browser session id from the broker's cookie, when the request carries no
    Authorization header and browser sign-in is configured; identifies instead of
    `credential`."""

    def __repr__(self) -> str:  # never let the raw token reach a log line
        return (
            f"Access(client={self.client!r}, target={self.target!r}, "
            f"resource={self.resource!r}, action={self.action!r}, branch={self.branch!r}, "
            f"records={self.records!r}, refusal={self.refusal!r}, device={self.device!r}, "
            f"session={'...' if self.session else None})"
        )
