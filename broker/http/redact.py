"""Credentials in request targets, kept out of the audit trail and the logs.

Some legacy apps put the token in the query string (`?access_token=eyJ...`). The audit
path must say what was asked for without becoming a store of working credentials: the
value of a parameter with a credential's name, or any value shaped like a JWT, is
replaced with `REDACTED` (the parameter name stays, so the request is still readable).
"""

from __future__ import annotations

import re
from urllib.parse import unquote_plus

REDACTED = "REDACTED"
SECRET_PARAMS = frozenset(
    {
        "access_token", "token", "id_token", "refresh_token", "jwt", "auth", "authorization",
        "bearer", "api_key", "apikey", "key", "password", "passwd", "secret", "session", "sessionid",
        "code", "client_secret",
    }
)  # fmt: skip
_SUSPECT = re.compile(r"%|eyj|token|auth|bearer|jwt|key|pass|secret|session|code")
"""Substrings of every name in SECRET_PARAMS, of a JWT and of percent-encoding: a
(lower-cased) query without any of them holds no credential. One search per request."""
_JWT_SHAPED = re.compile(r"eyJ[A-Za-z0-9_\-]*(?:%2[Ee]|\.)[A-Za-z0-9_\-]*(?:%2[Ee]|\.)?")


def redacted_target(target: str) -> str:
    """`target` (path and query, as sent) with credentials in its query replaced."""
    path, mark, query = target.partition("?")
    if not mark:
        return target
    folded = query.lower()
    # the common case, fast; anything percent-encoded is decoded below before it is judged
    if _SUSPECT.search(folded) is None:
        return target
    pairs = query.split("&")
    redacted = [_redacted_pair(pair) for pair in pairs]
    return target if redacted == pairs else f"{path}?{'&'.join(redacted)}"


def _redacted_pair(pair: str) -> str:
    name, equals, value = pair.partition("=")
    if not equals:
        return pair
    value = unquote_plus(value)
    if unquote_plus(name).lower().replace("-", "_") in SECRET_PARAMS or ("eyJ" in value and _JWT_SHAPED.search(value)):
        return f"{name}={REDACTED}"
    return pair
