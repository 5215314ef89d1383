"""Helpers shared by the tests: talking to a broker over real sockets, a rogue upstream."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from broker.app import Broker
from broker.core.clock import FakeClock, parse_instant
from broker.identity.jwt_authenticator import mint_token

SECRET = "tests-only-secret-0123456789abcdef0123456789"
TUESDAY_10_SHANGHAI = parse_instant("2026-12-01T10:00:00+08:00")


def routable_address() -> str | None:
    """An address of this machine that is not loopback, if it has one (a client the
    PostgreSQL door must not trust as local, as Docker's forwarded peer is not)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET: nothing is sent
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if ipaddress.ip_address(address).is_loopback else address


def door_settings(database: str, **more: Any) -> dict[str, Any]:
    """[postgres] settings opening the broker's PostgreSQL door, on a free port, in front of
    `database` on the machine's PostgreSQL."""
    # the tests' database login is the machine's superuser: allowed here, refused by default
    settings = {"enabled": True, "port": 0, "server_database": database, "server_user": "postgres"}
    return {**settings, "allow_superuser": True, **more}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


REPO_ROOT = Path(__file__).resolve().parents[1]
HELP_LINE = " Help desk: "


def own_words(detail: str) -> str:
    """A refusal's English detail without the help line the shipped messages.toml adds
    (its phone number and the decision id hold digits of their own): what a test that
    no count of an answer leaks must look at."""
    assert HELP_LINE in detail, detail
    return detail.split(HELP_LINE, 1)[0]


@dataclass
class Harness:
    """A running broker, its clock and audit log, and a client session to talk to it."""

    broker: Broker
    server: TestServer
    clock: FakeClock
    audit_path: Path
    session: aiohttp.ClientSession
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def pg_port(self) -> int:
        assert self.broker.pg is not None, "this broker has no PostgreSQL door"
        return self.broker.pg.port

    def pg_dsn(self, employee: str, token: str | None = None, **params: str) -> str:
        """A libpq connection string to the broker's PostgreSQL door for `employee`."""
        database = self.broker.settings.postgres.server_database
        fields = {
            "host": "127.0.0.1",
            "port": str(self.pg_port),
            "user": employee,
            "password": token or self.token(employee),
            "dbname": database,
            "sslmode": "disable",
            **params,
        }
        return " ".join(f"{k}='{v}'" for k, v in fields.items())

    def token(self, employee: str, **kwargs: Any) -> str:
        return mint_token(SECRET, employee, now=self.clock.now(), **kwargs)

    async def request(
        self, method: str, path: str, employee: str | None = None, *, headers: dict[str, str] | None = None, **kw: Any
    ) -> Reply:
        sent = dict(headers or {})
        if employee is not None:
            sent["Authorization"] = f"Bearer {self.token(employee)}"
        async with self.session.request(method, self.url(path), headers=sent, **kw) as response:
            return Reply(response.status, dict(response.headers), await response.read())

    async def get(self, path: str, employee: str | None = None, **kw: Any) -> Reply:
        return await self.request("GET", path, employee, **kw)

    async def audit_events(self, at_least: int = 1) -> list[dict[str, Any]]:
        """Audit lines written so far (waiting briefly for the writer thread)."""
        deadline = time.monotonic() + 5
        while True:
            lines = self.audit_path.read_text().splitlines() if self.audit_path.exists() else []
            if len(lines) >= at_least or time.monotonic() > deadline:
                return [json.loads(line) for line in lines]
            await asyncio.sleep(0.02)


async def raw_request(port: int, target: str, headers: dict[str, str] | None = None, method: str = "GET") -> Reply:
    """Send a request target byte for byte (aiohttp's client would normalise it)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: broker.test", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return await raw_exchange(port, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


async def raw_exchange(port: int, data: bytes) -> Reply:
    """Send `data` as it is and read the answer until the broker closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = dict(line.split(": ", 1) for line in header_lines if ": " in line)
    return Reply(int(status_line.split()[1]), parsed, body)


def rogue_upstream_app() -> web.Application:
    """An upstream we own that misbehaves on request (header X-Test-Mode)."""

    async def waybills(request: web.Request) -> web.StreamResponse:
        mode = request.headers.get("X-Test-Mode", "normal")
        branch = request.match_info["branch"]
        limit = int(request.query.get("limit", "20"))
        count = {"normal": min(limit, 3), "too_many": limit + 10}.get(mode, 2)
        items: list[dict[str, Any]] = [{"waybill_no": f"SF{i}", "branch_code": branch} for i in range(count)]
        if mode == "other_branch":
            items.append({"waybill_no": "SF-leak", "branch_code": "BR999"})
        if mode == "no_branch_field":
            items.append({"waybill_no": "SF-anon"})
        if mode == "slow":
            await asyncio.sleep(3)
        if mode == "invalid_json":
            return web.Response(body=b"{not json", content_type="application/json")
        if mode == "gzip":
            response = web.json_response({"items": items})
            response.enable_compression(web.ContentCoding.gzip)
            return response
        if mode == "echo":
            items = [
                {
                    "branch_code": branch,
                    "raw_path": request.raw_path,
                    "headers": {k: v for k, v in request.headers.items()},
                }
            ]
        return web.json_response({"items": items})

    async def create(request: web.Request) -> web.Response:
        body = await request.read()
        record = json.loads(body)
        record["received_bytes"] = len(body)
        record["received_headers"] = dict(request.headers)
        return web.json_response(record, status=201)

    app = web.Application()
    app.router.add_get("/api/branches/{branch}/waybills", waybills)
    app.router.add_post("/api/waybills", create)
    return app


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, within: float = 20.0) -> None:
    """Until something accepts connections on `port` (a process we started is up)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)


def start_broker_process(
    config: Path, env: dict[str, str], *, output: int | IO[Any] = subprocess.DEVNULL, wait_port: int | None = None
) -> subprocess.Popen[bytes]:
    """`broker run -c config` as a process of its own (the environment given on top of
    ours, without libfaketime: a server stands for another machine, whose clock is the
    real one, and timed waits in its threads misbehave under the preload), started from
    the repository; returns once `wait_port` accepts connections."""
    ours = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "FAKETIME")}
    process = subprocess.Popen(
        [sys.executable, "-m", "broker", "run", "-c", str(config)],
        env={**ours, **env}, stdout=output, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
    )  # fmt: skip
    if wait_port is not None:
        wait_for_port(wait_port)
    return process
