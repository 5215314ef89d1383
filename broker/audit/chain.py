"""The hash chain that makes the audit log tamper-evident.

Every line the broker writes carries `seq` (its place in the chain, from 1) and `prev`
(the SHA-256, hex, of the previous line's bytes as written, newline excluded; 64 zeros
for the first line of a chain). Changing, deleting, inserting or reordering a line
therefore breaks the link of the line after it. A hash chain alone proves nothing
against someone who rewrites the whole tail, so the writer also appends signed
checkpoints (`checkpoint.py`): a signature over the head of the chain that only the
broker's key can make.

Hashing the bytes as written (not a re-serialisation of the parsed JSON) keeps the
verifier independent of any JSON library's formatting: the file is the evidence.

The chain lives in the writer thread: lines are linked in the order they are written,
so the chain's order is the file's order, and the event loop pays nothing for it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from hashlib import sha256 as _sha256
from pathlib import Path

import orjson

GENESIS = "0" * 64
"""`prev` of a chain's first line."""
TAIL_BYTES = 1 << 20
"""How much of a file's end is read to find the line a restarted broker continues from."""


def line_hash(line: bytes) -> str:
    """The hash the next line's `prev` names: over the line's bytes without its newline."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


@dataclass(slots=True)
class Chain:
    seq: int = 0
    """The seq of the last line written (0: nothing yet)."""
    head: str = GENESIS
    """The hash of the last line written."""
    clean: bool = True
    """False when the chain was picked up from a run that did not end with its final
    checkpoint (a crash, or a file cut or edited since its last checkpoint)."""

    def link(self, line: bytes) -> bytes:
        """`line` (one JSON object and a newline, as `render` makes it) with `seq` and
        `prev` as its last fields; the chain moves on to it."""
        return self.link_all([line])

    def link_all(self, lines: list[bytes]) -> bytes:
        """`link` for a whole batch, as the bytes to write: one slice and one format per
        line, and the hash over the line as formatted (this runs in the writer thread,
        which shares the GIL with the event loop)."""
        linked: list[bytes] = []
        seq, head = self.seq, self.head.encode()
        for line in lines:
            seq += 1
            body = b'%s,"seq":%d,"prev":"%s"}' % (line[:-2] if line.endswith(b"}\n") else line.rstrip()[:-1], seq, head)
            head = _sha256(body).hexdigest().encode()
            linked.append(body)
        linked.append(b"")
        self.seq, self.head = seq, head.decode()
        return b"\n".join(linked)


def resume(path: Path) -> tuple[Chain, bool]:
    """The chain a file ends with, so a restarted broker continues it rather than starting
    a second chain in the same file; and whether the file ends in a torn line (a crash
    mid-write), which the caller closes with a newline so the next line starts clean.
    A file with no chained line (new, empty, or written before chaining) starts a chain.
    `Chain.clean` says whether the last line is its run's final checkpoint."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return Chain(), False
    if size == 0:
        return Chain(), False
    with path.open("rb") as stream:
        stream.seek(max(0, size - TAIL_BYTES), os.SEEK_SET)
        tail = stream.read()
    torn = not tail.endswith(b"\n")
    for line in reversed(tail.splitlines()):
        try:
            event = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a torn or foreign line: the one before it may be the head
        if isinstance(event, dict) and isinstance(event.get("seq"), int):
            clean = event.get("event") == "audit.checkpoint" and event.get("kind") == "final" and not torn
            return Chain(event["seq"], line_hash(line), clean), torn
    return Chain(), torn
