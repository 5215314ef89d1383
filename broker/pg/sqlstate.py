"""Decisions rendered for PostgreSQL clients: this door's one table from reason to SQLSTATE.

Drivers act on the SQLSTATE (28P01 → ask for a new password, 53400 → back off), people
read the message, detail and hint; the hint always says what *is* allowed.
"""

from __future__ import annotations

from collections.abc import Callable

from broker.core.clock import iso
from broker.core.decision import Decision
from broker.core.reason import Reason
from broker.messages.catalogue import Catalogue
from broker.messages.said import Said, said
from broker.messages.shipped import english
from broker.pg.wire import error_response

SQLSTATE: dict[Reason, str] = {
    Reason.IDENTITY_MISSING: "28P01",
    Reason.IDENTITY_MALFORMED: "28P01",
    Reason.IDENTITY_EXPIRED: "28P01",
    Reason.IDENTITY_NOT_YET_VALID: "28P01",
    Reason.IDENTITY_BAD_SIGNATURE: "28P01",
    Reason.IDENTITY_WRONG_AUDIENCE: "28P01",
    Reason.IDENTITY_WRONG_ISSUER: "28P01",
    Reason.IDENTITY_UNKNOWN_KEY: "28P01",
    Reason.IDENTITY_BAD_ALGORITHM: "28P01",
    Reason.IDENTITY_KEYS_UNAVAILABLE: "08004",
    Reason.IDENTITY_NO_SESSION: "28P01",
    Reason.IDENTITY_SESSIONS_UNAVAILABLE: "08004",
    Reason.LOGIN_REFUSED: "28000",
    Reason.IDENTITY_NOT_ON_ROSTER: "28000",
    Reason.IDENTITY_BAD_CLAIMS: "28000",
    Reason.IDENTITY_WRONG_USER: "28000",
    Reason.SESSIONS_OVER_LIMIT: "53300",
    Reason.DEVICE_MISSING: "28000",
    Reason.DEVICE_UNKNOWN: "28000",
    Reason.DEVICE_NOT_YOURS: "28000",
    Reason.STATEMENT_REFUSED: "42501",
    Reason.STATEMENT_BAD_SYNTAX: "42601",
    Reason.STATEMENT_BAD_PARAMETER: "22023",
    Reason.PROTOCOL_UNSUPPORTED: "0A000",
    Reason.POLICY_NOT_PERMITTED: "42501",
    Reason.POLICY_OTHER_BRANCH: "42501",
    Reason.POLICY_DENIED: "42501",
    Reason.POLICY_UNAVAILABLE: "57P03",
    Reason.SHIFT_OUTSIDE: "42501",
    Reason.BULK_OVER_CAP: "42501",
    Reason.BULK_UNBOUNDED: "42501",
    Reason.RATE_EXCEEDED: "53400",
    Reason.QUOTA_EXCEEDED: "53400",
    Reason.PROBE_EXCEEDED: "53400",
    Reason.AUDIT_UNAVAILABLE: "58030",
    Reason.IDENTITY_SUSPENDED: "28000",
    Reason.METER_UNAVAILABLE: "53400",
    Reason.UPSTREAM_TOO_MANY_RECORDS: "53400",
    Reason.UPSTREAM_TIMEOUT: "57014",
    Reason.UPSTREAM_UNAVAILABLE: "08006",
    Reason.BROKER_ERROR: "58000",
}

LOGIN_SQLSTATE = {Reason.SHIFT_OUTSIDE: "28000"}
"""At login an off-shift employee is an authorization failure (28000), not a statement's
insufficient privilege; errors (no policy, the broker failing) keep their own codes: an
error is not a denial, and drivers retry 57P03."""

HINTS: dict[Reason, Said] = {
    Reason.POLICY_NOT_PERMITTED: said("hint_not_permitted"),
    Reason.SHIFT_OUTSIDE: said("hint_shift"),
    Reason.POLICY_DENIED: said("hint_denied"),
    Reason.BULK_OVER_CAP: said("hint_over_cap"),
    Reason.BULK_UNBOUNDED: said("hint_unbounded"),
    Reason.RATE_EXCEEDED: said("hint_rate"),
    Reason.QUOTA_EXCEEDED: said("hint_quota"),
    Reason.METER_UNAVAILABLE: said("hint_meter"),
    Reason.UPSTREAM_TOO_MANY_RECORDS: said("hint_too_many_records"),
    Reason.IDENTITY_EXPIRED: said("hint_expired"),
    Reason.IDENTITY_WRONG_USER: said("hint_wrong_user"),
    Reason.SESSIONS_OVER_LIMIT: said("hint_sessions"),
    Reason.POLICY_UNAVAILABLE: said("hint_no_policy"),
}
"""The hint of each reason's refusal, worded in the session's locale (`pg` texts)."""


_SEPARATOR = said("detail_separator")


def sqlstate_of(decision: Decision, *, fatal: bool = False) -> str:
    """The SQLSTATE a refused decision is shown with (and audited with)."""
    table = LOGIN_SQLSTATE if fatal else {}
    return table.get(decision.reason) or SQLSTATE.get(decision.reason, "42501")


def decision_error(decision: Decision, catalogue: Catalogue, locale: str, *, fatal: bool = False) -> bytes:
    """The ErrorResponse an employee's client shows for a refused decision: the message
    in the session's locale (with the help desk's contact), the reason code after it."""
    code = sqlstate_of(decision, fatal=fatal)
    extra = [(b"W", f"broker decision {decision.id}")] if decision.id else []
    message = catalogue.speak(decision, locale).detail or "Refused by the access broker."
    return error_response(
        "FATAL" if fatal else "ERROR",
        code,
        f"{message} [{decision.reason.value}]",
        detail=decision_detail(decision, lambda text: catalogue.words(text, locale)),
        hint=catalogue.words(hint, locale) if (hint := HINTS.get(decision.reason)) else "",
        extra=extra,
    )


def said_error(
    catalogue: Catalogue,
    locale: str,
    severity: str,
    code: str,
    message: Said,
    hint: Said | None = None,
    *,
    tail: str = "",
    detail: str = "",
) -> bytes:
    """An ErrorResponse of the door's own (no decision behind it), worded in `locale`;
    `tail` follows the message as it is (a reason code)."""
    shown_hint = catalogue.words(hint, locale) if hint is not None else ""
    return error_response(severity, code, catalogue.words(message, locale) + tail, detail=detail, hint=shown_hint)


def decision_detail(decision: Decision, words: Callable[[Said], str] = english) -> str:
    """The numbers behind the denial: quota left and when it resets, rate, cap (in the
    session's `words`)."""
    parts = [words(said("detail_decision", id=decision.id))] if decision.id else []
    if decision.quota is not None:
        q = decision.quota
        reset = iso(q.reset_at, q.zone)
        parts.append(
            words(
                said(
                    "detail_quota", resource=q.name, used=q.used, limit=q.limit, remaining=q.remaining, resets_at=reset
                )
            )
        )
    if decision.rate is not None and decision.retry_after is not None:
        parts.append(words(said("detail_retry", seconds=f"{decision.retry_after:.1f}")))
    if "cap" in decision.facts:
        parts.append(words(said("detail_cap", cap=decision.facts["cap"])))
    if decision.rule:
        parts.append(words(said("detail_rule", rule=decision.rule)))
    return words(_SEPARATOR).join(parts)
