"""Stable reason codes: what every denial, and every allow, is called.

Codes are part of the contract with employees' apps, the audit trail and dashboards:
add new ones freely, never rename one. Each front door owns one table from code to
its protocol (HTTP status and problem type; SQLSTATE).
"""

from enum import StrEnum


class Reason(StrEnum):
    ALLOWED = "allow"

    IDENTITY_MISSING = "identity.missing"
    IDENTITY_MALFORMED = "identity.malformed"
    IDENTITY_EXPIRED = "identity.expired"
    IDENTITY_NOT_YET_VALID = "identity.not_yet_valid"
    IDENTITY_BAD_SIGNATURE = "identity.bad_signature"
    IDENTITY_WRONG_AUDIENCE = "identity.wrong_audience"
    IDENTITY_WRONG_ISSUER = "identity.wrong_issuer"
    IDENTITY_UNKNOWN_KEY = "identity.unknown_key"
    IDENTITY_BAD_ALGORITHM = "identity.bad_algorithm"
    IDENTITY_KEYS_UNAVAILABLE = "identity.keys_unavailable"
    IDENTITY_SUSPENDED = "identity.suspended"
    IDENTITY_NOT_ON_ROSTER = "identity.not_on_roster"
    IDENTITY_BAD_CLAIMS = "identity.bad_claims"
    IDENTITY_WRONG_USER = "identity.wrong_user"
    IDENTITY_NO_SESSION = "identity.no_session"
    IDENTITY_SESSIONS_UNAVAILABLE = "identity.sessions_unavailable"
    LOGIN_REFUSED = "login.refused"
    SESSIONS_OVER_LIMIT = "sessions.over_limit"
    DEVICE_MISSING = "device.missing"
    DEVICE_UNKNOWN = "device.unknown"
    DEVICE_NOT_YOURS = "device.not_yours"

    REQUEST_BAD_PATH = "request.bad_path"
    REQUEST_AMBIGUOUS_QUERY = "request.ambiguous_query"
    REQUEST_BAD_LIMIT = "request.bad_limit"
    REQUEST_BAD_BODY = "request.bad_body"
    REQUEST_TOO_LARGE = "request.too_large"
    REQUEST_ENCODED_BODY = "request.encoded_body"
    REQUEST_SLOW_BODY = "request.slow_body"
    REQUEST_METHOD_OVERRIDE = "request.method_override"
    REQUEST_CROSS_SITE = "request.cross_site"
    ROUTE_UNKNOWN = "route.unknown"
    STATEMENT_REFUSED = "statement.refused"
    STATEMENT_BAD_SYNTAX = "statement.bad_syntax"
    STATEMENT_BAD_PARAMETER = "statement.bad_parameter"
    PROTOCOL_UNSUPPORTED = "protocol.unsupported"

    POLICY_NOT_PERMITTED = "policy.not_permitted"
    POLICY_OTHER_BRANCH = "policy.other_branch"
    POLICY_DENIED = "policy.denied"
    POLICY_UNAVAILABLE = "policy.unavailable"
    SHIFT_OUTSIDE = "shift.outside"
    BULK_OVER_CAP = "bulk.over_cap"
    BULK_UNBOUNDED = "bulk.unbounded"
    RATE_EXCEEDED = "rate.exceeded"
    METER_UNAVAILABLE = "meter.unavailable"
    QUOTA_EXCEEDED = "quota.exceeded"
    PROBE_EXCEEDED = "probe.exceeded"
    AUDIT_UNAVAILABLE = "audit.unavailable"

    UPSTREAM_UNAVAILABLE = "upstream.unavailable"
    UPSTREAM_TIMEOUT = "upstream.timeout"
    UPSTREAM_TOO_MANY_RECORDS = "upstream.too_many_records"
    UPSTREAM_OTHER_BRANCH = "upstream.other_branch"
    UPSTREAM_UNINSPECTABLE = "upstream.uninspectable"
    UPSTREAM_REFUSED = "upstream.refused"
    UPSTREAM_BUSY = "upstream.busy"

    BROKER_ERROR = "broker.error"

    @property
    def is_identity(self) -> bool:
        return self.value.startswith("identity.")
