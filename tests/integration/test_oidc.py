"""Browser sign-in (#16) against a real OpenID provider process (oidc-provider-mock with
PKCE enforced, tests/oidc_provider.py), through brokers on real sockets. The client
follows every redirect by hand and carries cookies itself, so each hop is checked."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
import redis.asyncio as aioredis

from broker.config import MeterSettings
from tests.conftest import BrokerFactory
from tests.harness import REPO_ROOT, Harness, free_port, wait_for_port
from tests.raw_upstream import RawUpstream
from tests.redis_fixtures import real_clock_environment

OWN = "/api/branches/BR001/waybills?limit=1"
OTHER = "/api/branches/BR002/waybills?limit=1"
COOKIE = "__Host-broker-session"
LOGIN_COOKIE = "__Host-broker-login"
PAGE = {"Accept": "text/html,application/xhtml+xml"}
DAY = 86_400


@dataclass
class Provider:
    url: str
    http: aiohttp.ClientSession

    async def user(self, sub: str, **claims: Any) -> None:
        async with self.http.put(f"{self.url}/users/{sub}", json=claims) as reply:
            assert reply.status == 204

    async def authorize(self, location: str, sub: str) -> str:
        """The employee signs in at the provider's form; returns where it sends the browser."""
        async with self.http.post(location, data={"sub": sub}, allow_redirects=False) as reply:
            assert reply.status == 302, await reply.text()
            return reply.headers["Location"]


@pytest.fixture
def provider_process() -> Iterator[str]:
    """The provider on the real clock (it stands for another machine), ID tokens good
    for a day so the session's end is the shift's or the broker's cap."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.oidc_provider", "--port", str(port), "--token-max-age", str(DAY)],
        env=real_clock_environment(), cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
async def provider(provider_process: str) -> AsyncIterator[Provider]:
    http = aiohttp.ClientSession()
    found = Provider(provider_process, http)
    await found.user("alice", employee_id="e1001")
    await found.user("bob", employee_id="e1002")
    await found.user("mallory", employee_id="e7777")  # not on the roster
    yield found
    await http.close()


def oidc_settings(provider: Provider, **more: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "issuer": provider.url,
        "client_id": "portal",
        "client_secret": "portal-secret",
        "employee_claim": "employee_id",
        **more,
    }


async def events(broker: Harness, key: str, value: str, at_least: int = 1) -> list[dict[str, Any]]:
    """Audit events with `key` == `value`, once at least `at_least` are written (or 5 s)."""
    deadline = time.monotonic() + 5
    while True:
        found = [e for e in await broker.audit_events() if e.get(key) == value]
        if len(found) >= at_least or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.02)


def set_cookies(headers: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for header in headers.getall("Set-Cookie", []):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        found.update(jar)
    return found


async def get(
    broker: Harness, path: str, cookies: dict[str, str] | None = None, **headers: str
) -> aiohttp.ClientResponse:
    sent = dict(headers)
    if cookies:
        sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
    async with broker.session.get(broker.url(path), headers=sent, allow_redirects=False) as reply:
        await reply.read()
        return reply


async def begin(broker: Harness, target: str = OWN) -> tuple[str, str]:
    """/-/oidc/login: the provider's authorization URL and the login cookie."""
    reply = await get(broker, f"/-/oidc/login?next={aiohttp.helpers.quote(target, safe='')}")
    assert reply.status == 302
    login = set_cookies(reply.headers)[LOGIN_COOKIE]
    assert login["secure"] and login["httponly"] and login["samesite"] == "Lax"
    return reply.headers["Location"], login.value


async def sign_in(broker: Harness, provider: Provider, sub: str = "alice", target: str = OWN) -> tuple[str, Any]:
    """The whole flow; returns the session cookie's value and its attributes."""
    location, login = await begin(broker, target)
    back = await provider.authorize(location, sub)
    callback = urlsplit(back)
    reply = await get(broker, f"{callback.path}?{callback.query}", {LOGIN_COOKIE: login})
    assert reply.status == 302, reply
    assert reply.headers["Location"] == target
    session = set_cookies(reply.headers)[COOKIE]
    return session.value, session


async def test_a_browser_signs_in_and_is_decided_like_a_token(make_broker: BrokerFactory, provider: Provider) -> None:
    broker = await make_broker(oidc=oidc_settings(provider))
    # a page load with nothing is sent to sign in; an API call gets its problem
    page = await get(broker, OWN, **PAGE)
    assert page.status == 302 and page.headers["Location"].startswith("/-/oidc/login?next=%2Fapi%2Fbranches")
    api = await get(broker, OWN)
    assert api.status == 401 and api.content_type == "application/problem+json"

    location, _ = await begin(broker)
    asked = parse_qs(urlsplit(location).query)
    assert location.startswith(f"{provider.url}/oauth2/authorize")
    assert asked["code_challenge_method"] == ["S256"] and len(asked["code_challenge"][0]) == 43
    assert asked["response_type"] == ["code"] and asked["client_id"] == ["portal"]
    assert asked["redirect_uri"] == [broker.url("/-/oidc/callback")]
    assert asked["state"][0] and asked["nonce"][0] and asked["state"] != asked["nonce"]

    session, attributes = await sign_in(broker, provider)
    assert attributes["secure"] and attributes["httponly"] and attributes["samesite"] == "Lax"
    assert attributes["path"] == "/" and not attributes["domain"] and not attributes["expires"]
    assert len(session) >= 43  # 256 random bits, nothing else
    own = await get(broker, OWN, {COOKIE: session})
    assert own.status == 200
    other = await get(broker, OTHER, {COOKIE: session})
    assert other.status == 403
    signed_in = await events(broker, "via", "session", 2)
    assert [(e["employee"], e["reason"], e["status"]) for e in signed_in] == [
        ("e1001", "allow", 200),
        ("e1001", "policy.other_branch", 403),
    ]
    [login] = await events(broker, "kind", "oidc.login")
    assert login["employee"] == "e1001" and login["verdict"] == "allow" and login["session_ends"]


async def test_the_session_ends_at_the_shift_end(make_broker: BrokerFactory, provider: Provider) -> None:
    broker = await make_broker(oidc=oidc_settings(provider))  # Tuesday 10:00; e1001 works 08:00-18:00
    session, attributes = await sign_in(broker, provider)
    assert int(attributes["max-age"]) == 8 * 3600  # the shift's end, not the token's day or the 12 h cap
    broker.clock.advance(8 * 3600 - 60)
    assert (await get(broker, OWN, {COOKIE: session})).status == 200
    broker.clock.advance(61)
    ended = await get(broker, OWN, {COOKIE: session})
    assert ended.status == 401
    assert (await get(broker, OWN, {COOKIE: session}, **PAGE)).status == 302  # to sign in again


async def test_a_sign_in_off_shift_or_off_roster_opens_no_session(
    make_broker: BrokerFactory, provider: Provider
) -> None:
    broker = await make_broker(oidc=oidc_settings(provider))
    for n, (sub, status, reason) in enumerate(
        (("bob", 403, "shift.outside"), ("mallory", 403, "identity.not_on_roster"))
    ):
        location, login = await begin(broker)
        back = urlsplit(await provider.authorize(location, sub))
        reply = await get(broker, f"{back.path}?{back.query}", {LOGIN_COOKIE: login})
        assert reply.status == status and COOKIE not in set_cookies(reply.headers)
        refused = await events(broker, "kind", "oidc.login", n + 1)
        assert refused[-1]["reason"] == reason


async def test_state_is_checked_once_and_bound_to_the_browser(make_broker: BrokerFactory, provider: Provider) -> None:
    broker = await make_broker(oidc=oidc_settings(provider))
    location, login = await begin(broker)
    back = urlsplit(await provider.authorize(location, "alice"))
    code = parse_qs(back.query)["code"][0]
    forged = await get(broker, f"/-/oidc/callback?code={code}&state=forged", {LOGIN_COOKIE: login})
    assert forged.status == 400
    other_browser = await get(broker, f"{back.path}?{back.query}", {LOGIN_COOKIE: "someone-else"})
    assert other_browser.status == 400  # and the state is spent
    replayed = await get(broker, f"{back.path}?{back.query}", {LOGIN_COOKIE: login})
    assert replayed.status == 400
    assert len(await events(broker, "action", "login_refused", 3)) == 3


async def test_the_provider_enforces_pkce(provider: Provider) -> None:
    """The provider the tests use refuses a code exchanged with the wrong verifier, so
    the broker's successful sign-ins prove it sends the right one."""
    base = f"{provider.url}/oauth2/authorize"
    query = "response_type=code&client_id=c&redirect_uri=http%3A%2F%2F127.0.0.1%2Fcb&scope=openid&state=s&nonce=n"
    async with provider.http.post(f"{base}?{query}", data={"sub": "alice"}, allow_redirects=False) as no_pkce:
        assert no_pkce.status in (302, 400) and "code=" not in no_pkce.headers.get("Location", "")
    challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"  # RFC 7636's example
    with_pkce = f"{query}&code_challenge={challenge}&code_challenge_method=S256"
    async with provider.http.post(f"{base}?{with_pkce}", data={"sub": "alice"}, allow_redirects=False) as reply:
        code = parse_qs(urlsplit(reply.headers["Location"]).query)["code"][0]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": "http://127.0.0.1/cb",
            "client_id": "c", "client_secret": "x", "code_verifier": "wrong" * 10}  # fmt: skip
    async with provider.http.post(f"{provider.url}/oauth2/token", data=form) as token:
        assert token.status == 400 and (await token.json())["error"] == "invalid_grant"


async def test_forged_cookies_and_logout(make_broker: BrokerFactory, provider: Provider) -> None:
    broker = await make_broker(oidc=oidc_settings(provider))
    forged = await get(broker, OWN, {COOKIE: "A" * 43})
    assert forged.status == 401
    body = await (await broker.session.get(broker.url(OWN), headers={"Cookie": f"{COOKIE}={'A' * 43}"})).json()
    assert body["reason"] == "identity.no_session"
    session, _ = await sign_in(broker, provider)
    assert (await get(broker, OWN, {COOKIE: session})).status == 200
    async with broker.session.post(broker.url("/-/oidc/logout"), headers={"Cookie": f"{COOKIE}={session}"}) as out:
        assert out.status == 200
        assert set_cookies(out.headers)[COOKIE]["max-age"] in ("0", 0)
    assert (await get(broker, OWN, {COOKIE: session})).status == 401
    assert (await get(broker, OWN, {COOKIE: session}, **PAGE)).status == 302
    [logout] = await events(broker, "action", "logout")
    assert logout["employee"] == "e1001"


async def test_the_upstream_never_sees_the_brokers_cookies(
    make_broker: BrokerFactory, provider: Provider, raw_upstream: RawUpstream
) -> None:
    raw_upstream.answer("/api/branches/BR001/waybills", {"items": [{"waybill_no": "SF1", "branch_code": "BR001"}]})
    broker = await make_broker(raw_upstream.url, oidc=oidc_settings(provider))
    session, _ = await sign_in(broker, provider)
    reply = await get(broker, OWN, {"theme": "dark", COOKIE: session, LOGIN_COOKIE: "x", "lang": "zh"})
    assert reply.status == 200
    [sent] = raw_upstream.requests
    cookies = [v for k, v in sent.headers if k.lower() == "cookie"]
    assert cookies == ["theme=dark; lang=zh"]
    assert session.encode() not in bytes(raw_upstream.raw) and b"broker-session" not in bytes(raw_upstream.raw)
    # a token's request is untouched: nothing read, nothing stripped but what always is
    await broker.get(OWN, "e1001", headers={"Cookie": "theme=dark"})
    assert [v for k, v in raw_upstream.requests[-1].headers if k.lower() == "cookie"] == ["theme=dark"]


@pytest.fixture
def redis_meter(shared_redis: tuple[str, str]) -> MeterSettings:
    url, prefix = shared_redis
    return MeterSettings(store="redis", redis_url=url, key_prefix=prefix)


async def test_sessions_are_shared_by_replicas_and_revoked_everywhere(
    make_broker: BrokerFactory, provider: Provider, redis_meter: MeterSettings, tmp_path: Path
) -> None:
    first = await make_broker(meter=redis_meter, oidc=oidc_settings(provider))
    second = await make_broker(meter=redis_meter, oidc=oidc_settings(provider))
    session, _ = await sign_in(first, provider)  # signed in on one replica
    assert (await get(second, OWN, {COOKIE: session})).status == 200  # good on the other
    async with second.session.post(second.url("/-/oidc/logout"), headers={"Cookie": f"{COOKIE}={session}"}):
        pass
    assert (await get(first, OWN, {COOKIE: session})).status == 401  # signed out on both

    again, _ = await sign_in(second, provider)
    also, _ = await sign_in(first, provider)
    config = tmp_path / "broker.toml"
    config.write_text(
        f'[meter]\nstore = "redis"\nredis_url = "{redis_meter.redis_url}"\nkey_prefix = "{redis_meter.key_prefix}"\n'
    )
    revoke = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker", "revoke", "e1001", "-c", str(config),
        env=real_clock_environment(), cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await revoke.communicate()
    assert revoke.returncode == 0, err.decode()
    assert "2 browser session(s) ended" in out.decode()
    for broker, cookie in ((first, again), (second, also)):
        assert (await get(broker, OWN, {COOKIE: cookie})).status == 401


async def test_a_session_cookie_carries_only_requests_this_site_made_or_a_link_followed(
    make_broker: BrokerFactory, provider: Provider, raw_upstream: RawUpstream
) -> None:
    """SameSite=Lax still sends the cookie with requests a sibling site (wiki.example.com
    beside portal.example.com) makes, images and form POSTs included: a page there must
    not write as a colleague, nor read in their name to spend their quota or get them
    flagged. The browser says who made a request (Fetch Metadata, Origin)."""
    waybill = {"waybill_no": "SF1", "branch_code": "BR001"}
    raw_upstream.answer("/api/branches/BR001/waybills", {"items": [waybill]})
    raw_upstream.answer("/api/waybills", waybill, status=201)
    broker = await make_broker(raw_upstream.url, oidc=oidc_settings(provider))
    await provider.user("carol", employee_id="e1004")  # a clerk: writes waybills of BR001
    session, _ = await sign_in(broker, provider, "carol")
    cookie = {"Cookie": f"{COOKIE}={session}"}
    own_origin = broker.url("").rstrip("/")

    async def send(method: str, path: str, **headers: str) -> tuple[int, dict[str, Any]]:
        body = b'{"waybill_no": "SF1", "branch_code": "BR001"}' if method == "POST" else None
        sent = {**cookie, **headers, **({"Content-Type": "text/plain"} if body else {})}
        async with broker.session.request(
            method, broker.url(path), headers=sent, data=body, allow_redirects=False
        ) as reply:
            return reply.status, await reply.json(content_type=None)

    fetch = {"Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"}
    assert (await send("GET", OWN, **fetch))[0] == 200  # the app's own page asking
    link = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    assert (await send("GET", OWN, **link))[0] == 200  # a link followed (the provider's redirect back too)
    assert (await send("GET", OWN, **{"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"}))[0] == 200
    assert (await send("POST", "/api/waybills", **fetch, Origin=own_origin))[0] == 201
    assert (await send("POST", "/api/waybills", Origin=own_origin))[0] == 201  # a browser without Fetch Metadata
    forwarded = len(raw_upstream.requests)

    image = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
    frame = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"}
    sibling = "https://wiki.example.com"
    form = {"Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
    for method, path, headers in (
        ("GET", OWN, image),
        ("GET", OWN, frame),
        ("GET", OWN, {**image, "Sec-Fetch-Site": "cross-site"}),
        ("POST", "/api/waybills", {**form, "Origin": sibling}),  # a form on the sibling site
        ("POST", "/api/waybills", {"Origin": sibling}),  # the same, from a browser without Fetch Metadata
        ("POST", "/api/waybills", {"Origin": "null"}),
        ("POST", "/api/waybills", {}),  # neither header: not a browser this site's page drives
    ):
        status, body = await send(method, path, **headers)
        assert (status, body["reason"]) == (403, "request.cross_site"), (method, headers)
        assert "items" not in body and body["employee"] == "e1004"
    assert len(raw_upstream.requests) == forwarded  # nothing reached the service
    refused = await events(broker, "reason", "request.cross_site", 7)
    assert len(refused) == 7 and {e["employee"] for e in refused} == {"e1004"}
    assert all(e["records_charged"] == 0 and e["via"] == "session" for e in refused)
    # a token is no ambient credential: another site cannot make a browser send it
    assert (await broker.get(OWN, "e1001", headers=image)).status == 200


async def test_sign_ins_begun_and_never_finished_cannot_fill_the_shared_store(
    make_broker: BrokerFactory, provider: Provider, redis_meter: MeterSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/-/oidc/login answers anyone and leaves a record in the Redis the counters and
    freezes live in, for the login timeout: a loop of them must not be able to fill it
    (a full Redis refuses every counter write, or evicts counters and freezes)."""
    monkeypatch.setattr("broker.identity.session_redis.MAX_PENDING", 3)
    broker = await make_broker(meter=redis_meter, oidc=oidc_settings(provider))
    for _ in range(3):
        assert (await get(broker, "/-/oidc/login?next=/")).status == 302
    for _ in range(5):
        refused = await get(broker, "/-/oidc/login?next=/")
        assert refused.status == 503 and refused.headers["Content-Type"] == "application/problem+json"
        assert LOGIN_COOKIE not in set_cookies(refused.headers)
    client = aioredis.from_url(redis_meter.redis_url)
    try:
        held = [key async for key in client.scan_iter(match=f"{redis_meter.key_prefix}session:l:*")]
    finally:
        await client.aclose()
    assert len([key for key in held if not key.endswith(b":started")]) == 3
