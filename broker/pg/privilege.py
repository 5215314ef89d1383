"""The broker's own database login must not be more powerful than the broker.

Everything the PostgreSQL door checks rests on the database enforcing what the broker
asks of it. A superuser login lets superuser-only settings and functions through, and
tells clients `is_superuser = on`; `BYPASSRLS` switches off row-level security, the
second layer under the door's branch scoping; owning a mapped table carries the rights
to alter it and its policies. So the door reads its login's attributes at start and
refuses to open with such a login, unless `[postgres] allow_superuser` says otherwise
(tests, a laptop), which is logged loudly.
"""

from __future__ import annotations

import asyncio
import struct

import structlog

from broker.pg.backend import SERVER_MESSAGE_LIMIT, BackendAddress, BackendError, connect
from broker.pg.wire import cstring, error_fields, message, read_message
from broker.policy.table import TableMap

log = structlog.get_logger("broker.pg")


class LoginTooPowerful(Exception):
    """The door will not open with this database login; the message says why and what to do."""


async def login_problems(address: BackendAddress, tables: TableMap, within: float) -> list[str]:
    """Why the broker's database login is too powerful ([] when it is not)."""
    backend = await connect(address, {}, within)
    try:
        backend.writer.write(message(b"Q", cstring(_query(tables))))
        rows = await _rows(backend.reader)
    finally:
        await backend.close()
    if not rows:
        return [f"the database does not know the role {address.user!r}"]
    superuser, bypass, owned = rows[0]
    problems = []
    if superuser == "t":
        problems.append(f"the broker's database login {address.user!r} is a superuser")
    if bypass == "t":
        problems.append(f"the broker's database login {address.user!r} has BYPASSRLS")
    if owned:
        problems.append(f"the broker's database login {address.user!r} owns the mapped table(s) {owned}")
    return problems


def _query(tables: TableMap) -> str:
    # Table and schema names come from the table map, which accepts only plain lower-case
    # identifiers; they are quoted as literals all the same.
    names = ",".join(_literal(name) for name in sorted(tables.tables)) or "NULL"
    return (
        "SELECT r.rolsuper, r.rolbypassrls, (SELECT string_agg(c.relname, ', ' ORDER BY c.relname) "  # noqa: S608
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relowner = r.oid AND n.nspname = {_literal(tables.schema)} AND c.relname IN ({names})) "
        "FROM pg_catalog.pg_roles r WHERE r.rolname = current_user"
    )


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def _rows(reader: asyncio.StreamReader) -> list[tuple[str | None, ...]]:
    """The DataRows of one simple query, as text, up to ReadyForQuery."""
    found: list[tuple[str | None, ...]] = []
    error: dict[str, str] | None = None
    while True:
        kind, payload = await read_message(reader, SERVER_MESSAGE_LIMIT)
        if kind == b"D":
            found.append(_data_row(payload))
        elif kind == b"E":
            error = error_fields(payload)
        elif kind == b"Z":
            if error is not None:
                raise BackendError(f"the login check failed: {error.get('M', '')}", error.get("C", "XX000"))
            return found


def _data_row(payload: bytes) -> tuple[str | None, ...]:
    (count,) = struct.unpack_from("!H", payload)
    values: list[str | None] = []
    at = 2
    for _ in range(count):
        (length,) = struct.unpack_from("!i", payload, at)
        at += 4
        if length < 0:
            values.append(None)
            continue
        values.append(payload[at : at + length].decode())
        at += length
    return tuple(values)
