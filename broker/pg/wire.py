"""PostgreSQL protocol v3 framing: reading messages and building the ones the broker sends.

Only framing lives here, no policy: a message is its type byte and its payload. The
limits guard the broker's memory against a peer announcing a huge message.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

PROTOCOL_3_0: Final = 196608
SSL_REQUEST: Final = 80877103
GSSENC_REQUEST: Final = 80877104
CANCEL_REQUEST: Final = 80877102

MAX_STARTUP_BYTES: Final = 10_000
"""PostgreSQL itself refuses longer startup packets."""

_HEADER = struct.Struct("!cI")
_INT32 = struct.Struct("!I")
_INT16 = struct.Struct("!H")
_SIGNED32 = struct.Struct("!i")


class ProtocolViolation(Exception):
    """The peer sent something that is not the PostgreSQL protocol."""


@dataclass(frozen=True, slots=True)
class Startup:
    """The first packet of a connection: its code and what follows it."""

    code: int
    body: bytes


async def read_startup(reader: asyncio.StreamReader) -> Startup:
    """The untyped first packet: length, code, body."""
    head = await reader.readexactly(8)
    length, code = struct.unpack("!II", head)
    if not 8 <= length <= MAX_STARTUP_BYTES:
        raise ProtocolViolation(f"a startup packet of {length} bytes")
    return Startup(code, await reader.readexactly(length - 8))


async def read_message(reader: asyncio.StreamReader, limit: int) -> tuple[bytes, bytes]:
    """One typed message: (type byte, payload)."""
    kind, length = _HEADER.unpack(await reader.readexactly(5))
    if length < 4 or length - 4 > limit:
        raise ProtocolViolation(f"a {kind!r} message of {length} bytes (the limit is {limit})")
    return kind, await reader.readexactly(length - 4)


def message(kind: bytes, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, len(payload) + 4) + payload


def startup_parameters(body: bytes) -> dict[str, str]:
    """The name/value pairs of a StartupMessage body (after its version code)."""
    parts = body.split(b"\x00")
    if len(parts) < 2 or parts[-1] != b"" or parts[-2] != b"":
        raise ProtocolViolation("a startup message that is not a list of NUL-terminated names and values")
    names_values = parts[:-2]
    if len(names_values) % 2:
        raise ProtocolViolation("a startup parameter without a value")
    try:
        decoded = [item.decode("utf-8") for item in names_values]
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("startup parameters that are not UTF-8") from exc
    return dict(zip(decoded[::2], decoded[1::2], strict=True))


def startup_message(parameters: dict[str, str]) -> bytes:
    body = b"".join(cstring(name) + cstring(value) for name, value in parameters.items()) + b"\x00"
    return _INT32.pack(len(body) + 8) + _INT32.pack(PROTOCOL_3_0) + body


def cancel_request(pid: int, key: int) -> bytes:
    return struct.pack("!IIII", 16, CANCEL_REQUEST, pid, key)


def cstring(text: str) -> bytes:
    return text.encode("utf-8") + b"\x00"


class Cursor:
    """Reads the fields of one payload in order; a short or malformed payload is a
    ProtocolViolation, never an IndexError deep in the session."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def cstring(self) -> str:
        end = self._data.find(b"\x00", self._pos)
        if end < 0:
            raise ProtocolViolation("a string without its terminating NUL")
        raw = self._data[self._pos : end]
        self._pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolViolation("text that is not UTF-8") from exc

    def int16(self) -> int:
        return int(self._unpack(_INT16))

    def int32(self) -> int:
        return int(self._unpack(_INT32))

    def signed32(self) -> int:
        value = self.int32()
        return value - (1 << 32) if value >= 1 << 31 else value

    def raw(self, size: int) -> bytes:
        if size < 0 or self._pos + size > len(self._data):
            raise ProtocolViolation("a field longer than its message")
        chunk = self._data[self._pos : self._pos + size]
        self._pos += size
        return chunk

    def byte(self) -> bytes:
        return self.raw(1)

    def rest(self) -> bytes:
        """What is left: SASL data, for one, carries no length of its own."""
        chunk = self._data[self._pos :]
        self._pos = len(self._data)
        return chunk

    def _unpack(self, shape: struct.Struct) -> int:
        if self._pos + shape.size > len(self._data):
            raise ProtocolViolation("a message shorter than its fields")
        (value,) = shape.unpack_from(self._data, self._pos)
        self._pos += shape.size
        return int(value)


@dataclass(slots=True)
class Bind:
    """What a Bind message carries that the broker needs (not frozen: a frozen dataclass
    sets each field through object.__setattr__, and there is a Bind per statement)."""

    portal: str
    statement: str
    params: list[bytes | None]
    formats: list[int]
    rest_at: int = 0
    """Where the payload goes on after the two names (what follows them is forwarded as is)."""


def _name_at(payload: bytes, start: int) -> tuple[str, int]:
    """The NUL-terminated UTF-8 name at `start`, and where the payload goes on after it."""
    end = payload.find(b"\x00", start)
    if end < 0:
        raise ProtocolViolation("a string without its terminating NUL")
    try:
        return payload[start:end].decode("utf-8"), end + 1
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("text that is not UTF-8") from exc


def read_execute(payload: bytes) -> tuple[str, int]:
    """Execute: the portal and the row limit (0: all). Read as a Cursor would, without one
    (an Execute per statement)."""
    portal, position = _name_at(payload, 0)
    if position + 4 > len(payload):
        raise ProtocolViolation("a message shorter than its fields")
    return portal, int(_INT32.unpack_from(payload, position)[0])


def read_query(payload: bytes) -> str:
    """A simple Query's text, read as a Cursor would, without one (a Query per statement)."""
    return _name_at(payload, 0)[0]


def read_target(payload: bytes) -> tuple[bytes, str]:
    """Describe and Close: b"S" or b"P" (as sent: the caller decides what else is wrong),
    and the name."""
    if not payload:
        raise ProtocolViolation("a field longer than its message")
    return payload[:1], _name_at(payload, 1)[0]


def read_bind(payload: bytes) -> Bind:
    """A Bind's fields, read in one function rather than a Cursor call per field (there is
    a Bind per statement in the extended protocol); malformed is a ProtocolViolation, as
    with a Cursor."""
    portal_end = payload.find(b"\x00")
    statement_end = payload.find(b"\x00", portal_end + 1) if portal_end >= 0 else -1
    if statement_end < 0:
        raise ProtocolViolation("a string without its terminating NUL")
    try:
        portal = payload[:portal_end].decode("utf-8")
        statement = payload[portal_end + 1 : statement_end].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolViolation("text that is not UTF-8") from exc
    position, size = statement_end + 1, len(payload)
    try:
        (count,) = _INT16.unpack_from(payload, position)
        # none (all text) or one (for every parameter) are what drivers send
        if count == 0:
            formats = []
        elif count == 1:
            formats = [_INT16.unpack_from(payload, position + 2)[0]]
        else:
            formats = list(struct.unpack_from(f"!{count}H", payload, position + 2))
        position += 2 + 2 * count
        (count,) = _INT16.unpack_from(payload, position)
        position += 2
        params: list[bytes | None] = []
        for _ in range(count):
            (length,) = _SIGNED32.unpack_from(payload, position)
            position += 4
            if length == -1:
                params.append(None)
                continue
            if length < 0 or position + length > size:
                raise ProtocolViolation("a field longer than its message")
            params.append(payload[position : position + length])
            position += length
    except struct.error:
        raise ProtocolViolation("a message shorter than its fields") from None
    return Bind(portal, statement, params, formats, statement_end + 1)


# --- messages the broker sends to clients -----------------------------------------


def error_response(
    severity: str, code: str, text: str, *, detail: str = "", hint: str = "", extra: Iterable[tuple[bytes, str]] = ()
) -> bytes:
    """ErrorResponse: severity (localised and not), SQLSTATE, message, detail, hint."""
    fields = [(b"S", severity), (b"V", severity), (b"C", code), (b"M", text)]
    if detail:
        fields.append((b"D", detail))
    if hint:
        fields.append((b"H", hint))
    fields.extend(extra)
    return message(b"E", b"".join(tag + cstring(value) for tag, value in fields) + b"\x00")


def error_fields(payload: bytes) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse by their one-letter tag."""
    found: dict[str, str] = {}
    for item in payload.split(b"\x00"):
        if item:
            found[chr(item[0])] = item[1:].decode("utf-8", "replace")
    return found


def ready_for_query(status: bytes) -> bytes:
    return message(b"Z", status)


def authentication(code: int, extra: bytes = b"") -> bytes:
    return message(b"R", _INT32.pack(code) + extra)


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstring(name) + cstring(value))


def backend_key_data(pid: int, key: int) -> bytes:
    return message(b"K", struct.pack("!II", pid, key))


def negotiate_protocol_version(newest_minor: int, unrecognised: Sequence[str]) -> bytes:
    body = _INT32.pack(newest_minor) + _INT32.pack(len(unrecognised))
    return message(b"v", body + b"".join(cstring(name) for name in unrecognised))


def execute(portal: str, max_rows: int = 0) -> bytes:
    return message(b"E", cstring(portal) + _INT32.pack(max_rows))


SYNC: Final = message(b"S")
TERMINATE: Final = message(b"X")


class MessageBuffer:
    """Splits a peer's byte stream into whole messages: both directions are read in large
    chunks (one read for many DataRows, or for a client's Bind, Execute and Sync), not
    one await per message.

    Messages are sliced from a `bytes` (one copy each; a one-byte slice is a cached object,
    so the type costs nothing): only an incomplete tail is kept, in a bytearray, until the
    next read completes it. Most reads end on a message boundary and never touch it."""

    __slots__ = ("_buffer", "_kind_limits", "_limit", "_smallest")

    def __init__(self, limit: int, kind_limits: dict[int, int] | None = None) -> None:
        self._buffer = bytearray()
        self._limit = limit
        self._kind_limits = kind_limits or {}
        """Tighter bounds by message type (a Query or Parse holds one statement): checked on
        the header, before the body is buffered, so a 60 MB Query the broker would refuse
        anyway never costs 60 MB (four times over) to hold."""
        self._smallest = min([limit, *self._kind_limits.values()])
        """No message this long or shorter needs its type's bound looked up."""

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """Every whole message now available, as (type byte, message with its header)."""
        if not isinstance(data, bytes):  # a bytearray's slices would be bytearrays
            data = bytes(data)
        if self._buffer:
            self._buffer += data
            data = bytes(self._buffer)
            self._buffer.clear()
        found = []
        start, end, smallest = 0, len(data), self._smallest
        while end - start >= 5:
            length = _INT32.unpack_from(data, start + 1)[0]
            if length < 4 or length - 4 > smallest:
                limit = self._kind_limits.get(data[start], self._limit)
                if length < 4 or length - 4 > limit:
                    self._buffer += data[start:]  # as before: the caller ends the stream
                    raise ProtocolViolation(f"a message of {length} bytes (the limit is {limit})")
            if end - start < length + 1:
                break
            found.append((data[start : start + 1], data[start : start + 1 + length]))
            start += length + 1
        if start < end:
            self._buffer += data[start:]
        return found
