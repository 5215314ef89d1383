"""Bearer token in, employee id out: JWT verification with a per-token result cache."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Final

import aiohttp
import jwt

from broker.core.clock import Clock, iso
from broker.core.reason import Reason
from broker.identity.error import Identity, IdentityError
from broker.identity.keys import (
    HMAC_ALGORITHM,
    MIN_SECRET_BYTES,
    JwksSource,
    KeyRing,
    VerificationKey,
    load_pem_key,
    secret_key,
)
from broker.identity.settings import IdentitySettings

MAX_TOKEN_CHARS: Final = 8 * 1024
MAX_SUBJECT_CHARS: Final = 128
_ATTRIBUTE: Final = re.compile(r"[A-Za-z0-9_.@+\-]{1,64}\Z")
_TOKEN_SHAPE: Final = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
"""Three base64url segments without padding (RFC 7515 compact form); an empty
signature is let through only so that `alg: none` gets its own, clearer refusal."""
_DECODE_OPTIONS: Final[jwt.types.Options] = {
    # Times are checked against the injected Clock, issuer and audience exactly, below.
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,  # _subject() checks it with a sentence that says what is wrong
    "require": ["exp", "sub"],
    "enforce_minimum_key_length": True,
}
_CLAIM_NAMES: Final = {"exp": "expiry (exp)", "sub": "subject (sub)"}


class JwtAuthenticator:
    """Verifies a bearer JWT and returns the employee id in its `sub` claim.

    Verifying a signature costs tens of microseconds, more than the rest of a proxied
    request, and an employee's app sends the same token for minutes. So a verified
    token is remembered (exact string -> subject, exp, when cached): a repeat costs a
    dict lookup and a clock read, and still honours `exp` and the cache ttl. Only
    successes are cached; a refused token is checked again every time.
    """

    def __init__(
        self,
        settings: IdentitySettings,
        clock: Clock,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        """Raises ValueError naming every problem in `settings`.

        `session_factory` makes the aiohttp session used for JWKS fetches (created on
        first fetch, closed by `close()`); by default a plain ClientSession.
        """
        problems = settings.validate()
        if problems:
            raise ValueError("identity settings: " + "; ".join(problems))
        self._settings = settings
        self._clock = clock
        self._leeway = settings.leeway_seconds
        self._cache_size = settings.token_cache_size
        self._cache_ttl = settings.token_cache_ttl_seconds
        self._cache: dict[str, tuple[Identity, float, float]] = {}
        self._keys = KeyRing(
            secret_key(settings.hs256_secret) if settings.hs256_secret is not None else None,
            _public_key(settings),
            _jwks(settings, clock, session_factory),
        )

    async def authenticate(self, credential: str | None) -> str:
        """The employee id the token vouches for, or IdentityError saying why not."""
        return (await self.identify(credential)).subject

    async def identify(self, credential: str | None) -> Identity:
        """The verified identity, with branch and roles when the IdP is trusted for them."""
        if not credential:
            raise IdentityError(Reason.IDENTITY_MISSING, "no bearer token was sent; sign in and send one")
        hit = self._cache.get(credential)
        if hit is not None:
            identity, expires, cached_at = hit
            now = self._clock.now()
            if expires > now - self._leeway and 0 <= now - cached_at < self._cache_ttl:
                return identity
            del self._cache[credential]
        return await self._verify(credential)

    async def close(self) -> None:
        """Closes the JWKS HTTP session, if one was opened."""
        await self._keys.close()

    @property
    def cached_tokens(self) -> int:
        """How many verified tokens are remembered (for metrics and tests)."""
        return len(self._cache)

    async def _verify(self, token: str) -> Identity:
        algorithm, kid = _read_header(token)
        key = await self._keys.select(algorithm, kid)
        claims = _decode(token, key, algorithm)
        now = self._clock.now()
        expires = self._check_times(claims, now)
        self._check_issuer(claims)
        self._check_audience(claims)
        identity = Identity(_subject(claims), *self._attributes(claims))
        self._remember(token, identity, expires, now)
        return identity

    def _attributes(self, claims: Mapping[str, Any]) -> tuple[str | None, tuple[str, ...] | None]:
        branch_claim, roles_claim = self._settings.branch_claim, self._settings.roles_claim
        if branch_claim is None or roles_claim is None:
            return None, None
        branch, roles = claims.get(branch_claim), claims.get(roles_claim)
        if not isinstance(branch, str) or not _ATTRIBUTE.match(branch):
            raise _malformed(f"the token's {branch_claim!r} claim must name one branch")
        if (
            not isinstance(roles, list)
            or not roles
            or not all(isinstance(r, str) and _ATTRIBUTE.match(r) for r in roles)
        ):
            raise _malformed(f"the token's {roles_claim!r} claim must be a list of role names")
        return branch, tuple(roles)

    def _check_times(self, claims: Mapping[str, Any], now: float) -> float:
        """exp, nbf and iat against the injected clock (PyJWT would read the wall clock)."""
        expires = _instant(claims, "exp")
        assert expires is not None  # required by _DECODE_OPTIONS
        if expires <= now - self._leeway:
            raise IdentityError(
                Reason.IDENTITY_EXPIRED,
                f"the token expired at {_when(expires)}; sign in again for a new one",
            )
        not_before = _instant(claims, "nbf")
        if not_before is not None and not_before > now + self._leeway:
            raise IdentityError(
                Reason.IDENTITY_NOT_YET_VALID,
                f"the token is not valid before {_when(not_before)}; check this device's clock",
            )
        issued = _instant(claims, "iat")
        if issued is not None and issued > now + self._leeway:
            raise IdentityError(
                Reason.IDENTITY_NOT_YET_VALID,
                f"the token claims to be issued in the future ({_when(issued)}); check the identity provider's clock",
            )
        return expires

    def _check_issuer(self, claims: Mapping[str, Any]) -> None:
        expected = self._settings.issuer
        if expected is None:
            return
        issuer = claims.get("iss")
        if issuer == expected and isinstance(issuer, str):
            return
        shown = f"{issuer[:80]!r}" if isinstance(issuer, str) else "no issuer"
        raise IdentityError(
            Reason.IDENTITY_WRONG_ISSUER,
            f"the token was issued by {shown}, not by {expected!r} which this broker trusts",
        )

    def _check_audience(self, claims: Mapping[str, Any]) -> None:
        """Exact match; a token carrying an audience is refused when none is configured,
        because a token meant for another service must not open this one (RFC 7519 4.1.3).
        """
        expected = self._settings.audience
        audience = claims.get("aud")
        if expected is None:
            if audience in (None, "", []):
                return
            raise IdentityError(
                Reason.IDENTITY_WRONG_AUDIENCE,
                "the token is addressed to an audience (aud) but this broker expects none",
            )
        if audience == expected or (isinstance(audience, list) and expected in audience):
            return
        raise IdentityError(
            Reason.IDENTITY_WRONG_AUDIENCE,
            f"the token is not addressed to {expected!r}; ask for a token meant for this service",
        )

    def _remember(self, token: str, identity: Identity, expires: float, now: float) -> None:
        if self._cache_size <= 0 or self._cache_ttl <= 0:
            return
        if len(self._cache) >= self._cache_size:
            del self._cache[next(iter(self._cache))]  # dicts keep insertion order: oldest
        self._cache[token] = (identity, expires, now)


def mint_token(
    secret: str,
    subject: str,
    *,
    now: float,
    ttl_seconds: float = 3600,
    issuer: str | None = None,
    audience: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """An HS256 token for `subject`, for `broker token`, the demo and tests.

    `extra` claims are added last, so they may also override iat/exp (e.g. to make an
    expired token on purpose).
    """
    if len(secret.encode()) < MIN_SECRET_BYTES:
        raise ValueError(f"the secret is shorter than {MIN_SECRET_BYTES} bytes")
    claims: dict[str, Any] = {"sub": subject, "iat": int(now), "exp": int(now + ttl_seconds)}
    if issuer is not None:
        claims["iss"] = issuer
    if audience is not None:
        claims["aud"] = audience
    claims.update(extra or {})
    return jwt.encode(claims, secret, algorithm=HMAC_ALGORITHM)


def _public_key(settings: IdentitySettings) -> VerificationKey | None:
    if settings.public_key_file is None:
        return None
    return load_pem_key(settings.public_key_file, settings.public_key_algorithms)


def _jwks(
    settings: IdentitySettings,
    clock: Clock,
    session_factory: Callable[[], aiohttp.ClientSession] | None,
) -> JwksSource | None:
    if not settings.jwks_url:
        return None
    return JwksSource(
        settings.jwks_url,
        clock,
        min_refetch_seconds=settings.jwks_min_refetch_seconds,
        max_age_seconds=settings.jwks_max_age_seconds,
        timeout_seconds=settings.jwks_timeout_seconds,
        session_factory=session_factory,
    )


def _malformed(detail: str) -> IdentityError:
    return IdentityError(Reason.IDENTITY_MALFORMED, detail)


def _read_header(token: str) -> tuple[str, str | None]:
    """The header's alg and kid, read without trusting them: they only pick a key."""
    if len(token) > MAX_TOKEN_CHARS:
        raise _malformed(f"the token is longer than {MAX_TOKEN_CHARS} characters")
    if not _TOKEN_SHAPE.fullmatch(token):
        raise _malformed("the token is not a JWT (three base64url parts joined by dots)")
    segment = token.partition(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        raise _malformed("the token's header is not base64url-encoded JSON") from None
    if not isinstance(header, dict):
        raise _malformed("the token's header is not a JSON object")
    if "crit" in header or "b64" in header:
        raise _malformed("the token requires header extensions (crit) the broker does not support")
    algorithm, kid = header.get("alg"), header.get("kid")
    if not isinstance(algorithm, str) or not algorithm:
        raise _malformed("the token's header names no signing algorithm (alg)")
    if kid is not None and not isinstance(kid, str):
        raise _malformed("the token's key id (kid) is not a string")
    return algorithm, kid


def _decode(token: str, key: VerificationKey, algorithm: str) -> dict[str, Any]:
    """Signature check by PyJWT with exactly one algorithm: the pinned one the header named."""
    try:
        return jwt.decode(token, key.material, algorithms=[algorithm], options=_DECODE_OPTIONS)
    except jwt.InvalidSignatureError:
        raise IdentityError(
            Reason.IDENTITY_BAD_SIGNATURE,
            f"the token's signature does not verify with {key.label}; "
            "it was not issued by the trusted identity provider, or was altered",
        ) from None
    except (jwt.InvalidAlgorithmError, jwt.InvalidKeyError):
        raise IdentityError(
            Reason.IDENTITY_BAD_ALGORITHM,
            f"the token's algorithm {algorithm[:16]!r} cannot be used with {key.label}",
        ) from None
    except jwt.MissingRequiredClaimError as exc:
        name = _CLAIM_NAMES.get(exc.claim, "a required claim")
        raise _malformed(f"the token has no {name}") from None
    except jwt.PyJWTError:
        raise _malformed("the token's claims could not be decoded") from None


MAX_INSTANT = 253_402_300_799
"""9999-12-31T23:59:59Z: a time claim beyond it is not a time (`exp` of 10**400 would
overflow a float and crash the check; it is a malformed token instead)."""


def _instant(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # NaN and infinities fail the range check too; a huge int is compared, never converted
    if isinstance(value, bool) or not isinstance(value, int | float) or not -MAX_INSTANT <= value <= MAX_INSTANT:
        raise _malformed(f"the token's {name} claim is not a time in seconds")
    return float(value)


def _subject(claims: Mapping[str, Any]) -> str:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not 0 < len(subject) <= MAX_SUBJECT_CHARS or not subject.isprintable():
        raise _malformed(
            f"the token's subject (sub) is not an employee id of 1 to {MAX_SUBJECT_CHARS} printable characters"
        )
    return subject


def _when(instant: float) -> str:
    """An instant for a sentence; tokens may carry absurd times, so never fail on one."""
    try:
        return iso(instant)
    except (OverflowError, ValueError, OSError):
        return f"{instant:.0f} seconds after 1970"
