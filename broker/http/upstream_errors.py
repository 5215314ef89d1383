"""How an exchange with the upstream fails: the exceptions the pool raises.

Apart from `pool.py` because that module is compiled (mypyc, see `broker/native.py`) and
compiled classes cannot inherit from the built-in exception types: these stay Python
classes, which compiled code raises and catches like any other."""

from __future__ import annotations

__all__ = ["MalformedAnswer", "UpstreamError", "UpstreamTimeout"]


class UpstreamError(ConnectionError):
    """The upstream could not be reached or broke the exchange; the message says how."""


class MalformedAnswer(UpstreamError):
    """The upstream's answer is not valid HTTP/1.1."""


class UpstreamTimeout(TimeoutError):
    """The upstream did not connect, answer or send more of its answer in time."""
