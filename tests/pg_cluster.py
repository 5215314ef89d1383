"""A private PostgreSQL cluster for the tests that need what the machine's shared server
does not give: logins that must present a password (the shared one trusts everyone on
loopback). initdb'd into a temp directory, started on a free port, stopped afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.redis_fixtures import free_port


def pg_binary(name: str) -> str:
    for found in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(found)
    located = shutil.which(name)
    if located is None:
        pytest.fail(f"{name} is required (apt-get install postgresql)")
    return located


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and postgres refuse to run as root."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


def scram_cluster(home: Path, password: str) -> Iterator[int]:
    """A cluster in `home` where every login, on every address, needs SCRAM-SHA-256; its
    superuser is `postgres` with `password`. Yields the port once it accepts logins."""
    data, password_file = home / "data", home / "password"
    password_file.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
        shutil.chown(password_file, "postgres")
    initdb = [
        pg_binary("initdb"),
        "-D",
        str(data),
        "-U",
        "postgres",
        "--auth=scram-sha-256",
        f"--pwfile={password_file}",
    ]
    done = subprocess.run(_as_postgres(initdb), capture_output=True, text=True, check=False)
    if done.returncode:
        pytest.fail(f"initdb failed: {done.stderr.strip()}")
    port = free_port()
    server = subprocess.Popen(
        _as_postgres([pg_binary("postgres"), "-D", str(data), "-p", str(port), "-k", str(home),
                      "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    dsn = f"host=127.0.0.1 port={port} user=postgres password={password} dbname=postgres"
    deadline = time.monotonic() + 30
    while True:
        try:
            psycopg.connect(dsn, autocommit=True).close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("the private PostgreSQL cluster did not start")
            time.sleep(0.2)
    try:
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)
