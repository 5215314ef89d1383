"""Request bodies the broker can frame itself, read whole before anything goes upstream.

The broker decides on the bytes it holds and sends exactly those, with a Content-Length
it computed. A body it would have to decode (Content-Encoding) or whose transfer coding
it does not produce is refused: aiohttp would hand the broker the decoded bytes while the
client's framing said something else, and the difference is where a second request
hides. Reading the whole body before a connection to the upstream is taken also means a
client trickling its body holds nothing but its own socket, and only for a bounded time.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from broker.core.access import Refusal
from broker.core.reason import Reason
from broker.http.classify import form_method_override


def unframeable(request: web.Request, limit: int) -> Refusal | None:
    """Why this request's body cannot be checked and re-framed, or None when it can."""
    headers = request.headers
    if "Content-Encoding" not in headers and "Transfer-Encoding" not in headers:  # nearly every request
        length = request.content_length
        if length is None or length <= limit:
            return None
    encodings = [v.strip().lower() for v in request.headers.getall("Content-Encoding", ()) for v in v.split(",")]
    if any(e not in ("", "identity") for e in encodings):
        return Refusal(
            Reason.REQUEST_ENCODED_BODY,
            f"The request body is sent with Content-Encoding {', '.join(encodings)}; "
            "the broker accepts only uncompressed bodies.",
        )
    codings = [v.strip().lower() for v in request.headers.getall("Transfer-Encoding", ()) for v in v.split(",")]
    if codings and codings != ["chunked"]:
        return Refusal(
            Reason.REQUEST_ENCODED_BODY,
            f"The request body is sent with Transfer-Encoding {', '.join(codings)}; only chunked is accepted.",
        )
    if request.content_length is not None and request.content_length > limit:
        return Refusal(
            Reason.REQUEST_TOO_LARGE, f"The request body is {request.content_length} bytes; the limit is {limit}."
        )
    return None


async def read_body(request: web.Request, limit: int, within: float) -> bytes | Refusal:
    """The whole body (aiohttp enforces `limit` as the app's client_max_size), or why not."""
    refusal = unframeable(request, limit)
    if refusal is not None:
        return refusal
    try:
        async with asyncio.timeout(within):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return Refusal(Reason.REQUEST_TOO_LARGE, f"The request body is over {limit} bytes.")
    except TimeoutError:
        return Refusal(Reason.REQUEST_SLOW_BODY, f"The request body did not arrive within {within:g} seconds.")
    return form_method_override(request.headers.get("Content-Type", ""), body) or body
