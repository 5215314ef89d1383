"""The build's one hook beyond pyproject.toml: with BROKER_COMPILE=1, the per-request
modules listed in broker/native.py are compiled with mypyc (`make compile`, the
container image). Without it the package is plain Python."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

from setuptools import setup

ext_modules = []
if os.environ.get("BROKER_COMPILE") == "1":
    from mypyc.build import mypycify

    root = Path(__file__).resolve().parent
    native = runpy.run_path(str(root / "broker" / "native.py"))  # the list, without importing the package
    native["write_stamp"](root)
    sources = [str(native["source_of"](module, root).relative_to(root)) for module in native["COMPILED"]]
    ext_modules = mypycify(sources, opt_level="3", group_name=native["GROUP"])

setup(ext_modules=ext_modules)
