"""The HTTP benchmark's upstream: the demo sample API, alone in its own process.

    python -m bench.upstream --port 8081 [--waybills 36000] [--loop uvloop|asyncio]

Also starts bench/bare_proxy.py on the same event loop as the broker (uvloop), so the
bare baseline and the broker differ by the broker's work and nothing else:

    python -m bench.upstream --bare-proxy --port 9090 --upstream http://127.0.0.1:8081
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import web

from bench.bare_proxy import build as build_bare_proxy
from broker.demo.upstream import build_upstream_app


def use_loop(name: str) -> None:
    """uvloop (what `broker run` uses when installed) or the stock asyncio loop."""
    if name == "uvloop":
        import uvloop  # noqa: PLC0415 - optional

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--waybills", type=int, default=36_000)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--bare-proxy", action="store_true", help="serve bench/bare_proxy.py instead of the API")
    parser.add_argument("--upstream", default="http://127.0.0.1:8081", help="with --bare-proxy: where to forward")
    args = parser.parse_args()
    use_loop(args.loop)
    app = build_bare_proxy(args.upstream.rstrip("/")) if args.bare_proxy else build_upstream_app(args.waybills)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
