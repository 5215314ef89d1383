"""Write attempts in an `strace -f` log: what the image's process tried to change on disk.

A read-only root turns a write into EROFS, which a program may swallow (a cache it
skips, a fallback it takes): the failure would not show, and the same image would then
write to a writable root unnoticed. So every call that would change the filesystem is
listed, whether it failed or not, from the moment the entrypoint is executed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

TRACED = (
    "open,openat,openat2,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,rmdir,"
    "link,linkat,symlink,symlinkat,truncate,chmod,fchmodat,chown,lchown,fchownat,mknod,mknodat,bind,execve"
)
"""The calls to trace (`strace -e trace=`): every way to make or change a name, plus
bind (a Unix socket is a file) and execve (to find where the entrypoint starts)."""
ALWAYS_WRITES = frozenset(TRACED.split(",")) - {"open", "openat", "openat2", "bind", "execve"}
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND", "O_TMPFILE")
NOT_THE_ROOT = ("/dev/null", "/dev/tty", "/dev/pts/", "/proc/")
"""Devices and kernel interfaces: not files on the root filesystem."""
CONTAINER_TMPFS = ("/tmp/",)  # noqa: S108 - a path to recognise, not one to use
"""The container's private tmpfs (`--tmpfs /tmp`, compose `tmpfs`, the pod's emptyDir in
the broker's container only): the one place a write is allowed. /dev/shm is a tmpfs too,
but every container of a pod shares it: a write there counts as one on the root."""

_CALL = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(.*)$")
_NAMED = re.compile(r'(?:(?:\d+|AT_FDCWD)<(?P<dir>[^>]*)>, )?"(?P<name>(?:[^"\\]|\\.)*)"')
_UNFINISHED = " <unfinished ...>"
_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>(.*)$")


@dataclass(frozen=True, slots=True)
class Call:
    pid: int
    name: str
    args: str
    result: str

    @property
    def failed(self) -> bool:
        return self.result.startswith("-1")

    @property
    def paths(self) -> list[str]:
        """The file names the call acts on, a name relative to a directory descriptor
        joined to that directory's path (strace -y prints it: `3</tmp/pymp-x>`, and
        the working directory as `AT_FDCWD</app>`)."""
        found = []
        for match in _NAMED.finditer(self.args):
            name = match["name"]
            directory = match["dir"]
            found.append(f"{directory.rstrip('/')}/{name}" if directory and not name.startswith("/") else name)
        return found[:2] if self.name.startswith(("rename", "link", "symlink")) else found[:1]


@dataclass(frozen=True, slots=True)
class WriteAttempt:
    call: Call

    @property
    def where(self) -> str:
        """Where the write lands: "tmpfs" (the container's private /tmp) or "root" (the
        image, or anywhere else: /dev/shm included)."""
        paths = self.call.paths
        return "tmpfs" if paths and paths[0].startswith(CONTAINER_TMPFS) else "root"

    def describe(self) -> str:
        outcome = "failed: " + self.call.result.split(" ", 1)[-1] if self.call.failed else "succeeded"
        shown = self.call.args if len(self.call.args) < 160 else self.call.args[:157] + "..."
        return f"pid {self.call.pid} {self.call.name}({shown}) {outcome}"


def calls(lines: Iterable[str]) -> Iterator[Call]:
    """Each completed call, an interrupted one joined with its resumption."""
    pending: dict[str, str] = {}
    for raw in lines:
        line = raw.rstrip("\n")
        if line.endswith(_UNFINISHED):
            pid = line.split(None, 1)[0]
            pending[pid] = line[: -len(_UNFINISHED)]
            continue
        resumed = _RESUMED.match(line)
        if resumed:
            start = pending.pop(resumed.group(1), None)
            if start is None:
                continue
            line = start + resumed.group(3)
        match = _CALL.match(line)
        if match:
            yield Call(int(match.group(1)), match.group(2), match.group(3), match.group(4))


def is_write(call: Call) -> bool:
    if call.name in ALWAYS_WRITES:
        return True
    if call.name == "bind":
        return "AF_UNIX" in call.args and "sun_path=@" not in call.args and bool(call.paths)  # @: abstract, no file
    if call.name in ("open", "openat", "openat2"):
        return any(flag in call.args for flag in WRITE_FLAGS)
    return False


def write_attempts(lines: Iterable[str], entrypoint: str, root: str = "") -> tuple[bool, list[WriteAttempt]]:
    """(whether the entrypoint was executed, the write attempts from then on, on files;
    devices and /proc left out). `entrypoint` is the executable's base name; `root`, the
    directory the process was chrooted to, is taken off the descriptor paths strace -y
    prints (strace sees them from outside the root; the process's own names are inside)."""
    started = False
    found: list[WriteAttempt] = []
    inside = (line.replace(f"<{root.rstrip('/')}/", "</") for line in lines) if root else lines
    for call in calls(inside):
        if not started:
            started = call.name == "execve" and not call.failed and _execs(call, entrypoint)
            continue
        if not is_write(call):
            continue
        paths = call.paths
        if paths and all(p.startswith(NOT_THE_ROOT) for p in paths):
            continue
        found.append(WriteAttempt(call))
    return started, found


def _execs(call: Call, entrypoint: str) -> bool:
    paths = call.paths
    return bool(paths) and paths[0].rsplit("/", 1)[-1] == entrypoint
