"""A real PostgreSQL for the tests: a private database with a seeded waybills schema,
created on the machine's server (127.0.0.1:5432, trust auth) and dropped afterwards.

The tests fail, never skip, when PostgreSQL is not there.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest

ADMIN_DSN = os.environ.get("BROKER_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=test")
BRANCH_ROWS = {"BR001": 120, "BR002": 80, "BR003": 40}

SCHEMA = """
CREATE TABLE waybills (
    id serial PRIMARY KEY,
    waybill_no text NOT NULL UNIQUE,
    branch_code text NOT NULL,
    sender_name text, sender_phone text, sender_address text,
    recipient_name text, recipient_phone text, recipient_address text,
    status text NOT NULL DEFAULT 'created',
    weight_kg numeric(6,2) NOT NULL DEFAULT 1.0
);
CREATE TABLE customers (
    id serial PRIMARY KEY,
    branch_code text NOT NULL,
    name text, phone text, address text
);
CREATE VIEW all_waybills AS SELECT * FROM waybills;
"""


def _seed(conn: psycopg.Connection) -> None:
    with conn.cursor() as cur:
        cur.execute(SCHEMA)
        for branch, count in BRANCH_ROWS.items():
            cur.execute(
                "INSERT INTO waybills (waybill_no, branch_code, sender_name, sender_phone, recipient_name, status)"
                " SELECT %s || '-' || g, %s, 'Sender ' || g, '138' || lpad(g::text, 8, '0'), 'Recipient ' || g,"
                " CASE WHEN g %% 3 = 0 THEN 'delivered' ELSE 'in_transit' END FROM generate_series(1, %s) AS g",
                (branch, branch, count),
            )
            cur.execute(
                "INSERT INTO customers (branch_code, name, phone) SELECT %s, 'Customer ' || g, '139' || g"
                " FROM generate_series(1, 10) AS g",
                (branch,),
            )


@contextlib.contextmanager
def seeded_database(prefix: str = "broker_test") -> Iterator[str]:
    """A private database holding the seeded schema, dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is required for these tests ({ADMIN_DSN}): {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            with psycopg.connect(_dsn(name), autocommit=True) as conn:
                _seed(conn)
            yield name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """The name of a private database holding the seeded schema."""
    with seeded_database() as name:
        yield name


def _dsn(database: str) -> str:
    return ADMIN_DSN.replace("dbname=test", f"dbname={database}")


def direct(database: str) -> psycopg.Connection:
    """A connection straight to the database, bypassing the broker (to check results)."""
    return psycopg.connect(_dsn(database), autocommit=True)
