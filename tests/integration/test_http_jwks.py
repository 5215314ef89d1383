"""RS256 tokens from a JWKS, through the HTTP door: unknown keys and an unreachable IdP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.conftest import BrokerFactory
from tests.harness import Harness
from tests.integration.test_jwks import b64url, rsa_jwk
from tests.redis_fixtures import free_port

LIST = "/api/branches/BR001/waybills?limit=1"


@pytest.fixture(scope="module")
def idp_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def jwks(idp_key: rsa.RSAPrivateKey) -> AsyncIterator[str]:
    async def keys(_: web.Request) -> web.Response:
        return web.json_response({"keys": [rsa_jwk(idp_key, "idp-1", alg="RS256", use="sig")]})

    app = web.Application()
    app.router.add_get("/jwks.json", keys)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield str(server.make_url("/jwks.json"))
    await server.close()


def rs256(broker: Harness, key: rsa.RSAPrivateKey, kid: str, employee: str = "e1001") -> dict[str, str]:
    now = int(broker.clock.now())
    head = b64url(json.dumps({"alg": "RS256", "kid": kid, "typ": "JWT"}).encode())
    body = b64url(json.dumps({"sub": employee, "iat": now, "exp": now + 600}).encode())
    signature = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return {"Authorization": f"Bearer {head}.{body}.{b64url(signature)}"}


async def test_rs256_from_jwks_unknown_key_and_forged_signature(
    make_broker: BrokerFactory, jwks: str, idp_key: rsa.RSAPrivateKey
) -> None:
    broker = await make_broker(identity={"jwks_url": jwks})
    assert (await broker.get(LIST, headers=rs256(broker, idp_key, "idp-1"))).status == 200
    unknown = await broker.get(LIST, headers=rs256(broker, idp_key, "idp-9"))
    assert unknown.status == 401 and unknown.json["reason"] == "identity.unknown_key"
    assert 'error="invalid_token"' in unknown.headers["WWW-Authenticate"]
    impostor = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = await broker.get(LIST, headers=rs256(broker, impostor, "idp-1"))
    assert forged.status == 401 and forged.json["reason"] == "identity.bad_signature"


async def test_unreachable_identity_provider_fails_closed(
    make_broker: BrokerFactory, idp_key: rsa.RSAPrivateKey
) -> None:
    broker = await make_broker(identity={"jwks_url": f"http://127.0.0.1:{free_port()}/jwks.json"})
    reply = await broker.get(LIST, headers=rs256(broker, idp_key, "idp-1"))
    assert reply.status == 503 and reply.json["reason"] == "identity.keys_unavailable"
    assert reply.headers["Content-Type"].startswith("application/problem+json")
