"""An upstream we own at the socket level: it records every byte it receives and every
request it parses (so a smuggled second request shows up), and answers each path with a
canned answer the test sets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httptools
import orjson
import pytest


@dataclass
class Received:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class Canned:
    status: int = 200
    body: bytes = b"{}"
    content_type: str = "application/json"
    extra: list[tuple[str, str]] = field(default_factory=list)
    delay: float = 0.0
    """Seconds the answer waits before it is written (a slow service)."""


class _Parsed:
    """httptools callbacks for one connection."""

    def __init__(self, upstream: RawUpstream, writer: asyncio.StreamWriter) -> None:
        self.upstream, self.writer = upstream, writer
        self.parser = httptools.HttpRequestParser(self)
        self._reset()

    def _reset(self) -> None:
        self.target, self.headers, self.body = "", [], b""

    def on_url(self, url: bytes) -> None:
        self.target += url.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        self.upstream.requests.append(Received(method, self.target, self.headers, self.body))
        path = self.target.split("?", 1)[0]
        answer = self.upstream.answer_for(path)
        delay = self.upstream.answers[path].delay if path in self.upstream.answers else 0.0
        if delay:
            asyncio.get_running_loop().call_later(delay, self.writer.write, answer)
        else:
            self.writer.write(answer)
        self._reset()


class RawUpstream:
    def __init__(self) -> None:
        self.raw = bytearray()
        self.requests: list[Received] = []
        self.answers: dict[str, Canned] = {}
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def answer(self, path: str, document: object, status: int = 200, **more: object) -> None:
        self.answers[path] = Canned(status, orjson.dumps(document), **more)  # type: ignore[arg-type]

    def answer_for(self, path: str) -> bytes:
        canned = self.answers.get(path, Canned(404, b'{"error": "no such path"}'))
        head = [f"HTTP/1.1 {canned.status} X", f"Content-Type: {canned.content_type}"]
        head += [f"{k}: {v}" for k, v in canned.extra]
        head.append(f"Content-Length: {len(canned.body)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + canned.body

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parsed = _Parsed(self, writer)
        self._writers.add(writer)
        try:
            while data := await reader.read(65536):
                self.raw += data
                parsed.parser.feed_data(data)
                await writer.drain()
        except (httptools.HttpParserError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()


@pytest.fixture
async def raw_upstream() -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream()
    await upstream.start()
    yield upstream
    await upstream.close()
