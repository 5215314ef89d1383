"""The compiled per-request modules (broker/native.py): CI runs what the image ships, and an
edited source never loses to a stale build."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import broker
from broker import native
from broker.core import guard
from broker.http import proxy

REPO = Path(__file__).resolve().parents[2]
PROBE = "import broker, broker.http.proxy as p; print(broker.NATIVE, Path(p.__file__).suffix)"


def run_probe(cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """A fresh interpreter importing the broker package found in `cwd`."""
    clean = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    return subprocess.run(
        [sys.executable, "-c", f"from pathlib import Path; {PROBE}"],
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(cwd), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def built_copy(tmp_path: Path) -> Path:
    """This checkout's broker package, compiled build included, copied under tmp_path."""
    if not native.is_built():
        pytest.fail("the broker is not compiled here: run `make compile` (make test does)")
    shutil.copytree(REPO / "broker", tmp_path / "broker", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_make_test_runs_the_compiled_build() -> None:
    # `make test` sets BROKER_EXPECT_NATIVE to its NATIVE (1 unless NATIVE=0 was asked for)
    expected = os.environ.get("BROKER_EXPECT_NATIVE")
    if expected is None:
        pytest.skip("run through `make test`, which says whether the build is compiled")
    if expected == "0":
        assert broker.NATIVE == "source"
        return
    assert broker.NATIVE == "compiled"
    assert Path(guard.__file__).suffix == ".so"
    assert Path(proxy.__file__).suffix == ".so"


def test_the_listed_modules_exist_and_the_record_covers_every_module() -> None:
    for module in native.COMPILED:
        assert native.source_of(module).is_file(), module
    recorded = native.digests()
    assert set(native.COMPILED) < set(recorded)
    assert "broker.identity.keys" in recorded  # not compiled, but its constants are copied into what is


def test_a_fresh_build_loads_compiled(tmp_path: Path) -> None:
    root = built_copy(tmp_path)
    result = run_probe(root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["compiled", ".so"]
    assert result.stderr == ""


def test_an_edited_source_runs_as_python_and_says_so(tmp_path: Path) -> None:
    root = built_copy(tmp_path)
    source = root / "broker" / "http" / "proxy.py"
    source.write_text(source.read_text() + "\n# edited after the build\n")
    result = run_probe(root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["stale", ".py"]
    assert "compiled build is older than its sources (broker.http.proxy changed)" in result.stderr
    assert "make compile" in result.stderr


def test_a_build_without_its_stamp_is_not_trusted(tmp_path: Path) -> None:
    root = built_copy(tmp_path)
    (root / "broker" / native.STAMP).unlink()
    result = run_probe(root)
    assert result.stdout.split() == ["stale", ".py"]


def test_a_stamp_for_another_module_list_is_not_trusted(tmp_path: Path) -> None:
    root = built_copy(tmp_path)
    stamp = root / "broker" / native.STAMP
    record = json.loads(stamp.read_text())
    record["compiled"] = record["compiled"][1:]
    stamp.write_text(json.dumps(record))
    assert native.changed_sources(root / "broker") == list(native.COMPILED)


def test_an_edit_to_a_module_that_is_not_compiled_is_noticed_too(tmp_path: Path) -> None:
    """Compiled code holds other modules' constants (MIN_SECRET_BYTES from keys.py, say)."""
    root = built_copy(tmp_path)
    keys = root / "broker" / "identity" / "keys.py"
    keys.write_text(keys.read_text() + "\n# edited after the build\n")
    result = run_probe(root)
    assert result.stdout.split() == ["stale", ".py"]
    assert "broker.identity.keys changed" in result.stderr


def test_a_compiled_module_the_build_no_longer_lists_is_not_loaded(tmp_path: Path) -> None:
    """An extension left behind by an older build (a module since dropped from the list)
    would be preferred to its source: every module then loads as Python."""
    root = built_copy(tmp_path)
    [suffix] = [s for s in native.importlib.machinery.EXTENSION_SUFFIXES if s.startswith(".cpython")]
    shutil.copy(root / "broker" / "http" / f"proxy{suffix}", root / "broker" / "http" / f"assertion{suffix}")
    result = run_probe(root)
    assert result.stdout.split() == ["stale", ".py"]
    assert "broker.http.assertion changed" in result.stderr
    probe = "import broker.http.assertion as a; print(a.__file__)"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert loaded.stdout.strip().endswith("assertion.py"), loaded.stdout + loaded.stderr


def test_a_stray_compiled_module_without_its_build_is_not_loaded(tmp_path: Path) -> None:
    """What an interrupted clean leaves (a module's extension without the shared library)
    would fail to import; every module loads as Python instead."""
    root = built_copy(tmp_path)
    for library in (root / "broker").glob("_native__mypyc*"):
        library.unlink()
    (root / "broker" / native.STAMP).unlink()
    result = run_probe(root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["stale", ".py"]


def test_the_package_imports_from_a_zip(tmp_path: Path) -> None:
    archive = tmp_path / "broker.zip"
    with zipfile.ZipFile(archive, "w") as packed:
        for source in (REPO / "broker").rglob("*.py"):
            packed.write(source, source.relative_to(REPO))
    result = subprocess.run(
        [sys.executable, "-c", "import broker; print(broker.NATIVE)"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(archive)},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "source"


def test_pure_python_can_be_asked_for(tmp_path: Path) -> None:
    root = built_copy(tmp_path)
    result = run_probe(root, BROKER_PURE_PYTHON="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["source", ".py"]
    assert result.stderr == ""


def test_without_a_build_the_sources_load_quietly(tmp_path: Path) -> None:
    shutil.copytree(
        REPO / "broker", tmp_path / "broker", ignore=shutil.ignore_patterns("__pycache__", "*.so", native.STAMP)
    )
    result = run_probe(tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["source", ".py"]
    assert result.stderr == ""


def test_compiled_value_classes_refuse_assignment(tmp_path: Path) -> None:
    # Access, QuotaState and the store's asks are plain classes with Final attributes
    # (frozen dataclasses cost ~1 µs each to make): compiled, Final is enforced
    probe = (
        "import broker\n"
        "from broker.core.access import Access\n"
        "from broker.core.decision import QuotaState\n"
        "from broker.meter.store import QuotaAsk\n"
        "print(broker.NATIVE)\n"
        "for thing, name in ((Access('t', 'c', 'GET /'), 'branch'), (QuotaState('w', 1, 0, 60, 0.0), 'used'),\n"
        "                    (QuotaAsk('k', 1, 2, 3.0), 'limit')):\n"
        "    try:\n"
        "        setattr(thing, name, 'changed')\n"
        "    except AttributeError:\n"
        "        print('refused', name)\n"
    )
    clean = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    cwd = built_copy(tmp_path)
    found = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=cwd,
        env={**clean, "PYTHONPATH": str(cwd)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert found.stdout.split("\n") == ["compiled", "refused branch", "refused used", "refused limit", ""], found
