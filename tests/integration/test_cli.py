"""The command line, as an operator or a CI job runs it: exit codes and output."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from broker.core.clock import FakeClock
from broker.identity.jwt_authenticator import JwtAuthenticator, mint_token
from broker.identity.settings import IdentitySettings
from tests.harness import SECRET, TUESDAY_10_SHANGHAI

REPO = Path(__file__).resolve().parents[2]


def broker_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def test_check_accepts_the_shipped_policy() -> None:
    result = broker_cli("check", "--policies", str(REPO / "policies"), env={"BROKER_DEV_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    assert "OK: revision" in result.stdout and "7 employees" in result.stdout


def test_check_reports_every_problem_with_file_and_line(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    roster = policies / "roster.csv"
    roster.write_text(roster.read_text() + "pp, e5, courier, BR001\ng, e6, curier, BR001 # new hire\ng, e7, clerk\n")
    result = broker_cli("check", "--policies", str(policies), env={"BROKER_DEV_SECRET": SECRET})
    assert result.returncode == 1
    lines = len(roster.read_text().splitlines())
    assert f"roster.csv:{lines - 2}: unknown line type 'pp'" in result.stderr
    assert f"roster.csv:{lines - 1}: inline comment after a rule" in result.stderr
    assert f"roster.csv:{lines}: g line has 2 fields, expected 3" in result.stderr
    assert "3 problem(s)" in result.stderr


def test_check_reports_config_problems(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('[upstream]\nurl = "ftp://x"\n')
    result = broker_cli("check", "-c", str(config), "--policies", str(REPO / "policies"))
    assert result.returncode == 2
    assert "url 'ftp://x' must start with http://" in result.stderr
    assert "no key source" in result.stderr


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text("[upstream]\nurll = 1\n")
    result = broker_cli("check", "-c", str(config))
    assert result.returncode == 2
    assert "unknown key 'urll' in [upstream]" in result.stderr


def test_token_mints_a_token_the_broker_accepts() -> None:
    result = broker_cli("token", "--sub", "e1001", env={"BROKER_DEV_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    authenticator = JwtAuthenticator(IdentitySettings(hs256_secret=SECRET), FakeClock(time.time()))
    assert asyncio.run(authenticator.authenticate(token)) == "e1001"


def test_token_without_secret_says_how_to_configure() -> None:
    env = {k: v for k, v in os.environ.items() if k != "BROKER_DEV_SECRET"}
    result = subprocess.run(
        [sys.executable, "-m", "broker", "token", "--sub", "e1"], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 2 and "BROKER_DEV_SECRET" in result.stderr


def test_help_lists_every_command() -> None:
    result = broker_cli("--help")
    for command in ("run", "check", "token", "demo"):
        assert command in result.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def running_broker(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    port = free_port()
    config = tmp_path / "broker.toml"
    config.write_text(
        f'[server]\nport = {port}\n[upstream]\nurl = "http://127.0.0.1:{free_port()}"\n'
        f'[policy]\ndirectory = "{policies}"\nwatch = false\n[audit]\npath = "{tmp_path / "audit.log"}"\n'
    )
    env = {**os.environ, "BROKER_DEV_SECRET": SECRET, "BROKER_CLOCK": "2026-12-01T10:00:00+08:00"}
    log = (tmp_path / "broker.out").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "broker", "run", "-c", str(config)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.1)
    yield process, port, policies
    process.terminate()
    process.wait(timeout=15)
    log.close()


async def test_run_serves_reloads_on_sighup_and_stops_cleanly(
    running_broker: tuple[subprocess.Popen[bytes], int, Path], tmp_path: Path
) -> None:
    process, port, policies = running_broker
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base}/-/readyz") as ready:
            assert ready.status == 200
            revision = (await ready.json())["policy_revision"]
        roster = policies / "roster.csv"
        roster.write_text(roster.read_text() + "g, e3001, courier, BR004\n")
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            async with session.get(f"{base}/-/policy") as reply:
                state = await reply.json()
            if state["revision"] != revision:
                break
            await asyncio.sleep(0.1)
        assert state["revision"] != revision and state["employees"] == 8
        # BROKER_CLOCK put the broker at Tuesday 10:00 in Shanghai: e1002 is off shift
        token = mint_token(SECRET, "e1002", now=TUESDAY_10_SHANGHAI)
        async with session.get(
            f"{base}/api/branches/BR002/waybills", headers={"Authorization": f"Bearer {token}"}
        ) as reply:
            assert reply.status == 403 and (await reply.json())["reason"] == "shift.outside"
    process.terminate()
    assert process.wait(timeout=15) == 0
    audit = (tmp_path / "audit.log").read_text()
    assert '"reason":"shift.outside"' in audit


def test_run_refuses_a_broken_policy_with_file_and_line(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(REPO / "policies", policies)
    (policies / "roles.csv").write_bytes(b"\xef\xbb\xbf" + (policies / "roles.csv").read_bytes())
    config = tmp_path / "broker.toml"
    config.write_text(f'[policy]\ndirectory = "{policies}"\n')
    result = broker_cli("run", "-c", str(config), env={"BROKER_DEV_SECRET": SECRET})
    assert result.returncode == 1
    assert "roles.csv:1: file starts with a UTF-8 byte order mark" in result.stderr
