"""How tokens are checked: which keys, which issuer and audience, how long to cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from broker.identity.keys import (
    HMAC_ALGORITHM,
    MIN_SECRET_BYTES,
    PUBLIC_KEY_ALGORITHMS,
    load_pem_key,
)

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


NO_KEY_SOURCE = "no key source"
"""How a config without any way to verify tokens is named (broker check only notes it)."""


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    """Key sources may coexist; each token's header (alg, kid) picks the one that applies.

    `hs256_secret` is for development and the demo: anyone holding it can mint tokens
    for any employee. Production deployments use `public_key_file` or `jwks_url`.
    """

    hs256_secret: str | None = None
    public_key_file: Path | None = None
    public_key_algorithms: tuple[str, ...] = ("RS256",)
    jwks_url: str | None = None
    jwks_min_refetch_seconds: float = 30.0
    jwks_max_age_seconds: float = 3600.0
    jwks_timeout_seconds: float = 3.0
    issuer: str | None = None
    audience: str | None = None
    leeway_seconds: float = 30.0
    token_cache_size: int = 10000
    token_cache_ttl_seconds: float = 300.0
    branch_claim: str | None = None
    """When set (with roles_claim), the identity provider is authoritative for the
    employee's branch and roles: they are read from these token claims instead of the
    roster. Shifts always come from the roster."""
    roles_claim: str | None = None

    def validate(self) -> list[str]:
        """Every problem, as sentences for the operator; empty when the settings are usable."""
        problems: list[str] = []
        if self.hs256_secret is None and self.public_key_file is None and not self.jwks_url:
            problems.append(f"{NO_KEY_SOURCE}: set hs256_secret, public_key_file or jwks_url")
        problems += self._secret_problems()
        problems += self._public_key_problems()
        problems += self._jwks_problems()
        problems += self._number_problems()
        if (self.branch_claim is None) != (self.roles_claim is None):
            problems.append("branch_claim and roles_claim are set together or not at all")
        for name, value in (("issuer", self.issuer), ("audience", self.audience)):
            if value is not None and not value.strip():
                problems.append(f"{name} is empty; leave it unset to skip the check")
        return problems

    def _secret_problems(self) -> list[str]:
        if self.hs256_secret is None:
            return []
        if len(self.hs256_secret.encode()) < MIN_SECRET_BYTES:
            return [f"hs256_secret is shorter than {MIN_SECRET_BYTES} bytes; use a random one"]
        return []

    def _public_key_problems(self) -> list[str]:
        if self.public_key_file is None:
            return []
        if not self.public_key_algorithms:
            return ["public_key_algorithms is empty; name the algorithms the key signs with"]
        wrong = [a for a in self.public_key_algorithms if a not in PUBLIC_KEY_ALGORITHMS]
        if wrong:
            allowed = ", ".join(sorted(PUBLIC_KEY_ALGORITHMS))
            hint = f" ({HMAC_ALGORITHM} belongs to hs256_secret)" if "HS256" in wrong else ""
            return [f"public_key_algorithms {', '.join(map(repr, wrong))} not allowed{hint}; choose from {allowed}"]
        try:
            load_pem_key(self.public_key_file, self.public_key_algorithms)
        except ValueError as exc:
            return [str(exc)]
        return []

    def _jwks_problems(self) -> list[str]:
        if self.jwks_url is None:
            return []
        parts = urlsplit(self.jwks_url)
        if parts.scheme == "https" and parts.hostname:
            return []
        if parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS:
            return []
        return [
            f"jwks_url {self.jwks_url!r} must be an https:// URL (plain http only on "
            "localhost): keys fetched in the clear can be swapped by anyone on the path"
        ]

    def _number_problems(self) -> list[str]:
        problems: list[str] = []
        positive = {
            "jwks_max_age_seconds": self.jwks_max_age_seconds,
            "jwks_timeout_seconds": self.jwks_timeout_seconds,
        }
        not_negative = {
            "jwks_min_refetch_seconds": self.jwks_min_refetch_seconds,
            "leeway_seconds": self.leeway_seconds,
            "token_cache_size": self.token_cache_size,
            "token_cache_ttl_seconds": self.token_cache_ttl_seconds,
        }
        problems += [f"{name} must be above 0" for name, v in positive.items() if not v > 0]
        problems += [f"{name} must not be negative" for name, v in not_negative.items() if not v >= 0]
        if self.leeway_seconds > 300:
            problems.append("leeway_seconds above 300 would accept tokens long expired")
        return problems
