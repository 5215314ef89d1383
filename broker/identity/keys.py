"""Key material, each key pinned to the algorithms it may verify.

A token's header says which algorithm signed it, and the header is written by whoever
made the token. So the algorithm is never taken from the token: every key carries the
algorithms it was configured (or published) for, and a token whose `alg` is not one
of them is refused before any signature check. That is what stops the classic
confusions: an HS256 token "signed" with an RSA public key, or `alg: none`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiohttp
import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import (
    SECP256R1,
    SECP384R1,
    EllipticCurvePublicKey,
)
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from broker.core.clock import Clock
from broker.core.reason import Reason
from broker.identity.error import IdentityError

HMAC_ALGORITHM: Final = "HS256"
PUBLIC_KEY_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"})
MIN_SECRET_BYTES: Final = 32
"""RFC 7518 3.2: an HS256 key at least as long as the hash; shorter ones are guessable."""
MIN_RSA_BITS: Final = 2048
MAX_JWKS_BYTES: Final = 512 * 1024
"""A key set is a few kilobytes; anything far larger is a misconfigured URL."""

_RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256"})
_JWK_DEFAULT_ALGORITHM: Final = {
    ("RSA", None): "RS256",
    ("EC", "P-256"): "ES256",
    ("EC", "P-384"): "ES384",
    ("OKP", "Ed25519"): "EdDSA",
}
"""What a published key without `alg` may verify: one algorithm per key type, never HMAC."""
_PRIVATE_JWK_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

PublicKey = RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey
KeyMaterial = bytes | PublicKey

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One key and the only algorithms it may verify.

    `label` names the key in sentences for the employee ("the public key in
    /etc/broker/idp.pem", "signing key 'k1'"), never its material.
    """

    material: KeyMaterial
    algorithms: frozenset[str]
    label: str


class JwksRefused(ValueError):
    """A key set that must not be used at all, not merely one unusable key in it."""


def secret_key(secret: str) -> VerificationKey:
    """The dev/demo shared secret: HS256 and nothing else."""
    return VerificationKey(secret.encode(), frozenset({HMAC_ALGORITHM}), "the shared secret")


def fitting_algorithms(key: PublicKey) -> frozenset[str]:
    """The allowed algorithms a public key can verify, decided by its type and curve."""
    if isinstance(key, RSAPublicKey):
        return _RSA_ALGORITHMS
    if isinstance(key, Ed25519PublicKey):
        return frozenset({"EdDSA"})
    if isinstance(key.curve, SECP256R1):
        return frozenset({"ES256"})
    if isinstance(key.curve, SECP384R1):
        return frozenset({"ES384"})
    return frozenset()


def key_problems(key: object, algorithms: Iterable[str], label: str) -> list[str]:
    """Why `key` must not verify `algorithms`: wrong type, weak, or a mismatched algorithm."""
    if not isinstance(key, RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey):
        return [f"{label} is a {type(key).__name__}; the broker verifies RSA, EC and Ed25519 keys"]
    if isinstance(key, RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        return [f"{label} is a {key.key_size}-bit RSA key; at least {MIN_RSA_BITS} bits needed"]
    fitting = fitting_algorithms(key)
    if not fitting:
        return [f"{label} uses an elliptic curve other than P-256 or P-384"]
    return [
        f"{label} cannot verify {algorithm}: that key fits {', '.join(sorted(fitting))}"
        for algorithm in algorithms
        if algorithm not in fitting
    ]


def load_pem_key(path: Path, algorithms: Collection[str]) -> VerificationKey:
    """A PEM public key (or certificate) from disk, pinned to its configured algorithms.

    Raises ValueError with a sentence for the operator when the file is missing, holds
    a private key, or does not fit the algorithms.
    """
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"public_key_file {path} cannot be read: {exc.strerror}") from exc
    if b"PRIVATE KEY" in data:
        raise ValueError(f"public_key_file {path} holds a private key; give only the public key")
    key = _parse_pem(data, path)
    problems = key_problems(key, algorithms, f"public_key_file {path}")
    if problems:
        raise ValueError("; ".join(problems))
    assert isinstance(key, RSAPublicKey | EllipticCurvePublicKey | Ed25519PublicKey)
    return VerificationKey(key, frozenset(algorithms), "the identity provider's public key")


def _parse_pem(data: bytes, path: Path) -> object:
    try:
        if b"BEGIN CERTIFICATE" in data:
            return x509.load_pem_x509_certificate(data).public_key()
        return serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"public_key_file {path} is not a PEM public key") from exc


def jwk_key(jwk: Mapping[str, Any]) -> VerificationKey | None:
    """One published key pinned to its `alg` (or its type's default), or None if unusable.

    Raises JwksRefused for a symmetric (`oct`) key, an HMAC or `none` alg, or private
    key material: a key set that publishes any of those is broken or forged, and a
    published key must never become an HMAC secret anyone could sign with.
    """
    kid = jwk.get("kid")
    name = f"signing key {kid!r}" if isinstance(kid, str) else "a signing key without kid"
    algorithm = _jwk_algorithm(jwk, name)
    if algorithm is None or not isinstance(kid, str) or jwk.get("use", "sig") != "sig":
        return None
    try:
        material = jwt.PyJWK(dict(jwk), algorithm=algorithm).key
    except (jwt.PyJWTError, KeyError, TypeError, ValueError) as exc:
        log.warning("jwks key skipped", extra={"kid": kid, "error": str(exc)})
        return None
    if key_problems(material, [algorithm], name):
        return None
    return VerificationKey(material, frozenset({algorithm}), name)


def _jwk_algorithm(jwk: Mapping[str, Any], name: str) -> str | None:
    """The one algorithm a JWK is pinned to, None for one the broker cannot use."""
    kty = jwk.get("kty")
    declared = jwk.get("alg")
    if kty == "oct":
        raise JwksRefused(f"{name} is a symmetric (oct) key; a key set must hold public keys")
    if _PRIVATE_JWK_MEMBERS & jwk.keys():
        raise JwksRefused(f"{name} publishes private key material")
    if isinstance(declared, str) and (declared.startswith("HS") or declared.lower() == "none"):
        raise JwksRefused(f"{name} declares algorithm {declared[:16]!r}")
    if declared is None:
        crv = jwk.get("crv") if kty != "RSA" else None
        return _JWK_DEFAULT_ALGORITHM.get((str(kty), crv if isinstance(crv, str) else None))
    if isinstance(declared, str) and declared in PUBLIC_KEY_ALGORITHMS:
        return declared
    return None


def parse_jwks(body: bytes) -> dict[str, VerificationKey]:
    """The usable keys of a JWKS document by kid; ValueError if none or malformed."""
    document = json.loads(body)
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("the key set is not a JSON object with a 'keys' list")
    keys: dict[str, VerificationKey] = {}
    for jwk in document["keys"]:
        if not isinstance(jwk, dict):
            continue
        key = jwk_key(jwk)
        if key is not None:
            keys[jwk["kid"]] = key
    if not keys:
        raise ValueError("the key set holds no usable signing key")
    return keys


def pinned(key: VerificationKey, algorithm: str) -> VerificationKey:
    """`key` if it may verify `algorithm`, otherwise the refusal that names both."""
    if algorithm in key.algorithms:
        return key
    allowed = ", ".join(sorted(key.algorithms))
    raise IdentityError(
        Reason.IDENTITY_BAD_ALGORITHM,
        f"the token is signed with {algorithm[:16]!r}, but {key.label} accepts only {allowed}",
    )


class JwksSource:
    """The identity provider's published keys, fetched over HTTP and kept in memory.

    Fetching is asynchronous (PyJWKClient's blocking urllib would stall every request
    on the event loop). A kid the cached set lacks triggers a refetch, which is how key
    rotation is picked up, but at most once per `min_refetch` seconds, so tokens with
    made-up kids cannot turn the broker into a load generator against the provider.
    Concurrent callers share the one fetch in flight. When a fetch fails the last good
    set keeps serving, so a provider outage does not lock every employee out.
    """

    def __init__(
        self,
        url: str,
        clock: Clock,
        *,
        min_refetch_seconds: float,
        max_age_seconds: float,
        timeout_seconds: float,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        self._url = url
        self._clock = clock
        self._min_refetch = min_refetch_seconds
        self._max_age = max_age_seconds
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session_factory = session_factory or aiohttp.ClientSession
        self._session: aiohttp.ClientSession | None = None
        self._keys: dict[str, VerificationKey] | None = None
        self._fetched_at = 0.0
        self._last_attempt: float | None = None
        self._last_failure = "no fetch was attempted yet"
        self._inflight: asyncio.Task[None] | None = None

    async def key(self, kid: str) -> VerificationKey:
        """The key named `kid`, refetching the set once if it is unknown or stale."""
        if self._keys is None or self._clock.now() - self._fetched_at >= self._max_age:
            await self._refresh()
        found = self._keys.get(kid) if self._keys is not None else None
        if found is None:
            await self._refresh()
            found = self._usable_keys().get(kid)
        if found is None:
            raise IdentityError(
                Reason.IDENTITY_UNKNOWN_KEY,
                f"the token names signing key {kid[:64]!r}, which the identity provider "
                "does not publish (it may have been retired); sign in again",
            )
        return found

    async def sole_key(self) -> VerificationKey:
        """The key for a token without kid: only unambiguous when the set holds one key."""
        if self._keys is None or self._clock.now() - self._fetched_at >= self._max_age:
            await self._refresh()
        keys = self._usable_keys()
        if len(keys) != 1:
            raise IdentityError(
                Reason.IDENTITY_UNKNOWN_KEY,
                "the token names no signing key (kid) and the identity provider publishes "
                "several, so the broker cannot tell which one to check it with",
            )
        return next(iter(keys.values()))

    async def close(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._inflight
            self._inflight = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _usable_keys(self) -> dict[str, VerificationKey]:
        if self._keys is None:
            raise IdentityError(
                Reason.IDENTITY_KEYS_UNAVAILABLE,
                "the broker could not fetch the identity provider's signing keys "
                f"({self._last_failure}); try again shortly",
            )
        return self._keys

    async def _refresh(self) -> None:
        """Join the fetch in flight, or start one unless the last began too recently."""
        if self._inflight is None:
            now = self._clock.now()
            last = self._last_attempt
            if last is not None and 0 <= now - last < self._min_refetch:
                return
            self._last_attempt = now
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())
        # shield: one caller giving up (request cancelled) must not cancel the others' fetch
        await asyncio.shield(self._inflight)

    async def _fetch(self) -> None:
        try:
            keys = parse_jwks(await self._download())
        except JwksRefused as exc:
            self._failed(f"the key set was refused: {exc}")
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            self._failed(_describe(exc, self._timeout.total))
        else:
            self._keys = keys
            self._fetched_at = self._clock.now()
        finally:
            self._inflight = None

    def _failed(self, why: str) -> None:
        self._last_failure = why
        log.warning("jwks fetch failed", extra={"url": self._url, "why": why})

    async def _download(self) -> bytes:
        if self._session is None:
            self._session = self._session_factory()
        async with self._session.get(
            self._url,
            timeout=self._timeout,
            allow_redirects=False,
            headers={"Accept": "application/json"},
        ) as response:
            if response.status != 200:
                raise ValueError(f"the key server answered HTTP {response.status}")
            body = bytearray()
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError(f"the key set is larger than {MAX_JWKS_BYTES} bytes")
            return bytes(body)


def _describe(exc: Exception, timeout: float | None) -> str:
    """A short reason for a failed fetch, for the operator and the employee."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout} s"
    if isinstance(exc, aiohttp.ClientConnectionError | OSError):
        return "the key server could not be reached"
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        return "the key set is not valid JSON"
    return str(exc) or type(exc).__name__


class KeyRing:
    """Picks the key for a token from its header, then checks the algorithm is pinned.

    HS* tokens go to the shared secret (and only there); a token with a kid goes to
    the JWKS; otherwise the PEM key, or the JWKS's only key.
    """

    def __init__(
        self,
        secret: VerificationKey | None,
        public_key: VerificationKey | None,
        jwks: JwksSource | None,
    ) -> None:
        self._secret = secret
        self._public_key = public_key
        self._jwks = jwks

    async def select(self, algorithm: str, kid: str | None) -> VerificationKey:
        if algorithm.lower() == "none":
            raise IdentityError(Reason.IDENTITY_BAD_ALGORITHM, "the token is unsigned (alg 'none')")
        return pinned(await self._candidate(algorithm, kid), algorithm)

    async def _candidate(self, algorithm: str, kid: str | None) -> VerificationKey:
        if algorithm.startswith("HS"):
            if self._secret is None:
                raise IdentityError(
                    Reason.IDENTITY_BAD_ALGORITHM,
                    f"the token is signed with a shared secret ({algorithm[:16]!r}); "
                    "this broker accepts only tokens signed by the identity provider's keys",
                )
            return self._secret
        if kid is not None and self._jwks is not None:
            return await self._jwks.key(kid)
        if self._public_key is not None:
            return self._public_key
        if self._jwks is not None:
            return await self._jwks.sole_key()
        assert self._secret is not None, "settings.validate() requires a key source"
        return self._secret

    async def close(self) -> None:
        if self._jwks is not None:
            await self._jwks.close()
