"""The broker's own login to the real database.

Employees never learn these credentials: renting out a login that only works through
the broker gains a fraud ring nothing the broker would not refuse anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import struct
from dataclasses import dataclass, field

import scramp

from broker.pg.wire import (
    TERMINATE,
    Cursor,
    ProtocolViolation,
    cancel_request,
    cstring,
    error_fields,
    message,
    read_message,
    startup_message,
)

SERVER_MESSAGE_LIMIT = 1 << 30
"""PostgreSQL's own bound on one message; DataRow payloads are passed on as they come."""

_AUTH_OK, _AUTH_CLEARTEXT, _AUTH_MD5, _AUTH_SASL, _AUTH_SASL_CONTINUE, _AUTH_SASL_FINAL = 0, 3, 5, 10, 11, 12


class BackendError(Exception):
    """The database refused the broker's login or could not be reached."""

    def __init__(self, text: str, sqlstate: str = "08006") -> None:
        super().__init__(text)
        self.text = text
        self.sqlstate = sqlstate


@dataclass(frozen=True, slots=True)
class BackendAddress:
    host: str
    port: int
    database: str
    user: str
    password: str

    async def open(self, within: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A unix-socket directory (a host starting with /) or a TCP address."""
        if self.host.startswith("/"):
            path = f"{self.host}/.s.PGSQL.{self.port}"
            return await asyncio.wait_for(asyncio.open_unix_connection(path), within)
        return await asyncio.wait_for(asyncio.open_connection(self.host, self.port), within)


@dataclass(slots=True)
class BackendSession:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    parameters: dict[str, str] = field(default_factory=dict)
    pid: int = 0
    key: int = 0

    async def close(self) -> None:
        """Say goodbye (so the server logs a clean disconnect) and wait for the socket to close."""
        with contextlib.suppress(Exception):
            self.writer.write(TERMINATE)
        await close_stream(self.writer)


async def close_stream(writer: asyncio.StreamWriter) -> None:
    """Close and wait, bounded: a peer that stops reading must not hold a session open."""
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 2.0)


async def connect(address: BackendAddress, parameters: dict[str, str], within: float) -> BackendSession:
    """Log in with the broker's credentials and read up to the first ReadyForQuery."""
    try:
        reader, writer = await address.open(within)
    except (OSError, TimeoutError) as exc:
        raise BackendError(f"the database at {address.host}:{address.port} is unreachable ({exc})") from exc
    backend = BackendSession(reader, writer)
    try:
        startup = {"user": address.user, "database": address.database, **parameters}
        writer.write(startup_message(startup))
        await asyncio.wait_for(_login(backend, address), within)
    except BaseException:
        await close_stream(writer)
        raise
    return backend


async def _login(backend: BackendSession, address: BackendAddress) -> None:
    scram: scramp.ScramClient | None = None
    while True:
        kind, payload = await read_message(backend.reader, SERVER_MESSAGE_LIMIT)
        if kind == b"R":
            scram = await _authenticate(backend.writer, address, Cursor(payload), scram)
        elif kind == b"S":
            fields = Cursor(payload)
            name = fields.cstring()
            backend.parameters[name] = fields.cstring()
        elif kind == b"K":
            backend.pid, backend.key = struct.unpack_from("!II", payload)
        elif kind == b"E":
            found = error_fields(payload)
            raise BackendError(f"the database refused the broker: {found.get('M', '')}", found.get("C", "08006"))
        elif kind == b"Z":
            return
        elif kind not in (b"N", b"v"):
            raise ProtocolViolation(f"unexpected {kind!r} from the database during login")


async def _authenticate(
    writer: asyncio.StreamWriter, address: BackendAddress, fields: Cursor, scram: scramp.ScramClient | None
) -> scramp.ScramClient | None:
    """One authentication exchange step; returns the SCRAM state to carry to the next."""
    code = fields.int32()
    if code == _AUTH_OK:
        return None
    if code == _AUTH_CLEARTEXT:
        writer.write(message(b"p", cstring(address.password)))
    elif code == _AUTH_MD5:
        writer.write(message(b"p", cstring(_md5_password(address, fields.raw(4)))))
    elif code == _AUTH_SASL:
        return _scram_first(writer, address, fields)
    elif code == _AUTH_SASL_CONTINUE and scram is not None:
        scram.set_server_first(fields.rest().decode("utf-8"))
        writer.write(message(b"p", scram.get_client_final().encode("utf-8")))
    elif code == _AUTH_SASL_FINAL and scram is not None:
        scram.set_server_final(fields.rest().decode("utf-8"))
    else:
        raise BackendError(f"the database asked for an authentication method the broker does not speak ({code})")
    await writer.drain()
    return scram


def _scram_first(writer: asyncio.StreamWriter, address: BackendAddress, fields: Cursor) -> scramp.ScramClient:
    """SCRAM-SHA-256 without channel binding: a TLS-terminating proxy cannot bind the
    client's channel to the server's, so -PLUS is never chosen."""
    offered = []
    while (name := fields.cstring()) != "":
        offered.append(name)
    if "SCRAM-SHA-256" not in offered:
        raise BackendError(f"the database offers only {', '.join(offered)}; the broker speaks SCRAM-SHA-256")
    scram = scramp.ScramClient(["SCRAM-SHA-256"], address.user, address.password)
    first = scram.get_client_first().encode("utf-8")
    writer.write(message(b"p", cstring("SCRAM-SHA-256") + struct.pack("!i", len(first)) + first))
    return scram


def _md5_password(address: BackendAddress, salt: bytes) -> str:
    inner = hashlib.md5((address.password + address.user).encode("utf-8")).hexdigest()  # noqa: S324 - the protocol's
    return "md5" + hashlib.md5(inner.encode("ascii") + salt).hexdigest()  # noqa: S324


async def send_cancel(address: BackendAddress, pid: int, key: int, within: float) -> None:
    """Ask the database to cancel the running query of one backend, and wait until it
    has taken the request (it closes the connection), so the cancel cannot land on a
    statement sent after it."""
    reader, writer = await address.open(within)
    try:
        writer.write(cancel_request(pid, key))
        await writer.drain()
        await asyncio.wait_for(reader.read(), within)
    finally:
        await close_stream(writer)
