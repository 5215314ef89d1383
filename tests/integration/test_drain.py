"""Stopping `broker run` drops no request (issue #16): on SIGTERM readiness goes off and
every answer closes its connection for `drain_seconds` while the listener stays open, so
32 kept-alive clients that keep sending through the stop all get an answer to every
request they sent, and only then find the port closed."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from tests.harness import TUESDAY_10_SHANGHAI, free_port, mint_token, start_broker_process

REPO = Path(__file__).resolve().parents[2]
SECRET = "drain-test-secret-of-32-bytes-min!"


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """(status, whether the broker closes the connection after it)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:] if ": " in line)}
    await reader.readexactly(int(headers.get("content-length", "0")))
    return int(lines[0].split()[1]), headers.get("connection", "").lower() == "close"


async def client(port: int, request: bytes, stop_at: float, counts: dict[str, int]) -> None:
    """Sends on a kept-alive connection until the port is closed; a request sent and never
    answered is a dropped one."""
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    reused = False
    while time.monotonic() < stop_at:
        if connection is None:
            try:
                connection = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return  # the listener is closed: this client is done
            reused = False
        reader, writer = connection
        writer.write(request)
        try:
            status, closing = await asyncio.wait_for(read_answer(reader), 10)
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            # on a kept-alive connection that is a dropped request; on a connection opened
            # as the listener closed, the request never reached the broker (as refused)
            counts["dropped" if reused else "cut at the close"] += 1
            writer.close()
            connection = None
            continue
        reused = True
        counts["answered"] += 1
        counts[f"status {status}"] = counts.get(f"status {status}", 0) + 1
        if closing:
            counts["closed by broker"] += 1
            writer.close()
            connection = None


async def test_sigterm_drains_kept_alive_clients_without_dropping_a_request(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "broker.toml"
    config.write_text(
        f'[server]\nport = {port}\ndrain_seconds = 1.0\n[upstream]\nurl = "http://127.0.0.1:{free_port()}"\n'
        f'[policy]\ndirectory = "{REPO / "policies"}"\nwatch = false\n[audit]\npath = "{tmp_path / "audit.log"}"\n'
    )
    env = {"BROKER_DEV_SECRET": SECRET, "BROKER_CLOCK": "2026-12-01T10:00:00+08:00"}
    process = await asyncio.to_thread(start_broker_process, config, env, wait_port=port)
    try:
        token = mint_token(SECRET, "e1001", now=TUESDAY_10_SHANGHAI)
        # another branch's list: refused by the policy, so no upstream is needed, and audited
        request = (
            f"GET /api/branches/BR002/waybills?limit=1 HTTP/1.1\r\nHost: b\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()
        counts = {"answered": 0, "dropped": 0, "closed by broker": 0, "cut at the close": 0}
        stop_at = time.monotonic() + 15
        clients = [asyncio.create_task(client(port, request, stop_at, counts)) for _ in range(32)]
        await asyncio.sleep(1.0)
        before = counts["answered"]
        process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*clients), 20)
        assert process.wait(timeout=15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert before > 100, counts  # they were busy when the stop came
    assert counts["dropped"] == 0, counts  # no kept-alive connection lost a request
    assert counts["cut at the close"] <= 32, counts  # at most one new connection per client, at the close
    assert counts["closed by broker"] >= 32, counts  # every connection was told to go away
    assert counts["answered"] == counts.get("status 403", 0) + counts.get("status 401", 0), counts
