"""The build's one hook beyond pyproject.toml: with BROKER_COMPILE=1, the per-request
modules listed in broker/native.py are compiled with mypyc (`make compile`, the
container image). Without it the package is plain Python.

The record of what was built (`broker/native.stamp`) is written only once the build has
succeeded, from the sources as they were when it began; the old record and any old
compiled module are removed first, so a failed build leaves plain Python, never an old
build that looks current."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
ext_modules = []
cmdclass = {}
if os.environ.get("BROKER_COMPILE") == "1":
    from mypyc.build import mypycify

    native = runpy.run_path(str(ROOT / "broker" / "native.py"))  # the list, without importing the package
    package = ROOT / "broker"
    record = native["stamp_record"](package)  # the sources this build compiles
    (package / native["STAMP"]).unlink(missing_ok=True)
    for old in package.rglob("*.so"):
        old.unlink()
    sources = [str(native["source_of"](module, ROOT).relative_to(ROOT)) for module in native["COMPILED"]]
    # mypyc builds with -Werror. Keep it so: gcc's -Wmaybe-uninitialized is how a mypyc
    # miscompile shows (one that crashed the broker failed the build this way first;
    # broker/core/guard.py, decide_login, says which).
    ext_modules = mypycify(sources, opt_level="3", group_name=native["GROUP"])

    class BuildThenStamp(build_ext):
        """build_ext, then the record of what it built, beside what it built."""

        def run(self) -> None:
            super().run()
            where = package if self.inplace else Path(self.build_lib) / "broker"
            (where / native["STAMP"]).write_text(record)

    cmdclass = {"build_ext": BuildThenStamp}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
