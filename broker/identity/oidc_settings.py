"""`[oidc]`: browser sign-in at the broker for apps that send no token."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})
_COOKIE_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]{1,64}\Z")
"""RFC 6265 cookie-name characters (an HTTP token)."""
_CLAIM = re.compile(r"[A-Za-z0-9_.:\-]{1,64}\Z")
ID_TOKEN_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA"})
"""Asymmetric only: a symmetric ID token would be signed with the client secret, which
every replica's configuration holds."""


def plain_http_allowed(url: str) -> bool:
    """https anywhere, plain http only on this machine (tests, a laptop): a code or a key
    fetched in the clear can be swapped by anyone on the path."""
    parts = urlsplit(url)
    return bool(parts.hostname) and (
        parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in _LOOPBACK_HOSTS)
    )


@dataclass(frozen=True, slots=True)
class OidcSettings:
    """OpenID Connect authorization-code sign-in (with PKCE) for browser apps.

    A browser request without `Authorization` is decided on the broker's session
    cookie; without one, a page load is sent to `/-/oidc/login` and an API call gets 401.
    Sessions live server-side in the counter store ([meter] store), so with Redis every
    replica shares them and a revocation holds everywhere."""

    enabled: bool = False
    issuer: str = ""
    """The identity provider's issuer URL; its discovery document is read from
    `<issuer>/.well-known/openid-configuration` and must name the same issuer."""
    client_id: str = ""
    client_secret: str = ""
    """Better set as BROKER_OIDC_CLIENT_SECRET_FILE (a mounted secret); empty for a
    public client (PKCE alone)."""
    public_url: str = ""
    """Where browsers reach the broker (`https://portal.example.com`): the redirect URI
    registered at the provider is `<public_url>/-/oidc/callback`."""
    scopes: tuple[str, ...] = ("openid",)
    employee_claim: str = "sub"
    """The ID token claim that holds the employee id the roster knows."""
    algorithms: tuple[str, ...] = ("RS256",)
    """ID token signing algorithms accepted (asymmetric only)."""
    cookie_name: str = "__Host-broker-session"
    """`__Host-` cookies are Secure, host-only and Path=/, so a sibling subdomain
    cannot plant one."""
    session_max_seconds: float = 12 * 3600.0
    """A session ends at the earliest of this, the ID token's lifetime and the end of
    the employee's current shift."""
    login_timeout_seconds: float = 600.0
    """How long a started sign-in may take at the provider."""
    timeout_seconds: float = 5.0
    """Each call to the provider (discovery, keys, code exchange)."""

    @property
    def redirect_uri(self) -> str:
        return self.public_url.rstrip("/") + "/-/oidc/callback"

    @property
    def public_origin(self) -> str:
        """`public_url` as browsers write it in `Origin` (scheme://host[:port], the
        default port left out)."""
        parts = urlsplit(self.public_url)
        host = parts.hostname or ""
        host = f"[{host}]" if ":" in host else host
        port = parts.port if parts.port not in (None, {"https": 443, "http": 80}.get(parts.scheme)) else None
        return f"{parts.scheme}://{host}" + (f":{port}" if port else "")

    @property
    def login_cookie_name(self) -> str:
        """The short-lived cookie that binds a sign-in's state to the browser that began it."""
        prefix = "__Host-" if self.cookie_name.startswith("__Host-") else ""
        return f"{prefix}broker-login"

    def problems(self) -> list[str]:
        if not self.enabled:
            return []
        found = []
        if not plain_http_allowed(self.issuer):
            found.append(f"[oidc] issuer {self.issuer!r} must be an https:// URL (plain http only on localhost)")
        if not self.client_id:
            found.append("[oidc] client_id is required")
        if not plain_http_allowed(self.public_url) or urlsplit(self.public_url).path not in ("", "/"):
            found.append(f"[oidc] public_url {self.public_url!r} must be an https:// origin without a path")
        if "openid" not in self.scopes:
            found.append("[oidc] scopes must include openid")
        if not _CLAIM.match(self.employee_claim):
            found.append(f"[oidc] employee_claim {self.employee_claim!r} is not a claim name")
        wrong = [a for a in self.algorithms if a not in ID_TOKEN_ALGORITHMS]
        if wrong or not self.algorithms:
            found.append(f"[oidc] algorithms must be among {', '.join(sorted(ID_TOKEN_ALGORITHMS))}")
        if not _COOKIE_NAME.match(self.cookie_name):
            found.append(f"[oidc] cookie_name {self.cookie_name!r} is not a cookie name")
        for name in ("session_max_seconds", "login_timeout_seconds", "timeout_seconds"):
            if not getattr(self, name) > 0:
                found.append(f"[oidc] {name} must be above 0")
        return found
