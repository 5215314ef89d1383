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


class Access:
    """One request, translated out of its protocol.

    `records` is an upper bound on what the request can return (UNBOUNDED if none);
    `branch` is the branch the record belongs to when the request names it, else None
    and the door checks each returned record instead.

    Written out by hand rather than as a frozen dataclass: one is made for every request,
    and a compiled build makes this in tens of nanoseconds against about two
    microseconds; its Final attributes still refuse assignment. `with_*` make a changed
    copy, as `dataclasses.replace` did.
    """

    __slots__ = ("action", "branch", "client", "credential", "device", "records", "refusal", "resource", "session",
                 "target")  # fmt: skip

    def __init__(
        self,
        credential: str | None,
        client: str,
        target: str,
        resource: str = "",
        action: str = "",
        branch: str | None = None,
        records: int = 0,
        refusal: Refusal | None = None,
        device: str | None = None,
        session: str | None = None,
    ) -> None:
        self.credential: Final = credential
        self.client: Final = client
        self.target: Final = target
        self.resource: Final = resource
        self.action: Final = action
        self.branch: Final = branch
        self.records: Final = records
        self.refusal: Final = refusal
        self.device: Final = device
        """The SHA-256 fingerprint (hex) of the client's certificate when the door requires
        device certificates ("" when none was presented); None when it does not."""
        self.session: Final = session
        """The browser session id from the broker's cookie, when the request carries no
        Authorization header and browser sign-in is configured; identifies instead of
        `credential`."""

    def with_branch(self, branch: str | None) -> Access:
        return Access(self.credential, self.client, self.target, self.resource, self.action, branch, self.records,
                      self.refusal, self.device, self.session)  # fmt: skip

    def with_refusal(self, refusal: Refusal) -> Access:
        return Access(self.credential, self.client, self.target, self.resource, self.action, self.branch,
                      self.records, refusal, self.device, self.session)  # fmt: skip

    def with_device(self, device: str) -> Access:
        return Access(self.credential, self.client, self.target, self.resource, self.action, self.branch,
                      self.records, self.refusal, device, self.session)  # fmt: skip

    def with_session(self, session: str) -> Access:
        return Access(self.credential, self.client, self.target, self.resource, self.action, self.branch,
                      self.records, self.refusal, self.device, session)  # fmt: skip

    def with_credential(self, credential: str | None) -> Access:
        return Access(credential, self.client, self.target, self.resource, self.action, self.branch, self.records,
                      self.refusal, self.device, self.session)  # fmt: skip

    def __repr__(self) -> str:  # never let the raw token reach a log line
        return (
            f"Access(client={self.client!r}, target={self.target!r}, "
            f"resource={self.resource!r}, action={self.action!r}, branch={self.branch!r}, "
            f"records={self.records!r}, refusal={self.refusal!r}, device={self.device!r}, "
            f"session={'...' if self.session else None})"
        )
