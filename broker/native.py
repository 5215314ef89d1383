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
`broker` package is imported) compares every module of the package with the digests the
build recorded once it succeeded (`native.stamp`), and looks for compiled modules the
build should not hold (left by an older build); if anything differs, every module loads
from source, since compiled modules call each other directly and hold other modules'
constants, and it says so on standard error. `BROKER_PURE_PYTHON=1` loads the sources
whatever the state.

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
    "broker.http.head",
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
"""Beside this file, written once a build succeeded: the modules it compiled and the SHA-256
of every module of the package as it was then. Every module, not only the compiled ones:
mypyc copies other modules' constants (`Final`) into the compiled code and checks their
annotations, so an edit anywhere in the package can leave the build behind."""
PURE_ENV = "BROKER_PURE_PYTHON"

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent


def source_of(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def _modules(package_dir: Path, suffixes: Sequence[str]) -> dict[str, Path]:
    """Module name -> file, for every file of the package ending in one of `suffixes`."""
    found: dict[str, Path] = {}
    package = package_dir.name
    for folder, subfolders, files in os.walk(package_dir):
        subfolders[:] = [d for d in subfolders if d != "__pycache__"]
        parts = Path(folder).relative_to(package_dir).parts
        for name in files:
            suffix = next((s for s in suffixes if name.endswith(s)), None)
            if suffix is not None and name != "__init__.py":
                found[".".join((package, *parts, name[: -len(suffix)]))] = Path(folder) / name
    return found


def digests(package_dir: Path = PACKAGE_DIR) -> dict[str, str]:
    """SHA-256 (hex) of every module of the package, as a build records them."""
    return {
        m: hashlib.sha256(path.read_bytes()).hexdigest() for m, path in sorted(_modules(package_dir, [".py"]).items())
    }


def stamp_record(package_dir: Path = PACKAGE_DIR) -> str:
    return json.dumps({"compiled": list(COMPILED), "sources": digests(package_dir)}, indent=1) + "\n"


def is_built(package_dir: Path = PACKAGE_DIR) -> bool:
    """Whether any compiled module for this interpreter sits among the sources (the shared
    library or a stray module of an older build alike: either would be imported first)."""
    return bool(_modules(package_dir, importlib.machinery.EXTENSION_SUFFIXES))


def changed_sources(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """What makes the build beside the sources untrustworthy: modules changed, added or
    removed since it was built, and compiled modules it should not hold (all of them when
    the build left no record, or a record for another list)."""
    try:
        built = json.loads((package_dir / STAMP).read_text())
        recorded, compiled = dict(built["sources"]), list(built["compiled"])
    except (OSError, ValueError, TypeError, KeyError):
        return list(COMPILED)
    if compiled != list(COMPILED):
        return list(COMPILED)
    group = f"{package_dir.name}.{GROUP.rpartition('.')[2]}__mypyc"
    extensions = _modules(package_dir, importlib.machinery.EXTENSION_SUFFIXES)
    changed = sorted(m for m in extensions if m not in COMPILED and m != group)
    current = digests(package_dir)
    if not current:  # an installed build may ship without sources: nothing to be stale against
        return changed
    changed += sorted(m for m in recorded.keys() | current.keys() if recorded.get(m) != current.get(m))
    return changed


class SourcesFirst(importlib.abc.MetaPathFinder):
    """Finds the package's `.py` files ahead of any compiled build of them."""

    def __init__(self, package: str) -> None:
        self.prefix = package + "."

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(self.prefix):
            return None
        name = fullname.rpartition(".")[2]
        for entry in path or ():
            source = Path(entry) / f"{name}.py"
            if source.is_file():
                return importlib.util.spec_from_file_location(fullname, source)
        return None  # a package, or not ours: the usual finders


def prefer_fresh_sources() -> str:
    """How the package's modules will load: "compiled", "source" (not built, or asked
    for) or "stale" (built from other sources: all loaded from source, and said on stderr)."""
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
        sys.meta_path.insert(0, SourcesFirst(PACKAGE_DIR.name))
