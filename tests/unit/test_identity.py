"""JWT verification: every refusal reason from a real token, key pinning, the token cache.

Tokens are signed here with `cryptography` directly rather than with PyJWT, so the
tests do not share the code path they are checking.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from broker.core.clock import FakeClock
from broker.core.reason import Reason
from broker.identity import jwt_authenticator
from broker.identity.error import IdentityError
from broker.identity.jwt_authenticator import JwtAuthenticator, mint_token
from broker.identity.keys import JwksRefused, jwk_key, parse_jwks
from broker.identity.settings import IdentitySettings

NOW = 1_780_000_000.0
SECRET = "s3cret-for-tests-0123456789abcdef-xyz"
EMPLOYEE = "emp-1001"

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | bytes
MakeAuth = Callable[..., JwtAuthenticator]


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def signature(alg: str, key: SigningKey, signing_input: bytes) -> bytes:
    """A JWS signature (RFC 7518) made with cryptography, independent of PyJWT."""
    if alg.lower() == "none":
        return b""
    if isinstance(key, bytes):
        return hmac.new(key, signing_input, hashlib.sha256).digest()
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(signing_input)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    digest = {"256": hashes.SHA256(), "384": hashes.SHA384()}[alg[2:]]
    if alg.startswith("PS"):
        pss = padding.PSS(mgf=padding.MGF1(digest), salt_length=digest.digest_size)
        return key.sign(signing_input, pss, digest)
    return key.sign(signing_input, padding.PKCS1v15(), digest)


def sign(claims: dict[str, Any], key: SigningKey, alg: str = "RS256", **header: Any) -> str:
    head = b64url(json.dumps({"alg": alg, "typ": "JWT", **header}).encode())
    body = b64url(json.dumps(claims).encode())
    signing_input = f"{head}.{body}".encode()
    return f"{head}.{body}.{b64url(signature(alg, key, signing_input))}"


def claims(**changes: Any) -> dict[str, Any]:
    """Valid claims at NOW; a change of None removes that claim."""
    base: dict[str, Any] = {"sub": EMPLOYEE, "iat": int(NOW), "exp": int(NOW) + 600}
    base.update(changes)
    return {name: value for name, value in base.items() if value is not None}


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def weak_rsa_key() -> rsa.RSAPrivateKey:
    """Deliberately breakable: the broker must refuse it."""
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def rsa_pem(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Path:
    path = tmp_path / "idp.pem"
    path.write_bytes(public_pem(rsa_key))
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
async def make_auth(clock: FakeClock) -> AsyncIterator[MakeAuth]:
    """Builds authenticators on the shared FakeClock and closes them after the test."""
    made: list[JwtAuthenticator] = []

    def make(**settings: Any) -> JwtAuthenticator:
        made.append(JwtAuthenticator(IdentitySettings(**settings), clock))
        return made[-1]

    yield make
    for auth in made:
        await auth.close()


async def refusal(auth: JwtAuthenticator, token: str | None) -> IdentityError:
    with pytest.raises(IdentityError) as caught:
        await auth.authenticate(token)
    return caught.value


# --- tokens that verify -------------------------------------------------------------


async def test_minted_hs256_token_names_the_employee(make_auth: MakeAuth) -> None:
    auth = make_auth(hs256_secret=SECRET)
    assert await auth.authenticate(mint_token(SECRET, EMPLOYEE, now=NOW)) == EMPLOYEE


async def test_rs256_token_verifies_with_the_pem_key(
    make_auth: MakeAuth, rsa_key: rsa.RSAPrivateKey, rsa_pem: Path
) -> None:
    auth = make_auth(public_key_file=rsa_pem)
    assert await auth.authenticate(sign(claims(), rsa_key)) == EMPLOYEE


async def test_kid_is_ignored_when_there_is_no_jwks(
    make_auth: MakeAuth, rsa_key: rsa.RSAPrivateKey, rsa_pem: Path
) -> None:
    auth = make_auth(public_key_file=rsa_pem)
    assert await auth.authenticate(sign(claims(), rsa_key, kid="whatever")) == EMPLOYEE


async def test_configured_rsa_algorithms_are_all_accepted(
    make_auth: MakeAuth, rsa_key: rsa.RSAPrivateKey, rsa_pem: Path
) -> None:
    auth = make_auth(public_key_file=rsa_pem, public_key_algorithms=("RS256", "PS256", "RS384"))
    for alg in ("RS256", "PS256", "RS384"):
        assert await auth.authenticate(sign(claims(jti=alg), rsa_key, alg)) == EMPLOYEE


async def test_es256_token_verifies_with_an_ec_pem_key(
    make_auth: MakeAuth, ec_key: ec.EllipticCurvePrivateKey, tmp_path: Path
) -> None:
    path = tmp_path / "ec.pem"
    path.write_bytes(public_pem(ec_key))
    auth = make_auth(public_key_file=path, public_key_algorithms=("ES256",))
    assert await auth.authenticate(sign(claims(), ec_key, "ES256")) == EMPLOYEE


async def test_eddsa_token_verifies_with_an_ed25519_pem_key(make_auth: MakeAuth, tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "ed.pem"
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    auth = make_auth(public_key_file=path, public_key_algorithms=("EdDSA",))
    assert await auth.authenticate(sign(claims(), key, "EdDSA")) == EMPLOYEE


async def test_secret_and_pem_coexist_and_the_header_picks(
    make_auth: MakeAuth, rsa_key: rsa.RSAPrivateKey, rsa_pem: Path
) -> None:
    auth = make_auth(hs256_secret=SECRET, public_key_file=rsa_pem)
    assert await auth.authenticate(sign(claims(sub="rsa-user"), rsa_key)) == "rsa-user"
    assert await auth.authenticate(mint_token(SECRET, "hs-user", now=NOW)) == "hs-user"


async def test_issuer_and_audience_that_match_exactly_pass(make_auth: MakeAuth) -> None:
    auth = make_auth(hs256_secret=SECRET, issuer="https://idp.example", audience="broker")
    single = mint_token(SECRET, EMPLOYEE, now=NOW, issuer="https://idp.example", audience="broker")
    listed = mint_token(SECRET, "emp-2", now=NOW, issuer="https://idp.example", extra={"aud": ["other", "broker"]})
    assert await auth.authenticate(single) == EMPLOYEE
    assert await auth.authenticate(listed) == "emp-2"


# --- every refusal reason, from a real token ------------------------------------------


async def test_no_credential_is_missing(make_auth: MakeAuth) -> None:
    auth = make_auth(hs256_secret=SECRET)
    assert (await refusal(auth, None)).reason is Reason.IDENTITY_MISSING
    assert (await refusal(auth, "")).reason is Reason.IDENTITY_MISSING


def _header_only(header: object) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(b'{}')}.c2ln"


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("not-a-jwt", id="one-segment"),
        pytest.param("a.b", id="two-segments"),
        pytest.param("a.b.c.d", id="four-segments"),
        pytest.param("a b.c.d", id="not-base64url"),
        pytest.param("eyJhbGciOiJIUzI1NiJ9=.e30.c2ln", id="padded"),
        pytest.param(f"{b64url(b'not json')}.e30.c2ln", id="header-not-json"),
        pytest.param("A.e30.c2ln", id="header-bad-length"),
        pytest.param(_header_only(["HS256"]), id="header-not-object"),
        pytest.param(_header_only({"typ": "JWT"}), id="no-alg"),
        pytest.param(_header_only({"alg": 256}), id="alg-not-string"),
        pytest.param(_header_only({"alg": "HS256", "kid": 7}), id="kid-not-string"),
        pytest.param(_header_only({"alg": "HS256", "crit": ["exp"]}), id="crit"),
        pytest.param(_header_only({"alg": "HS256", "crit": ["b64"], "b64": False}), id="b64"),
    ],
)
async def test_tokens_that_are_not_jwts_are_malformed(make_auth: MakeAuth, token: str) -> None:
    error = await refusal(make_auth(hs256_secret=SECRET), token)
    assert error.reason is Reason.IDENTITY_MALFORMED


async def test_token_over_8_kib_is_malformed(make_auth: MakeAuth) -> None:
    huge = mint_token(SECRET, EMPLOYEE, now=NOW, extra={"pad": "x" * 8192})
    error = await refusal(make_auth(hs256_secret=SECRET), huge)
    assert error.reason is Reason.IDENTITY_MALFORMED
    assert "8192" in error.detail


async def test_payload_that_is_not_json_is_malformed(make_auth: MakeAuth) -> None:
    head = b64url(b'{"alg":"HS256"}')
    body = b64url(b"not json")
    mac = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    error = await refusal(make_auth(hs256_secret=SECRET), f"{head}.{body}.{b64url(mac)}")
    assert error.reason is Reason.IDENTITY_MALFORMED


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"sub": None}, id="no-sub"),
        pytest.param({"exp": None}, id="no-exp"),
        pytest.param({"sub": ""}, id="empty-sub"),
        pytest.param({"sub": 1001}, id="numeric-sub"),
        pytest.param({"sub": "x" * 129}, id="long-sub"),
        pytest.param({"sub": "emp\n1001"}, id="control-char-sub"),
        pytest.param({"exp": "tomorrow"}, id="exp-not-number"),
        pytest.param({"exp": True}, id="exp-bool"),
        pytest.param({"nbf": [1]}, id="nbf-not-number"),
    ],
)
async def test_bad_claims_are_malformed(make_auth: MakeAuth, changes: dict[str, Any]) -> None:
    token = sign(claims(**changes), SECRET.encode(), "HS256")
    assert (await refusal(make_auth(hs256_secret=SECRET), token)).reason is (Reason.IDENTITY_MALFORMED)


async def test_subject_of_128_printable_chars_is_accepted(make_auth: MakeAuth) -> None:
    subject = "é" * 128
    token = sign(claims(sub=subject), SECRET.encode(), "HS256")
    assert await make_auth(hs256_secret=SECRET).authenticate(token) == subject


async def test_rs256_token_signed_by_another_key_has_a_bad_signature(
    make_auth: MakeAuth, other_rsa_key: rsa.RSAPrivateKey, rsa_pem: Path
) -> None:
    error = await refusal(make_auth(public_key_file=rsa_pem), sign(claims(), other_rsa_key))
    assert error.reason is Reason.IDENTITY_BAD_SIGNATURE


async def test_altered_payload_has_a_bad_signature(make_auth: MakeAuth) -> None:
    head, _, mac = mint_token(SECRET, EMPLOYEE, now=NOW).split(".")
    forged = f"{head}.{b64url(json.dumps(claims(sub='boss')).encode())}.{mac}"
    error = await refusal(make_auth(hs256_secret=SECRET), forged)
    assert error.reason is Reason.IDENTITY_BAD_SIGNATURE


async def test_token_signed_with_another_secret_has_a_bad_signature(make_auth: MakeAuth) -> None:
    token = mint_token("another-secret-that-is-long-enough-000", EMPLOYEE, now=NOW)
    error = await refusal(make_auth(hs256_secret=SECRET), token)
    assert error.reason is Reason.IDENTITY_BAD_SIGNATURE


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
async def test_unsigned_token_is_a_bad_algorithm(make_auth: MakeAuth, rsa_pem: Path, alg: str) -> None:
    token = sign(claims(), b"", alg)
    for auth in (make_auth(hs256_secret=SECRET), make_auth(public_key_file=rsa_pem)):
        error = await refusal(auth, token)
        assert error.reason is Reason.IDENTITY_BAD_ALGORITHM
        assert "none" in error.detail


async def test_hs256_token_keyed_with_the_public_pem_is_refused(
    make_auth: MakeAuth, rsa_key: rsa.RSAPrivateKey, rsa_pem: Path
) -> None:
    """The key-confusion attack: the public key is public, so it must never be a MAC key."""
    forged = sign(claims(sub="boss"), public_pem(rsa_key), "HS256")
    error = await refusal(make_auth(public_key_file=rsa_pem), forged)
    assert error.reason is Reason.IDENTITY_BAD_ALGORITHM


async def test_key_confusion_with_a_secret_configured_only_reaches_the_secret(
    make_auth: MakeAuth, rsa_key: rsa.RSAPrivateKey, rsa_pem: Path
) -> None:
    forged = sign(claims(sub="boss"), public_pem(rsa_key), "HS256")
    error = await refusal(make_auth(hs256_secret=SECRET, public_key_file=rsa_pem), forged)
    assert error.reason is Reason.IDENTITY_BAD_SIGNATURE


async def test_algorithm_not_pinned_for_the_pem_key_is_refused(
    make_auth: MakeAuth, rsa_key: rsa.RSAPrivateKey, rsa_pem: Path
) -> None:
    error = await refusal(make_auth(public_key_file=rsa_pem), sign(claims(), rsa_key, "PS256"))
    assert error.reason is Reason.IDENTITY_BAD_ALGORITHM
    assert "RS256" in error.detail


async def test_es256_token_against_an_rsa_key_is_refused(
    make_auth: MakeAuth, ec_key: ec.EllipticCurvePrivateKey, rsa_pem: Path
) -> None:
    error = await refusal(make_auth(public_key_file=rsa_pem), sign(claims(), ec_key, "ES256"))
    assert error.reason is Reason.IDENTITY_BAD_ALGORITHM


async def test_rs256_token_against_a_secret_only_broker_is_refused(
    make_auth: MakeAuth, rsa_key: rsa.RSAPrivateKey
) -> None:
    error = await refusal(make_auth(hs256_secret=SECRET), sign(claims(), rsa_key))
    assert error.reason is Reason.IDENTITY_BAD_ALGORITHM


async def test_hs384_token_is_refused_by_the_hs256_secret(make_auth: MakeAuth) -> None:
    head = b64url(b'{"alg":"HS384"}')
    body = b64url(json.dumps(claims()).encode())
    mac = hmac.new(SECRET.encode(), f"{head}.{body}".encode(), hashlib.sha384).digest()
    error = await refusal(make_auth(hs256_secret=SECRET), f"{head}.{body}.{b64url(mac)}")
    assert error.reason is Reason.IDENTITY_BAD_ALGORITHM


@pytest.mark.parametrize(
    ("aud", "configured"),
    [
        pytest.param("other", "broker", id="different"),
        pytest.param("broker-admin", "broker", id="prefix"),
        pytest.param("brok", "broker", id="substring"),
        pytest.param(["other", "admin"], "broker", id="list-without"),
        pytest.param(None, "broker", id="absent"),
        pytest.param("broker", None, id="unexpected"),
    ],
)
async def test_audience_must_match_exactly(
    make_auth: MakeAuth, aud: str | list[str] | None, configured: str | None
) -> None:
    token = mint_token(SECRET, EMPLOYEE, now=NOW, extra={"aud": aud} if aud else None)
    error = await refusal(make_auth(hs256_secret=SECRET, audience=configured), token)
    assert error.reason is Reason.IDENTITY_WRONG_AUDIENCE


@pytest.mark.parametrize(
    "iss",
    [
        pytest.param("https://evil.example", id="different"),
        pytest.param("https://idp.example.evil", id="prefix"),
        pytest.param("https://idp.example/", id="trailing-slash"),
        pytest.param(None, id="absent"),
    ],
)
async def test_issuer_must_match_exactly(make_auth: MakeAuth, iss: str | None) -> None:
    token = mint_token(SECRET, EMPLOYEE, now=NOW, issuer=iss)
    error = await refusal(make_auth(hs256_secret=SECRET, issuer="https://idp.example"), token)
    assert error.reason is Reason.IDENTITY_WRONG_ISSUER


async def test_expiry_holds_until_the_leeway_edge(make_auth: MakeAuth, clock: FakeClock) -> None:
    auth = make_auth(hs256_secret=SECRET, leeway_seconds=30, token_cache_size=0)
    token = sign(claims(exp=int(NOW)), SECRET.encode(), "HS256")
    clock.set(NOW + 29.5)
    assert await auth.authenticate(token) == EMPLOYEE
    clock.set(NOW + 30)
    error = await refusal(auth, token)
    assert error.reason is Reason.IDENTITY_EXPIRED
    assert "expired" in error.detail


async def test_not_before_holds_until_the_leeway_edge(make_auth: MakeAuth, clock: FakeClock) -> None:
    auth = make_auth(hs256_secret=SECRET, leeway_seconds=30, token_cache_size=0)
    token = sign(claims(nbf=int(NOW) + 60), SECRET.encode(), "HS256")
    clock.set(NOW + 29)
    assert (await refusal(auth, token)).reason is Reason.IDENTITY_NOT_YET_VALID
    clock.set(NOW + 30)
    assert await auth.authenticate(token) == EMPLOYEE


async def test_issued_in_the_future_is_not_yet_valid(make_auth: MakeAuth) -> None:
    token = sign(claims(iat=int(NOW) + 3600, exp=int(NOW) + 7200), SECRET.encode(), "HS256")
    error = await refusal(make_auth(hs256_secret=SECRET), token)
    assert error.reason is Reason.IDENTITY_NOT_YET_VALID


async def test_absurd_times_do_not_crash_the_detail(make_auth: MakeAuth) -> None:
    token = sign(claims(nbf=1e300), SECRET.encode(), "HS256")
    error = await refusal(make_auth(hs256_secret=SECRET), token)
    assert error.reason is Reason.IDENTITY_MALFORMED  # past year 9999: not a time at all


async def test_details_never_contain_the_token(
    make_auth: MakeAuth, rsa_key: rsa.RSAPrivateKey, other_rsa_key: rsa.RSAPrivateKey, rsa_pem: Path
) -> None:
    auth = make_auth(public_key_file=rsa_pem, issuer="https://idp", audience="broker")
    good = claims(iss="https://idp", aud="broker")
    tokens = [
        sign(good, other_rsa_key),
        sign({**good, "exp": int(NOW) - 3600}, rsa_key),
        sign({**good, "nbf": int(NOW) + 3600}, rsa_key),
        sign({**good, "aud": "elsewhere"}, rsa_key),
        sign({**good, "iss": "https://other"}, rsa_key),
        sign({**good, "sub": None}, rsa_key),
        sign(good, rsa_key, "PS256"),
        sign(good, b"", "none"),
        sign(good, rsa_key, crit=["x"]),
    ]
    reasons = set()
    for token in tokens:
        error = await refusal(auth, token)
        reasons.add(error.reason)
        for part in (token, *token.split(".")):
            if part:
                assert part not in error.detail
                assert part not in str(error)
    assert len(reasons) == 7


# --- the verified-token cache -------------------------------------------------------


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the signature checks the authenticator really performs."""
    seen: list[str] = []
    real = jwt_authenticator.jwt.decode

    def counting(token: str, *args: Any, **options: Any) -> Any:
        seen.append(token)
        return real(token, *args, **options)

    # PyJWT's own function, looked up at each call: the authenticator is compiled
    # (broker/native.py), and a compiled module calls its own functions directly
    monkeypatch.setattr(jwt_authenticator.jwt, "decode", counting)
    return seen


async def test_repeated_token_is_verified_once(make_auth: MakeAuth, decodes: list[str]) -> None:
    auth = make_auth(hs256_secret=SECRET)
    token = mint_token(SECRET, EMPLOYEE, now=NOW)
    for _ in range(5):
        assert await auth.authenticate(token) == EMPLOYEE
    assert len(decodes) == 1


async def test_cached_token_is_refused_once_the_clock_passes_exp(
    make_auth: MakeAuth, clock: FakeClock, decodes: list[str]
) -> None:
    auth = make_auth(hs256_secret=SECRET, leeway_seconds=30)
    token = mint_token(SECRET, EMPLOYEE, now=NOW, ttl_seconds=60)
    assert await auth.authenticate(token) == EMPLOYEE
    clock.set(NOW + 89)
    assert await auth.authenticate(token) == EMPLOYEE
    assert len(decodes) == 1
    clock.set(NOW + 90)
    assert (await refusal(auth, token)).reason is Reason.IDENTITY_EXPIRED
    assert auth.cached_tokens == 0


async def test_cache_entries_are_rechecked_after_the_ttl(
    make_auth: MakeAuth, clock: FakeClock, decodes: list[str]
) -> None:
    auth = make_auth(hs256_secret=SECRET, token_cache_ttl_seconds=300)
    token = mint_token(SECRET, EMPLOYEE, now=NOW)
    await auth.authenticate(token)
    clock.advance(299)
    await auth.authenticate(token)
    assert len(decodes) == 1
    clock.advance(1)
    await auth.authenticate(token)
    assert len(decodes) == 2


async def test_clock_going_backwards_rechecks(make_auth: MakeAuth, clock: FakeClock, decodes: list[str]) -> None:
    auth = make_auth(hs256_secret=SECRET, leeway_seconds=0)
    token = sign(claims(nbf=int(NOW)), SECRET.encode(), "HS256")
    await auth.authenticate(token)
    clock.set(NOW - 10)
    assert (await refusal(auth, token)).reason is Reason.IDENTITY_NOT_YET_VALID


async def test_cache_stays_bounded_and_drops_the_oldest(make_auth: MakeAuth, decodes: list[str]) -> None:
    auth = make_auth(hs256_secret=SECRET, token_cache_size=3)
    tokens = [mint_token(SECRET, f"emp-{n}", now=NOW) for n in range(10)]
    for token in tokens:
        await auth.authenticate(token)
    assert auth.cached_tokens == 3
    await auth.authenticate(tokens[-1])
    assert len(decodes) == 10
    await auth.authenticate(tokens[0])
    assert len(decodes) == 11
    assert auth.cached_tokens == 3


async def test_failures_are_not_cached(make_auth: MakeAuth, decodes: list[str]) -> None:
    auth = make_auth(hs256_secret=SECRET)
    token = mint_token("another-secret-that-is-long-enough-000", EMPLOYEE, now=NOW)
    for _ in range(3):
        await refusal(auth, token)
    assert len(decodes) == 3
    assert auth.cached_tokens == 0


async def test_cache_size_zero_disables_the_cache(make_auth: MakeAuth, decodes: list[str]) -> None:
    auth = make_auth(hs256_secret=SECRET, token_cache_size=0)
    token = mint_token(SECRET, EMPLOYEE, now=NOW)
    await auth.authenticate(token)
    await auth.authenticate(token)
    assert len(decodes) == 2


async def _mean_seconds(call: Callable[[], Awaitable[object]], rounds: int) -> float:
    start = time.perf_counter()
    for _ in range(rounds):
        await call()
    return (time.perf_counter() - start) / rounds


async def test_cache_hit_is_far_cheaper_than_a_verification(
    make_auth: MakeAuth, rsa_key: rsa.RSAPrivateKey, rsa_pem: Path
) -> None:
    token = sign(claims(), rsa_key)
    cached = make_auth(public_key_file=rsa_pem)
    uncached = make_auth(public_key_file=rsa_pem, token_cache_size=0)
    await cached.authenticate(token)
    hit = await _mean_seconds(lambda: cached.authenticate(token), 2000)
    miss = await _mean_seconds(lambda: uncached.authenticate(token), 200)
    assert hit * 10 < miss, (hit, miss)


# --- settings -----------------------------------------------------------------------


def test_settings_need_a_key_source() -> None:
    assert any("no key source" in p for p in IdentitySettings().validate())


def test_good_settings_have_no_problems(rsa_pem: Path) -> None:
    settings = IdentitySettings(
        hs256_secret=SECRET,
        public_key_file=rsa_pem,
        jwks_url="https://idp.example/.well-known/jwks.json",
    )
    assert settings.validate() == []
    assert IdentitySettings(jwks_url="http://127.0.0.1:8080/jwks").validate() == []


def test_short_secret_is_refused() -> None:
    assert any("32 bytes" in p for p in IdentitySettings(hs256_secret="short").validate())


@pytest.mark.parametrize(
    ("algorithms", "needle"),
    [
        pytest.param(("none",), "'none'", id="none"),
        pytest.param(("HS256",), "hs256_secret", id="hs256"),
        pytest.param(("RS256", "ES512"), "'ES512'", id="unsupported"),
        pytest.param((), "empty", id="empty"),
        pytest.param(("ES256",), "cannot verify ES256", id="wrong-type"),
    ],
)
def test_public_key_algorithms_are_checked(rsa_pem: Path, algorithms: tuple[str, ...], needle: str) -> None:
    problems = IdentitySettings(public_key_file=rsa_pem, public_key_algorithms=algorithms).validate()
    assert any(needle in p for p in problems), problems


def test_pem_problems_are_reported(tmp_path: Path, rsa_key: rsa.RSAPrivateKey, weak_rsa_key: rsa.RSAPrivateKey) -> None:
    private = tmp_path / "private.pem"
    private.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    weak = tmp_path / "weak.pem"
    weak.write_bytes(public_pem(weak_rsa_key))
    expected = {
        tmp_path / "absent.pem": "cannot be read",
        private: "private key",
        garbage: "not a PEM public key",
        weak: "1024-bit",
    }
    for path, needle in expected.items():
        problems = IdentitySettings(public_key_file=path).validate()
        assert any(needle in p for p in problems), (path, problems)


def test_plain_http_jwks_is_only_for_localhost() -> None:
    problems = IdentitySettings(jwks_url="http://idp.example/jwks").validate()
    assert any("https://" in p for p in problems)


def test_numbers_are_checked() -> None:
    problems = IdentitySettings(
        hs256_secret=SECRET, jwks_timeout_seconds=0, leeway_seconds=-1, token_cache_size=-5
    ).validate()
    assert len(problems) == 3, problems


def test_authenticator_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        JwtAuthenticator(IdentitySettings(hs256_secret="short"), FakeClock(NOW))


def test_mint_token_refuses_a_short_secret() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        mint_token("short", EMPLOYEE, now=NOW)


# --- published keys (JWK) -----------------------------------------------------------


def rsa_jwk(key: rsa.RSAPrivateKey, **members: Any) -> dict[str, Any]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "RSA",
        "n": b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
        "e": b64url(numbers.e.to_bytes(3, "big")),
        **members,
    }


def test_jwk_without_alg_is_pinned_by_its_type(rsa_key: rsa.RSAPrivateKey) -> None:
    key = jwk_key(rsa_jwk(rsa_key, kid="k1"))
    assert key is not None
    assert key.algorithms == frozenset({"RS256"})


def test_jwk_alg_is_the_only_algorithm(rsa_key: rsa.RSAPrivateKey) -> None:
    key = jwk_key(rsa_jwk(rsa_key, kid="k1", alg="PS256"))
    assert key is not None
    assert key.algorithms == frozenset({"PS256"})


@pytest.mark.parametrize(
    "jwk",
    [
        pytest.param({"kty": "oct", "kid": "s", "k": b64url(b"x" * 32)}, id="oct"),
        pytest.param({"kty": "RSA", "kid": "r", "alg": "HS256", "n": "AQAB", "e": "AQAB"}, id="hs"),
        pytest.param({"kty": "RSA", "kid": "r", "alg": "none", "n": "AQAB", "e": "AQAB"}, id="none"),
        pytest.param({"kty": "RSA", "kid": "r", "n": "AQAB", "e": "AQAB", "d": "AQAB"}, id="private"),
    ],
)
def test_dangerous_jwks_are_refused(jwk: dict[str, Any]) -> None:
    with pytest.raises(JwksRefused):
        jwk_key(jwk)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"use": "enc"}, id="encryption-key"),
        pytest.param({"alg": "RS512x"}, id="unknown-alg"),
        pytest.param({"alg": "ES256"}, id="alg-of-other-type"),
        pytest.param({"alg": ["RS256"]}, id="alg-not-string"),
        pytest.param({"kid": None}, id="no-kid"),
        pytest.param({"n": "!!"}, id="broken-modulus"),
    ],
)
def test_unusable_jwks_are_skipped(rsa_key: rsa.RSAPrivateKey, changes: dict[str, Any]) -> None:
    jwk = {name: value for name, value in {**rsa_jwk(rsa_key, kid="k"), **changes}.items() if value}
    assert jwk_key(jwk) is None


def test_weak_rsa_jwk_is_skipped(weak_rsa_key: rsa.RSAPrivateKey) -> None:
    assert jwk_key(rsa_jwk(weak_rsa_key, kid="weak")) is None


def test_key_set_without_usable_keys_is_an_error(rsa_key: rsa.RSAPrivateKey) -> None:
    with pytest.raises(ValueError, match="no usable"):
        parse_jwks(json.dumps({"keys": [rsa_jwk(rsa_key, kid="k", use="enc")]}).encode())
    with pytest.raises(ValueError, match="'keys' list"):
        parse_jwks(b'{"keys": {}}')


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", [10**400, -(10**400), 10**20, 1e308])
async def test_an_absurd_time_claim_is_a_malformed_token_not_a_crash(
    make_auth: MakeAuth, rsa_key: rsa.RSAPrivateKey, rsa_pem: Path, claim: str, value: float
) -> None:
    auth = make_auth(public_key_file=rsa_pem)
    caught = await refusal(auth, sign(claims(**{claim: value}), rsa_key))
    assert caught.reason is Reason.IDENTITY_MALFORMED
    assert f"{claim} claim is not a time" in caught.detail
