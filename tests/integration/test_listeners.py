"""The proxy port over HTTPS, and the operators' endpoints on a listener of their own
(issue #16): `broker run` as a process, real TLS handshakes, real sockets."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.certs import self_signed
from tests.harness import free_port, start_broker_process

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, int, Path]]:
    cert, key = self_signed(tmp_path, "broker.test")
    port, admin = free_port(), free_port()
    config = tmp_path / "broker.toml"
    config.write_text(
        f"[server]\nport = {port}\nadmin_port = {admin}\ndrain_seconds = 0.2\n"
        f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\n'
        f'[policy]\ndirectory = "{REPO / "policies"}"\nwatch = false\n[audit]\npath = "{tmp_path / "audit.log"}"\n'
    )
    process = start_broker_process(config, {"BROKER_DEV_SECRET": "s" * 32}, wait_port=admin)
    try:
        yield port, admin, cert
    finally:
        process.terminate()
        process.wait(timeout=15)


async def test_the_proxy_port_speaks_https_and_operations_live_on_their_own_port(
    tls_broker: tuple[int, int, Path],
) -> None:
    port, admin, cert = tls_broker
    trusted = ssl.create_default_context(cafile=str(cert))
    async with aiohttp.ClientSession() as session:
        async with session.get(f"https://127.0.0.1:{port}/-/problems/shift.outside", ssl=trusted) as reply:
            assert reply.status == 200  # employee-facing endpoints stay on the proxy port
        async with session.get(f"https://127.0.0.1:{port}/-/metrics", ssl=trusted) as reply:
            assert reply.status == 401  # not served here: it is a proxied path like any other
        async with session.get(f"http://127.0.0.1:{admin}/-/metrics") as reply:
            assert reply.status == 200 and "broker_decisions_total" in await reply.text()
        async with session.get(f"http://127.0.0.1:{admin}/-/readyz") as reply:
            assert reply.status == 200
        with pytest.raises(aiohttp.ClientError):  # plain HTTP to the TLS port gets no answer
            async with session.get(f"http://127.0.0.1:{port}/-/problems/shift.outside") as reply:
                await reply.read()


def test_a_certificate_that_cannot_be_loaded_stops_the_broker_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "bad.crt").write_text("not a certificate")
    config = tmp_path / "broker.toml"
    config.write_text(
        f'[server]\nport = {free_port()}\ntls_cert_file = "{tmp_path / "bad.crt"}"\n'
        f'tls_key_file = "{tmp_path / "bad.crt"}"\n[policy]\ndirectory = "{REPO / "policies"}"\nwatch = false\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "broker", "run", "-c", str(config)],
        env={**os.environ, "BROKER_DEV_SECRET": "s" * 32}, capture_output=True, text=True, timeout=60, cwd=REPO,
        check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "configuration error: [server] tls_cert_file/tls_key_file: cannot load" in result.stderr
    assert "Traceback" not in result.stderr
