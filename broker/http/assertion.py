"""A signed assertion of the decision, for an upstream that wants to check it itself.

The broker tells the upstream who is asking with `X-Broker-Employee`; an upstream
reachable by other paths cannot trust a plain header. With `[upstream] assertion_key_file`
set, each forwarded request also carries `X-Broker-Assertion`: a JWT signed with that key
(Ed25519 → EdDSA, RSA → RS256), valid for `assertion_ttl_seconds`, naming the employee,
their roles and branches, the record's branch, the resource and action, and the decision
id (`jti`, as in the audit), with the upstream's URL as audience. The upstream verifies it
with the public key. Clients can never send one of their own: every `X-Broker-*` header a
client sends is dropped.
"""

from __future__ import annotations

import time
from pathlib import Path

import jwt  # noqa: TID251 - the broker signs this token; it checks none with it
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from broker.core.decision import Decision
from broker.keyfile import KeyFileError, read_private_key

ASSERTION_HEADER = "X-Broker-Assertion"
ISSUER = "broker"


class AssertionKeyError(ValueError):
    """A key file that cannot sign assertions, with the reason in words."""


class Asserter:
    def __init__(self, key_file: Path, ttl_seconds: float, audience: str) -> None:
        try:
            key = read_private_key(key_file)
        except KeyFileError as exc:
            raise AssertionKeyError(str(exc)) from exc
        if isinstance(key, Ed25519PrivateKey):
            self._algorithm = "EdDSA"
        elif isinstance(key, RSAPrivateKey):
            self._algorithm = "RS256"
        else:
            raise AssertionKeyError(f"{key_file} holds a {type(key).__name__}; use an Ed25519 or RSA key")
        self._key = key
        self._ttl = ttl_seconds
        self._audience = audience

    def token(self, decision: Decision) -> str:
        now = int(time.time())
        principal, access = decision.principal, decision.access
        claims = {
            "iss": ISSUER,
            "aud": self._audience,
            "sub": decision.employee or "",
            "roles": list(principal.roles) if principal else [],
            "branches": list(principal.branches) if principal else [],
            "record_branch": access.branch,
            "resource": access.resource,
            "action": access.action,
            "jti": decision.id,
            "iat": now,
            "exp": now + max(1, int(self._ttl)),
        }
        return jwt.encode(claims, self._key, algorithm=self._algorithm)
