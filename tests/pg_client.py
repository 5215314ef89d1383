"""A raw PostgreSQL frontend for the tests: sends what drivers rarely do, byte by byte."""

from __future__ import annotations

import asyncio
import struct

from broker.pg.wire import MessageBuffer, cstring, error_fields, message, startup_message
from tests.harness import Harness


class RawClient:
    """Just enough of a frontend to send what drivers rarely do."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.buffer = MessageBuffer(1 << 24)
        self.pending: list[tuple[bytes, bytes]] = []

    @classmethod
    async def open(cls, port: int) -> RawClient:
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def login(
        self, harness: Harness, employee: str = "e1001", token: str | None = None, extra: dict[str, str] | None = None
    ) -> None:
        """Start-up as `employee`, with `extra` start-up parameters of the client's own."""
        database = harness.broker.settings.postgres.server_database
        self.writer.write(startup_message({"user": employee, "database": database, **(extra or {})}))
        assert (await self.next())[0] == b"R"  # cleartext password, please
        self.writer.write(message(b"p", cstring(token or harness.token(employee))))
        await self.until(b"Z")

    async def next(self) -> tuple[bytes, bytes]:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                raise ConnectionError("the broker closed the connection")
            self.pending.extend(self.buffer.feed(data))
        return self.pending.pop(0)

    async def until(self, kind: bytes) -> list[tuple[bytes, bytes]]:
        seen = []
        while True:
            found = await self.next()
            seen.append(found)
            if found[0] == kind:
                return seen

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def kinds(messages: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(kind for kind, _ in messages)


def sqlstate(raw: bytes) -> str:
    return error_fields(raw[5:]).get("C", "")


def parse(name: str, sql: str) -> bytes:
    return message(b"P", cstring(name) + cstring(sql) + b"\x00\x00")


def bind(portal: str, statement: str, *params: str) -> bytes:
    values = b"".join(struct.pack("!I", len(p.encode())) + p.encode() for p in params)
    return message(
        b"B", cstring(portal) + cstring(statement) + b"\x00\x00" + struct.pack("!H", len(params)) + values + b"\x00\x00"
    )


def sync() -> bytes:
    return message(b"S")


def query(sql: str) -> bytes:
    return message(b"Q", cstring(sql))


def errors(seen: list[tuple[bytes, bytes]]) -> list[dict[str, str]]:
    """The fields of every ErrorResponse in `seen`."""
    return [error_fields(raw[5:]) for kind, raw in seen if kind == b"E"]
