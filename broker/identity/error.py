"""The one exception identity raises: a reason code and a sentence for the employee."""

from __future__ import annotations

from dataclasses import dataclass

from broker.core.reason import Reason


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token vouches for; branch and roles only when the identity provider
    is configured to be authoritative for them."""

    subject: str
    branch: str | None = None
    roles: tuple[str, ...] | None = None


class IdentityError(Exception):
    """A credential was refused, or could not be checked.

    `detail` is shown to the employee and written to the audit trail, so it names the
    problem (expired, wrong audience, unknown key id, ...) and never the token itself:
    a token in a log line is a credential anyone reading the log can replay.
    """

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
