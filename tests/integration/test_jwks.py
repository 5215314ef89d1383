"""JWKS over real HTTP: fetch, rotation, refetch limits, refused key sets, outages.

The key server is an aiohttp app on a real loopback socket that counts its hits, so
the tests see exactly how often the broker goes to the identity provider.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from broker.core.clock import FakeClock
from broker.core.reason import Reason
from broker.identity.error import IdentityError
from broker.identity.jwt_authenticator import JwtAuthenticator
from broker.identity.settings import IdentitySettings

NOW = 1_780_000_000.0
EMPLOYEE = "emp-1001"
MIN_REFETCH = 30.0


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint(value: int, size: int | None = None) -> str:
    return b64url(value.to_bytes(size or (value.bit_length() + 7) // 8, "big"))


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str, **members: Any) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    return {"kty": "RSA", "kid": kid, "n": uint(numbers.n), "e": uint(numbers.e), **members}


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "kid": kid,
        "crv": "P-256",
        "x": uint(numbers.x, 32),
        "y": uint(numbers.y, 32),
    }


def sign(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | bytes, kid: str, alg: str = "RS256") -> str:
    """A token for EMPLOYEE valid at NOW, signed with cryptography (not PyJWT)."""
    head = b64url(json.dumps({"alg": alg, "kid": kid, "typ": "JWT"}).encode())
    body = b64url(json.dumps({"sub": EMPLOYEE, "iat": int(NOW), "exp": int(NOW) + 3600}).encode())
    signing_input = f"{head}.{body}".encode()
    if isinstance(key, bytes):
        mac = hmac.new(key, signing_input, hashlib.sha256).digest()
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        mac = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        digest = hashes.SHA384() if alg == "RS384" else hashes.SHA256()
        mac = key.sign(signing_input, padding.PKCS1v15(), digest)
    return f"{head}.{body}.{b64url(mac)}"


@dataclass
class KeyServer:
    """What the fake identity provider publishes, and how it behaves."""

    keys: list[dict[str, Any]]
    url: str = ""
    hits: int = 0
    status: int = 200
    delay: float = 0.0

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.status != 200:
            return web.Response(status=self.status, text="down for maintenance")
        return web.json_response({"keys": self.keys})


@pytest.fixture(scope="module")
def key_one() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def key_two() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def idp(key_one: rsa.RSAPrivateKey) -> AsyncIterator[KeyServer]:
    state = KeyServer(keys=[rsa_jwk(key_one, "k1", alg="RS256", use="sig")])
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", state.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    state.url = str(server.make_url("/.well-known/jwks.json"))
    yield state
    await server.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


MakeAuth = Callable[..., JwtAuthenticator]


@pytest.fixture
async def make_auth(clock: FakeClock) -> AsyncIterator[MakeAuth]:
    made: list[JwtAuthenticator] = []

    def make(url: str, **settings: Any) -> JwtAuthenticator:
        settings.setdefault("jwks_min_refetch_seconds", MIN_REFETCH)
        made.append(JwtAuthenticator(IdentitySettings(jwks_url=url, **settings), clock))
        return made[-1]

    yield make
    for auth in made:
        await auth.close()


async def refusal(auth: JwtAuthenticator, token: str) -> IdentityError:
    with pytest.raises(IdentityError) as caught:
        await auth.authenticate(token)
    return caught.value


async def test_token_with_a_published_kid_verifies(
    idp: KeyServer, make_auth: MakeAuth, key_one: rsa.RSAPrivateKey
) -> None:
    auth = make_auth(idp.url, token_cache_size=0)
    assert await auth.authenticate(sign(key_one, "k1")) == EMPLOYEE
    assert await auth.authenticate(sign(key_one, "k1")) == EMPLOYEE
    assert idp.hits == 1


async def test_rotated_key_is_picked_up_by_refetch(
    idp: KeyServer,
    make_auth: MakeAuth,
    clock: FakeClock,
    key_one: rsa.RSAPrivateKey,
    key_two: rsa.RSAPrivateKey,
) -> None:
    auth = make_auth(idp.url, token_cache_size=0)  # verified tokens outlive rotation up to ttl
    assert await auth.authenticate(sign(key_one, "k1")) == EMPLOYEE
    idp.keys = [rsa_jwk(key_two, "k2", alg="RS256")]
    clock.advance(MIN_REFETCH)
    assert await auth.authenticate(sign(key_two, "k2")) == EMPLOYEE
    assert idp.hits == 2
    error = await refusal(auth, sign(key_one, "k1"))  # retired with the rotation
    assert error.reason is Reason.IDENTITY_UNKNOWN_KEY


async def test_unknown_kid_refetches_at_most_once_per_interval(
    idp: KeyServer, make_auth: MakeAuth, clock: FakeClock, key_one: rsa.RSAPrivateKey
) -> None:
    auth = make_auth(idp.url)
    await auth.authenticate(sign(key_one, "k1"))
    assert idp.hits == 1
    expected_hits = [(0.0, 1), (0.0, 1), (MIN_REFETCH, 2), (0.0, 2), (MIN_REFETCH - 1, 2), (1, 3)]
    for n, (advance, hits) in enumerate(expected_hits):
        clock.advance(advance)
        error = await refusal(auth, sign(key_one, f"made-up-{n}"))
        assert error.reason is Reason.IDENTITY_UNKNOWN_KEY
        assert f"made-up-{n}" in error.detail
        assert idp.hits == hits, n


async def test_stale_key_set_is_refreshed_after_max_age(
    idp: KeyServer, make_auth: MakeAuth, clock: FakeClock, key_one: rsa.RSAPrivateKey
) -> None:
    auth = make_auth(idp.url, jwks_max_age_seconds=600, token_cache_size=0)
    await auth.authenticate(sign(key_one, "k1"))
    clock.advance(599)
    await auth.authenticate(sign(key_one, "k1"))
    assert idp.hits == 1
    clock.advance(1)
    await auth.authenticate(sign(key_one, "k1"))
    assert idp.hits == 2


async def test_key_set_with_a_symmetric_key_is_refused(
    idp: KeyServer, make_auth: MakeAuth, key_one: rsa.RSAPrivateKey
) -> None:
    secret = b"published-secret-anyone-can-read-0123456789"
    idp.keys.append({"kty": "oct", "kid": "sym", "alg": "HS256", "k": b64url(secret)})
    auth = make_auth(idp.url)
    forged = await refusal(auth, sign(secret, "sym", "HS256"))
    assert forged.reason is Reason.IDENTITY_BAD_ALGORITHM
    error = await refusal(auth, sign(key_one, "k1"))
    assert error.reason is Reason.IDENTITY_KEYS_UNAVAILABLE
    assert "symmetric" in error.detail
    assert idp.hits == 1


async def test_jwk_without_alg_is_pinned_by_its_type(
    idp: KeyServer, make_auth: MakeAuth, key_two: rsa.RSAPrivateKey
) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    idp.keys = [rsa_jwk(key_two, "plain"), ec_jwk(ec_key, "curve")]
    auth = make_auth(idp.url)
    assert await auth.authenticate(sign(key_two, "plain")) == EMPLOYEE
    assert await auth.authenticate(sign(ec_key, "curve", "ES256")) == EMPLOYEE
    error = await refusal(auth, sign(key_two, "plain", "RS384"))
    assert error.reason is Reason.IDENTITY_BAD_ALGORITHM


async def test_unreachable_key_server_without_cache_is_unavailable(
    idp: KeyServer, make_auth: MakeAuth, key_one: rsa.RSAPrivateKey
) -> None:
    idle = TestServer(web.Application(), host="127.0.0.1")
    await idle.start_server()
    url = str(idle.make_url("/jwks.json"))
    await idle.close()  # nothing listens there any more
    error = await refusal(make_auth(url), sign(key_one, "k1"))
    assert error.reason is Reason.IDENTITY_KEYS_UNAVAILABLE
    assert "could not be reached" in error.detail


async def test_failing_key_server_without_cache_is_unavailable(
    idp: KeyServer, make_auth: MakeAuth, clock: FakeClock, key_one: rsa.RSAPrivateKey
) -> None:
    idp.status = 503
    auth = make_auth(idp.url)
    error = await refusal(auth, sign(key_one, "k1"))
    assert error.reason is Reason.IDENTITY_KEYS_UNAVAILABLE
    assert "HTTP 503" in error.detail
    await refusal(auth, sign(key_one, "k1"))
    assert idp.hits == 1  # failures are retried no faster than successes
    idp.status = 200
    clock.advance(MIN_REFETCH)
    assert await auth.authenticate(sign(key_one, "k1")) == EMPLOYEE


async def test_slow_key_server_times_out(idp: KeyServer, make_auth: MakeAuth, key_one: rsa.RSAPrivateKey) -> None:
    idp.delay = 1.0
    auth = make_auth(idp.url, jwks_timeout_seconds=0.2)
    error = await refusal(auth, sign(key_one, "k1"))
    assert error.reason is Reason.IDENTITY_KEYS_UNAVAILABLE
    assert "no answer" in error.detail


async def test_cached_keys_serve_while_the_key_server_is_down(
    idp: KeyServer,
    make_auth: MakeAuth,
    clock: FakeClock,
    key_one: rsa.RSAPrivateKey,
) -> None:
    auth = make_auth(idp.url, jwks_max_age_seconds=60, token_cache_size=0)
    assert await auth.authenticate(sign(key_one, "k1")) == EMPLOYEE
    idp.status = 500
    clock.advance(3600)  # long past max age: a refetch is tried, fails, the cache serves
    assert await auth.authenticate(sign(key_one, "k1")) == EMPLOYEE
    assert idp.hits == 2
    error = await refusal(auth, sign(key_one, "unknown"))
    assert error.reason is Reason.IDENTITY_UNKNOWN_KEY


async def test_concurrent_cold_cache_misses_share_one_fetch(
    idp: KeyServer, make_auth: MakeAuth, key_one: rsa.RSAPrivateKey
) -> None:
    idp.delay = 0.1
    auth = make_auth(idp.url, token_cache_size=0)
    token = sign(key_one, "k1")
    subjects = await asyncio.gather(*(auth.authenticate(token) for _ in range(20)))
    assert subjects == [EMPLOYEE] * 20
    assert idp.hits == 1


async def test_concurrent_unknown_kids_share_one_refetch(
    idp: KeyServer,
    make_auth: MakeAuth,
    clock: FakeClock,
    key_one: rsa.RSAPrivateKey,
    key_two: rsa.RSAPrivateKey,
) -> None:
    auth = make_auth(idp.url)
    await auth.authenticate(sign(key_one, "k1"))
    idp.keys.append(rsa_jwk(key_two, "k2", alg="RS256"))
    idp.delay = 0.1
    clock.advance(MIN_REFETCH)
    tokens = [sign(key_two, "k2") for _ in range(10)]
    assert await asyncio.gather(*(auth.authenticate(t) for t in tokens)) == [EMPLOYEE] * 10
    assert idp.hits == 2


async def test_cancelled_caller_does_not_cancel_the_shared_fetch(
    idp: KeyServer, make_auth: MakeAuth, key_one: rsa.RSAPrivateKey
) -> None:
    idp.delay = 0.2
    auth = make_auth(idp.url)
    token = sign(key_one, "k1")
    impatient = asyncio.ensure_future(auth.authenticate(token))
    patient = asyncio.ensure_future(auth.authenticate(token))
    await asyncio.sleep(0.05)
    impatient.cancel()
    assert await patient == EMPLOYEE
    assert impatient.cancelled()
    assert idp.hits == 1


async def test_token_without_kid_uses_the_only_published_key(
    idp: KeyServer, make_auth: MakeAuth, key_one: rsa.RSAPrivateKey, key_two: rsa.RSAPrivateKey
) -> None:
    head = b64url(b'{"alg":"RS256"}')
    token = sign(key_one, "k1")
    _, body, _ = token.split(".")
    mac = key_one.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    no_kid = f"{head}.{body}.{b64url(mac)}"
    auth = make_auth(idp.url)
    assert await auth.authenticate(no_kid) == EMPLOYEE
    idp.keys.append(rsa_jwk(key_two, "k2", alg="RS256"))
    ambiguous = make_auth(idp.url)
    assert (await refusal(ambiguous, no_kid)).reason is Reason.IDENTITY_UNKNOWN_KEY
