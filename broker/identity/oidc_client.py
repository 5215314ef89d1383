"""The broker as an OpenID Connect relying party: discovery, the authorization request
(with PKCE and a nonce), the code exchange and the ID token's verification.

Nothing here is hand-made cryptography: the S256 challenge and the request URI are
Authlib's, the signature check is joserfc's against the provider's published keys, and
the ID token's claims (issuer, audience, authorized party, nonce, access token hash) are
checked by Authlib's `CodeIDToken`, the rules of OpenID Connect Core 3.1.3.7.

Time: the ID token's `exp` is read as a lifetime (`exp - iat`, both on the provider's
clock), never compared with the broker's. The token arrives over the back channel in
answer to a code this very sign-in asked for, bound to a nonce made for it minutes ago
and to a PKCE verifier that never left the broker, so it cannot be an old one replayed;
and a broker whose clock disagrees with the provider's (or runs a demo clock) still
gets sessions of the right length. (DESIGN.md: never let two clocks have to agree.)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import aiohttp
import orjson
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import BadSignatureError, InvalidKeyIdError, JoseError
from joserfc.jwk import KeySet

from broker.core.clock import Clock
from broker.identity.oidc_settings import OidcSettings, plain_http_allowed

DISCOVERY_PATH: Final = "/.well-known/openid-configuration"
DISCOVERY_MAX_AGE: Final = 3600.0
KEYS_MIN_REFETCH: Final = 30.0
MAX_DOCUMENT_BYTES: Final = 256 * 1024
_EMPLOYEE: Final = re.compile(r"[A-Za-z0-9_.@+\-]{1,128}\Z")


class OidcError(Exception):
    """A sign-in that cannot complete; the message is safe to show and to audit (it
    never holds a code or a token)."""


@dataclass(frozen=True, slots=True)
class Provider:
    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    end_session_endpoint: str | None


@dataclass(frozen=True, slots=True)
class SignedIn:
    employee: str
    lifetime: float
    """How long the provider vouches for this sign-in (exp - iat of the ID token)."""


class OidcClient:
    def __init__(
        self,
        settings: OidcSettings,
        clock: Clock,
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock
        timeout = aiohttp.ClientTimeout(total=settings.timeout_seconds)
        self._session_factory = session_factory or (lambda: aiohttp.ClientSession(timeout=timeout))
        self._http: aiohttp.ClientSession | None = None
        self._provider: tuple[Provider, float] | None = None
        self._keys: tuple[KeySet, float] | None = None

    async def provider(self) -> Provider:
        """The provider's endpoints from its discovery document, cached for an hour."""
        now = self._clock.now()
        if self._provider is not None and 0 <= now - self._provider[1] < DISCOVERY_MAX_AGE:
            return self._provider[0]
        document = await self._get_json(self._settings.issuer.rstrip("/") + DISCOVERY_PATH)
        provider = _provider(document, self._settings.issuer)
        self._provider = (provider, now)
        return provider

    def authorization_url(self, provider: Provider, state: str, nonce: str, verifier: str) -> str:
        settings = self._settings
        url: str = prepare_grant_uri(
            provider.authorization_endpoint,
            settings.client_id,
            "code",
            redirect_uri=settings.redirect_uri,
            scope=list(settings.scopes),
            state=state,
            nonce=nonce,
            code_challenge=create_s256_code_challenge(verifier),
            code_challenge_method="S256",
        )
        return url

    async def sign_in(self, code: str, nonce: str, verifier: str) -> SignedIn:
        """Exchange the code (with the PKCE verifier) and verify the ID token it brings."""
        provider = await self.provider()
        answer = await self._exchange(provider, code, verifier)
        id_token, access_token = answer.get("id_token"), answer.get("access_token")
        if not isinstance(id_token, str) or not id_token:
            raise OidcError("the identity provider answered without an ID token")
        claims = await self._verified(provider, id_token)
        _check_claims(claims, provider.issuer, self._settings.client_id, nonce, access_token)
        lifetime = float(claims["exp"]) - float(claims["iat"])
        if lifetime <= 0:
            raise OidcError("the ID token's lifetime (exp - iat) is not positive")
        return SignedIn(self._employee(claims), lifetime)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    def _employee(self, claims: Mapping[str, Any]) -> str:
        name = self._settings.employee_claim
        value = claims.get(name)
        if not isinstance(value, str) or not _EMPLOYEE.match(value):
            raise OidcError(f"the ID token's {name!r} claim does not hold an employee id")
        return value

    async def _exchange(self, provider: Provider, code: str, verifier: str) -> dict[str, Any]:
        settings = self._settings
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": settings.redirect_uri,
            "code_verifier": verifier,
        }
        headers = {"Accept": "application/json"}
        if settings.client_secret:  # client_secret_basic: both parts form-encoded first (RFC 6749 2.3.1)
            user, password = quote(settings.client_id, safe=""), quote(settings.client_secret, safe="")
            headers["Authorization"] = aiohttp.encode_basic_auth(user, password)
        else:  # a public client: PKCE is what proves the caller began this sign-in
            form["client_id"] = settings.client_id
        try:
            async with self._client().post(provider.token_endpoint, data=form, headers=headers) as reply:
                body = await reply.content.read(MAX_DOCUMENT_BYTES + 1)
                status = reply.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OidcError(f"the identity provider's token endpoint is unreachable ({type(exc).__name__})") from None
        document = _json_object(body, "token endpoint")
        if status != 200:
            error = str(document.get("error", "unknown"))[:64]
            raise OidcError(f"the identity provider refused the code exchange ({status}, {error})")
        return document

    async def _verified(self, provider: Provider, id_token: str) -> dict[str, Any]:
        """The ID token's claims once its signature verifies with the provider's keys;
        an unknown key id refetches the key set (at most every 30 s: keys roll over)."""
        keys = await self._key_set(provider, refresh=False)
        try:
            try:
                token = jwt.decode(id_token, keys, algorithms=list(self._settings.algorithms))
            except InvalidKeyIdError:
                keys = await self._key_set(provider, refresh=True)
                token = jwt.decode(id_token, keys, algorithms=list(self._settings.algorithms))
        except BadSignatureError:
            raise OidcError("the ID token's signature does not verify with the provider's keys") from None
        except (JoseError, ValueError) as exc:
            raise OidcError(f"the ID token cannot be read ({type(exc).__name__})") from None
        return {"__header__": token.header, **token.claims}

    async def _key_set(self, provider: Provider, *, refresh: bool) -> KeySet:
        now = self._clock.now()
        cached = self._keys
        if cached is not None and (not refresh or 0 <= now - cached[1] < KEYS_MIN_REFETCH):
            return cached[0]
        document = await self._get_json(provider.jwks_uri)
        try:
            keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError) as exc:
            raise OidcError(f"the identity provider's key set cannot be read ({type(exc).__name__})") from None
        self._keys = (keys, now)
        return keys

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with self._client().get(url, headers={"Accept": "application/json"}) as reply:
                body = await reply.content.read(MAX_DOCUMENT_BYTES + 1)
                if reply.status != 200:
                    raise OidcError(f"the identity provider answered {reply.status} for {url}")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise OidcError(f"the identity provider is unreachable at {url} ({type(exc).__name__})") from None
        return _json_object(body, url)

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = self._session_factory()
        return self._http


def _json_object(body: bytes, where: str) -> dict[str, Any]:
    if len(body) > MAX_DOCUMENT_BYTES:
        raise OidcError(f"the identity provider's answer from {where} is too large")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise OidcError(f"the identity provider's answer from {where} is not JSON") from None
    if not isinstance(document, dict):
        raise OidcError(f"the identity provider's answer from {where} is not a JSON object")
    return document


def _provider(document: Mapping[str, Any], issuer: str) -> Provider:
    """The endpoints, after OpenID Connect Discovery 4.3: the document must name the
    issuer it was fetched for, and every endpoint must be https (http on loopback)."""
    if document.get("issuer") != issuer.rstrip("/") and document.get("issuer") != issuer:
        raise OidcError(f"the discovery document names issuer {str(document.get('issuer'))[:80]!r}, not {issuer!r}")
    found: dict[str, str] = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        value = document.get(name)
        if not isinstance(value, str) or not plain_http_allowed(value):
            raise OidcError(f"the discovery document's {name} is missing or not an https URL")
        found[name] = value
    end_session = document.get("end_session_endpoint")
    if not isinstance(end_session, str) or not plain_http_allowed(end_session):
        end_session = None
    return Provider(str(document["issuer"]), **found, end_session_endpoint=end_session)


def _check_claims(claims: dict[str, Any], issuer: str, client_id: str, nonce: str, access_token: object) -> None:
    header = claims.pop("__header__")
    for name in ("exp", "iat"):
        if isinstance(claims.get(name), bool) or not isinstance(claims.get(name), int | float):
            raise OidcError(f"the ID token's {name} claim is not a time")
    options: dict[str, Any] = {
        "iss": {"essential": True, "value": issuer},
        "aud": {"essential": True, "value": client_id},
        "sub": {"essential": True},
    }
    params = {"nonce": nonce, "client_id": client_id}
    if isinstance(access_token, str):
        params["access_token"] = access_token
    try:
        # judged at the provider's own issue instant: see the module's note on time
        CodeIDToken(claims, header, options, params).validate(now=int(claims["iat"]))
    except JoseError as exc:
        raise OidcError(f"the ID token was refused: {type(exc).__name__} {getattr(exc, 'description', '')}") from None
