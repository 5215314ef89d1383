"""The limit for a Python proxy: aiohttp pass-through with a shared pool, no checks.

Kept tiny on purpose: it is the baseline the broker is measured against.
Usage: python -m bench.bare_proxy --port 9090 --upstream http://127.0.0.1:8081
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web
from yarl import URL

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}


def build(upstream: str) -> web.Application:
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def start(app: web.Application) -> None:
        app[session_key] = aiohttp.ClientSession(auto_decompress=False, connector=aiohttp.TCPConnector(limit=200))

    async def stop(app: web.Application) -> None:
        await app[session_key].close()

    async def handle(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        url = URL(upstream + request.raw_path, encoded=True)
        data = request.content if request.body_exists else None
        async with app[session_key].request(request.method, url, headers=headers, data=data) as answer:
            body = await answer.read()
            out = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP | {"content-length"}}
            return web.Response(status=answer.status, body=body, headers=out)

    app = web.Application()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--upstream", default="http://127.0.0.1:8081")
    args = parser.parse_args()
    web.run_app(build(args.upstream.rstrip("/")), host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
