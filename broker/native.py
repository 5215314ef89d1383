"""Which modules are compiled to C (mypyc), and never running a compiled module whose
source has changed since it was built.

Why compile at all: the broker's per-request path is typed Python, and interpreting it
cost the HTTP door about 1.37x the instructions of a bare aiohttp proxy per request
(bench.http_instructions); compiled with mypyc, the same code costs about 1.07x, with
nothing about its behaviour changed (on the clock the gain is smaller, about 9% less CPU
per request: what remains is mostly aiohttp's own work and system calls). These modules
are the per-request path: the HTTP door, the decision core, the meter's local counters,
the audit event and writer, the signals and the metrics. Everything else (policy
building, the CLI, the PostgreSQL door, the console) stays plain Python: it runs rarely,
or its time goes to a library.

Compiling is a build step (`make compile`, run by `make setup`; the container image does
it too): without it the same modules run as Python, just slower. Python imports a
compiled module (`proxy.cpython-311-*.so`) in preference to its source, so an edited
`proxy.py` would silently lose to the stale build. `prefer_fresh_sources` (run when the
`broker` package is imported) compares every listed source with the digest recorded at
build time (`native.stamp`); if any differs, all listed modules load from source, since
compiled modules call each other directly and cannot be mixed with newer sources, and
it says so on standard error. `BROKER_PURE_PYTHON=1` loads the sources whatever the state.

This module is itself never compiled, and imports nothing from the broker: the build
(setup.py) reads the list from it before the package exists.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

COMPILED = (
    "broker.admin.metrics",
    "broker.audit.chain",
    "broker.audit.event",
    "broker.audit.log",
    "broker.core.access",
    "broker.core.clock",
    "broker.core.decision",
    "broker.core.guard",
    "broker.core.window",
    "broker.http.bearer",
    "broker.http.budget",
    "broker.http.classify",
    "broker.http.inspect",
    "broker.http.path",
    "broker.http.pool",
    "broker.http.problem",
    "broker.http.proxy",
    "broker.http.redact",
    "broker.http.request_body",
    "broker.http.upstream",
    "broker.identity.jwt_authenticator",
    "broker.meter.meter",
    "broker.meter.store",
    "broker.policy.record_scan",
    "broker.signals.volume",
    "broker.signals.watch",
)
"""Modules built by `make compile`. Left out on purpose: modules whose objects cross a
process boundary by pickling (the policy snapshot the build server returns: compiled
frozen dataclasses cannot be unpickled) and the exceptions the pool raises (compiled
classes cannot inherit from built-in exception types; they live in upstream_errors.py)."""
GROUP = "broker._native"
"""mypyc's shared library for the compiled modules (`broker/_native__mypyc.*.so`)."""
STAMP = "native.stamp"
"""Beside this file: {module: SHA-256 of its source} as built."""
PURE_ENV = "BROKER_PURE_PYTHON"

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent


def source_of(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def digests(root: Path = ROOT) -> dict[str, str]:
    """SHA-256 (hex) of every listed module's source, as the build records them."""
    return {m: hashlib.sha256(source_of(m, root).read_bytes()).hexdigest() for m in COMPILED}


def write_stamp(root: Path = ROOT) -> Path:
    path = root / "broker" / STAMP
    path.write_text(json.dumps(digests(root), indent=1, sort_keys=True) + "\n")
    return path


def is_built(package_dir: Path = PACKAGE_DIR) -> bool:
    """Whether a compiled build sits beside the sources (its shared library is there)."""
    prefix = GROUP.rpartition(".")[2] + "__mypyc."
    return any(name.startswith(prefix) for name in os.listdir(package_dir))


def changed_sources(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Listed modules whose source differs from what was built (all of them when the
    build recorded nothing, or recorded another list)."""
    try:
        built = json.loads((package_dir / STAMP).read_text())
    except (OSError, ValueError):
        return list(COMPILED)
    if not isinstance(built, dict) or set(built) != set(COMPILED):
        return list(COMPILED)
    root = package_dir.parent
    changed = []
    for module in COMPILED:
        try:
            digest = hashlib.sha256(source_of(module, root).read_bytes()).hexdigest()
        except OSError:
            continue  # an installed build may ship without sources: nothing to be stale against
        if built.get(module) != digest:
            changed.append(module)
    return changed


class SourcesFirst(importlib.abc.MetaPathFinder):
    """Finds the listed modules' `.py` files ahead of their compiled builds."""

    def __init__(self, modules: Sequence[str]) -> None:
        self.modules = frozenset(modules)

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.modules:
            return None
        name = fullname.rpartition(".")[2]
        for entry in path or ():
            source = Path(entry) / f"{name}.py"
            if source.is_file():
                return importlib.util.spec_from_file_location(fullname, source)
        return None


def prefer_fresh_sources() -> str:
    """How the listed modules will load: "compiled", "source" (not built, or asked for)
    or "stale" (built from other sources: loaded from source, and said on stderr)."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        _load_sources()
        return "source"
    if not is_built():
        return "source"
    changed = changed_sources()
    if not changed:
        return "compiled"
    _load_sources()
    shown = ", ".join(changed[:3]) + (f" and {len(changed) - 3} more" if len(changed) > 3 else "")
    print(
        f"broker: the compiled build is older than its sources ({shown} changed); running them as Python "
        "(slower). `make compile` rebuilds it.",
        file=sys.stderr,
    )
    return "stale"


def _load_sources() -> None:
    if not any(isinstance(f, SourcesFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, SourcesFirst(COMPILED))


if __name__ == "__main__":
    print(write_stamp())
