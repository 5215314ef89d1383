"""Decisions rendered for HTTP: RFC 9457 problem details, Retry-After, RateLimit headers.

This door's one table from reason code to status lives here. What an employee reads
(title, detail, the help desk's contact) comes from the policy's message catalogue
(`policies/messages.toml` over the shipped English and Chinese), in the language the
request's `Accept-Language` asks for; `Content-Language` says which one it got.
"""

from __future__ import annotations

import math
from typing import Any

import orjson
from aiohttp import web

from broker.core.clock import iso
from broker.core.decision import Decision, Verdict
from broker.core.reason import Reason
from broker.messages.catalogue import Catalogue, Spoken
from broker.messages.shipped import shipped_catalogue

PROBLEM_TYPE = "application/problem+json"
DECISION_HEADER = "X-Broker-Decision"

STATUS_AND_TITLE: dict[Reason, tuple[int, str]] = {
    Reason.IDENTITY_MISSING: (401, "Sign-in required"),
    Reason.IDENTITY_MALFORMED: (401, "Access token is malformed"),
    Reason.IDENTITY_EXPIRED: (401, "Access token has expired"),
    Reason.IDENTITY_NOT_YET_VALID: (401, "Access token is not valid yet"),
    Reason.IDENTITY_BAD_SIGNATURE: (401, "Access token signature is invalid"),
    Reason.IDENTITY_WRONG_AUDIENCE: (401, "Access token is for another service"),
    Reason.IDENTITY_WRONG_ISSUER: (401, "Access token comes from an untrusted issuer"),
    Reason.IDENTITY_UNKNOWN_KEY: (401, "Access token is signed with an unknown key"),
    Reason.IDENTITY_BAD_ALGORITHM: (401, "Access token uses a forbidden algorithm"),
    Reason.IDENTITY_KEYS_UNAVAILABLE: (503, "Signing keys are unavailable"),
    Reason.IDENTITY_NOT_ON_ROSTER: (403, "Employee is not on the roster"),
    Reason.IDENTITY_BAD_CLAIMS: (403, "The token's roles are unknown here"),
    Reason.IDENTITY_WRONG_USER: (403, "The user name is not the token's employee"),
    Reason.IDENTITY_NO_SESSION: (401, "Sign-in session has ended"),
    Reason.IDENTITY_SESSIONS_UNAVAILABLE: (503, "Sign-in sessions cannot be checked"),
    Reason.LOGIN_REFUSED: (403, "Sign-in could not be completed"),
    Reason.SESSIONS_OVER_LIMIT: (429, "Too many sessions"),
    Reason.DEVICE_MISSING: (403, "This service answers registered devices only"),
    Reason.DEVICE_UNKNOWN: (403, "This device is not registered"),
    Reason.DEVICE_NOT_YOURS: (403, "This device is not registered for you"),
    Reason.STATEMENT_REFUSED: (403, "The statement cannot be checked"),
    Reason.STATEMENT_BAD_SYNTAX: (400, "The statement is not valid SQL"),
    Reason.STATEMENT_BAD_PARAMETER: (400, "A statement parameter cannot be read"),
    Reason.PROTOCOL_UNSUPPORTED: (400, "Protocol feature not supported"),
    Reason.REQUEST_BAD_PATH: (400, "Request path is ambiguous"),
    Reason.REQUEST_AMBIGUOUS_QUERY: (400, "Query string is ambiguous"),
    Reason.REQUEST_BAD_LIMIT: (400, "Record limit is not a number"),
    Reason.REQUEST_BAD_BODY: (400, "Request body cannot be checked"),
    Reason.REQUEST_TOO_LARGE: (413, "Request body is too large"),
    Reason.REQUEST_ENCODED_BODY: (415, "Request body is compressed or transfer-coded"),
    Reason.REQUEST_SLOW_BODY: (408, "Request body arrived too slowly"),
    Reason.REQUEST_METHOD_OVERRIDE: (400, "Method override is not accepted"),
    Reason.REQUEST_CROSS_SITE: (403, "Request made by another site"),
    Reason.ROUTE_UNKNOWN: (403, "This API path is not open through the broker"),
    Reason.POLICY_NOT_PERMITTED: (403, "Your role does not allow this"),
    Reason.POLICY_OTHER_BRANCH: (403, "Record belongs to another branch"),
    Reason.POLICY_DENIED: (403, "Closed by a deny rule"),
    Reason.POLICY_UNAVAILABLE: (503, "No policy is loaded"),
    Reason.SHIFT_OUTSIDE: (403, "Outside your shift"),
    Reason.BULK_OVER_CAP: (403, "Too many records in one request"),
    Reason.BULK_UNBOUNDED: (403, "Request has no record limit"),
    Reason.RATE_EXCEEDED: (429, "Too many requests"),
    Reason.QUOTA_EXCEEDED: (429, "Records quota used up"),
    Reason.PROBE_EXCEEDED: (429, "Too many refused record requests"),
    Reason.AUDIT_UNAVAILABLE: (503, "Audit log cannot be written"),
    Reason.IDENTITY_SUSPENDED: (403, "Access suspended"),
    Reason.METER_UNAVAILABLE: (503, "Quotas cannot be checked right now"),
    Reason.UPSTREAM_UNAVAILABLE: (502, "The service behind the broker is unavailable"),
    Reason.UPSTREAM_TIMEOUT: (504, "The service behind the broker did not answer in time"),
    Reason.UPSTREAM_TOO_MANY_RECORDS: (403, "The answer held more records than this request may return"),
    Reason.UPSTREAM_OTHER_BRANCH: (403, "The answer held records you may not see"),
    Reason.UPSTREAM_UNINSPECTABLE: (502, "The answer could not be checked"),
    Reason.UPSTREAM_REFUSED: (502, "The service behind the broker refused the request"),
    Reason.UPSTREAM_BUSY: (503, "The broker is holding too many answers right now"),
    Reason.BROKER_ERROR: (503, "The broker could not decide"),
}


def problem_type(reason: Reason) -> str:
    return f"/-/problems/{reason.value}"


def problem_response(
    decision: Decision, status: int | None = None, *, catalogue: Catalogue, accept_language: str | None
) -> web.Response:
    """The denial as the employee's app receives it (`status` overrides the reason's),
    worded in the locale `accept_language` chooses from `catalogue`."""
    default_status, title = STATUS_AND_TITLE.get(decision.reason, (403, "Denied"))
    status = status or default_status
    spoken = catalogue.speak(decision, catalogue.negotiate(accept_language))
    body: dict[str, Any] = {
        "type": problem_type(decision.reason),
        "title": spoken.title or title,
        "status": status,
        "detail": spoken.detail,
        "instance": f"urn:broker:decision:{decision.id}",
        "reason": decision.reason.value,
        "decision_id": decision.id,
    }
    if decision.verdict is Verdict.ERROR:
        body["verdict"] = "error"
    if decision.employee:
        body["employee"] = decision.employee
    if decision.rule:
        body["rule"] = decision.rule
    if decision.quota is not None:
        q = decision.quota
        body["quota"] = {
            "resource": q.name,
            "limit": q.limit,
            "used": q.used,
            "remaining": q.remaining,
            "resets_at": iso(q.reset_at, q.zone),
        }
    if decision.retry_after is not None:
        body["retry_after"] = math.ceil(decision.retry_after)
    body.update(decision.facts)
    body.pop("subject", None)
    if catalogue.help is not None:
        body["help"] = catalogue.help
    headers = limit_headers(decision, decision.started)
    headers[DECISION_HEADER] = decision.id
    headers.update(_language_headers(spoken))
    if decision.reason.is_identity and status == 401:
        headers["WWW-Authenticate"] = _challenge(decision)
    if decision.retry_after is not None and status in (429, 503):
        headers["Retry-After"] = str(max(1, math.ceil(decision.retry_after)))
    return web.Response(status=status, body=orjson.dumps(body), content_type=PROBLEM_TYPE, headers=headers)


def bare_problem(
    reason: Reason,
    status: int,
    detail: str,
    *,
    catalogue: Catalogue | None = None,
    accept_language: str | None = None,
    values: dict[str, str] | None = None,
) -> web.Response:
    """A problem outside any decision (admin endpoints, a sign-in step), worded like a
    decision's when the `catalogue` is given; `values` fill the reason's placeholders."""
    catalogue = catalogue or shipped_catalogue()
    spoken = catalogue.speak_bare(reason, catalogue.negotiate(accept_language), detail, values)
    body: dict[str, Any] = {
        "type": problem_type(reason),
        "title": spoken.title or STATUS_AND_TITLE.get(reason, (status, "Error"))[1],
        "status": status,
        "detail": spoken.detail,
        "reason": reason.value,
    }
    if catalogue.help is not None:
        body["help"] = catalogue.help
    return web.Response(
        status=status, body=orjson.dumps(body), content_type=PROBLEM_TYPE, headers=_language_headers(spoken)
    )


def _language_headers(spoken: Spoken) -> dict[str, str]:
    """Which language the text is in, and that another Accept-Language may get another."""
    return {"Content-Language": spoken.locale, "Vary": "Accept-Language"}


def _challenge(decision: Decision) -> str:
    if decision.reason is Reason.IDENTITY_MISSING:
        return 'Bearer realm="broker"'
    description = decision.detail.replace("\\", "").replace('"', "'")
    return f'Bearer realm="broker", error="invalid_token", error_description="{description}"'


_POLICIES: dict[tuple[str, int, int, int, int], str] = {}
"""RateLimit-Policy texts by (quota name, limit, window, rate limit, period): the same
few for everyone under one policy, so rendered once (bounded: cleared when it grows)."""


def limit_headers(decision: Decision, now: float) -> dict[str, str]:
    """IETF RateLimit-Policy / RateLimit headers for the quota and the request rate."""
    q, r = decision.quota, decision.rate
    if q is None and r is None:
        return {}
    key = (q.name, q.limit, q.window, 0, 0) if q is not None else ("", 0, 0, 0, 0)
    if r is not None:
        key = (*key[:3], r.limit, r.period)
    policy = _POLICIES.get(key)
    if policy is None:
        parts = [f'"{q.name}";q={q.limit};w={q.window}'] if q is not None else []
        if r is not None:
            parts.append(f'"requests";q={r.limit};w={r.period}')
        if len(_POLICIES) >= 1024:
            _POLICIES.clear()
        policy = _POLICIES[key] = ", ".join(parts)
    state = "" if q is None else f'"{q.name}";r={q.remaining};t={max(0, math.ceil(q.reset_at - now))}'
    if r is not None:
        # with nothing left, `t` is when the next request is allowed: what Retry-After
        # says on a refusal, not when the whole allowance has refilled
        wait = max(1, math.ceil(r.retry_after)) if r.remaining == 0 and r.retry_after > 0 else r.reset_after
        rate = f'"requests";r={r.remaining};t={max(0, math.ceil(wait))}'
        state = f"{state}, {rate}" if state else rate
    return {"RateLimit-Policy": policy, "RateLimit": state}
