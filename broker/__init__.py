"""broker: a policy-as-code access broker for logistics APIs."""

from broker.native import prefer_fresh_sources

__version__ = "0.1.0"

NATIVE = prefer_fresh_sources()
"""How the per-request modules run: "compiled", "source" or "stale" (see broker/native.py)."""
