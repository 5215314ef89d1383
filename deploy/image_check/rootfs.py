"""The stand-in for the base image: a root directory built from this machine's Debian.

`python:3.11-slim` is Debian with CPython 3.11 in /usr/local. Here the root is a
directory whose /usr is this machine's (bound read-only, Debian bookworm's python3.11
at /usr/bin), whose /usr/local/bin holds only `python` -> python3.11 (as the base
image's does), and whose /etc is a copy (so `useradd` in the Dockerfile changes the copy,
not this machine). Everything the Dockerfile writes lands in the directory, at the paths
the Dockerfile names (/opt/broker, /app, /src), so the venv's scripts carry the same
absolute paths they carry in the image.

The mounts are made inside a private mount namespace (`unshare --mount`, by the caller),
so they vanish with it and this machine's own / is never remounted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

BASE_PYTHON = Path("/usr/bin/python3.11")
"""The interpreter standing in for the base image's /usr/local/bin/python (3.11)."""
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
"""What python:3.11-slim's own ENV sets that a process can notice (its PYTHON_VERSION
and GPG_KEY are for its build only)."""
MERGED_USR = ("bin", "lib", "lib64", "sbin")
EMPTY_DIRS = {"dev": 0o755, "proc": 0o555, "sys": 0o555, "run": 0o755, "var": 0o755, "var/tmp": 0o1777, "home": 0o755}
"""Made in this order, with these modes (a parent before its child; /tmp is made apart)."""
DROPPED_FROM_ETC = ("pip.conf",)
"""This machine's pip mirror settings: the base image has none, and the image must
install from PyPI by hash alone."""


class RootError(RuntimeError):
    """The root cannot be assembled on this machine; the message says what is missing."""


def prepare(root: Path, local_bin: Path) -> None:
    """Lay out `root` (once, before any namespace): top-level directories, the /etc
    copy, merged-/usr links, and `local_bin` with the base image's `python` names."""
    if not BASE_PYTHON.is_file():
        raise RootError(f"{BASE_PYTHON} is missing: apt-get install -y python3.11 python3.11-venv")
    root.mkdir(parents=True)
    root.chmod(0o755)  # a mkdtemp parent is 0700; the image's user must reach its own /
    for name in MERGED_USR:
        host = Path("/") / name
        if not host.is_symlink():
            raise RootError(f"/{name} is not a link into /usr on this machine: the root cannot share /usr")
        (root / name).symlink_to(os.readlink(host))
    for name, mode in EMPTY_DIRS.items():
        (root / name).mkdir()
        (root / name).chmod(mode)
    (root / "usr").mkdir()
    (root / "root").mkdir(mode=0o700)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    (root / "opt").mkdir()
    shutil.copytree("/etc", root / "etc", symlinks=True)
    for name in DROPPED_FROM_ETC:
        (root / "etc" / name).unlink(missing_ok=True)
    local_bin.mkdir(parents=True)
    for name in ("python", "python3", "python3.11"):
        (local_bin / name).symlink_to(BASE_PYTHON)


TMP_TMPFS = "size=16m,mode=1777"
"""The container's own /tmp: deploy/compose.yaml's `tmpfs: ["/tmp:size=16m,..."]`, the
pod's emptyDir (Memory, 16Mi) mounted in the broker's container only."""
SHM_TMPFS = "size=64m,mode=1777,nosuid,nodev,noexec"
"""A container's own /dev/shm (Docker's default: 64 MB), not this machine's."""


def mount(
    root: Path, local_bin: Path, *, read_only: bool, tmp: bool = False, extra: Sequence[tuple[Path, str]] = ()
) -> None:
    """Mount the root's filesystems; call only inside a private mount namespace.

    The root is bound onto itself first so it is a mount of its own, which `read_only`
    then turns read-only, as `docker run --read-only` does to the image's layers. /dev
    and /proc stay writable, as a container's do; /usr and /sys do not. /dev/shm is a
    fresh tmpfs of this namespace's (the host's /dev is bound for its device nodes, but
    its /dev/shm is the machine's shared one: a write there must not land on it). `tmp`
    mounts a private tmpfs at /tmp, as the deployments give the container (`--tmpfs
    /tmp`). `extra` binds a host directory read-only at a path in the root (a volume).
    """
    run_mount("--bind", str(root), str(root))
    bind(Path("/usr"), root / "usr", read_only=True)
    bind(local_bin, root / "usr/local/bin", read_only=True)
    run_mount("--rbind", "/dev", str(root / "dev"))
    run_mount("-t", "tmpfs", "-o", SHM_TMPFS, "shm", str(root / "dev/shm"))  # over the host's, in here only
    if tmp:
        run_mount("-t", "tmpfs", "-o", TMP_TMPFS, "tmp", str(root / "tmp"))
    run_mount("-t", "proc", "proc", str(root / "proc"))
    bind(Path("/sys"), root / "sys", read_only=True)
    for source, target in extra:
        bind(source, root / target.lstrip("/"), read_only=True)
    if read_only:
        run_mount("-o", "remount,bind,ro", str(root))


def bind(source: Path, target: Path, *, read_only: bool) -> None:
    run_mount("--bind", str(source), str(target))
    if read_only:
        run_mount("-o", "remount,bind,ro", str(target))


def run_mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RootError(f"mount {' '.join(args)}: {done.stderr.strip()}")


def in_root(
    root: Path,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str,
    user: tuple[int, int] | None,
) -> list[str]:
    """The command line that runs `argv` in `root` with exactly `env` (nothing of this
    process's environment leaks in), from `cwd`, as `user` (uid, gid) with no
    supplementary groups, no capabilities and no way to gain privileges, or as root."""
    command = ["chroot", str(root)]
    if user is not None:
        uid, gid = user
        command += [
            "/usr/bin/setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--",
        ]  # fmt: skip
    return [*command, "/usr/bin/env", "-i", "-C", cwd, *(f"{k}={v}" for k, v in env.items()), *argv]
