"""`python -m deploy.image_check` (`make image-check`): build the image's root by
replaying the Dockerfile, run it as a container would, and print what held.

Needs root (for mount namespaces and chroot), util-linux, iproute2 and strace, and
PyPI; not a Docker engine. Exits 1 when a promise is broken, 2 when the check itself
cannot run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from deploy.image_check import report, stage
from deploy.image_check.container import Layout
from deploy.image_check.dockerfile import Dockerfile, DockerfileError, load
from deploy.image_check.installed import venv_checks
from deploy.image_check.rootfs import RootError, prepare
from deploy.image_check.spec import image_spec
from deploy.image_check.static import digest_check, pip_line_check, pull_check

REPO = Path(__file__).resolve().parents[2]
TOOLS = {"unshare": "util-linux", "chroot": "coreutils", "setpriv": "util-linux", "mount": "mount",
         "ip": "iproute2", "strace": "strace"}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.image_check", description=__doc__)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (root, logs, strace output)")
    args = parser.parse_args()
    problem = _preflight()
    if problem:
        print(f"image check: {problem}", file=sys.stderr)
        return 2
    try:
        dockerfile = load(REPO / "Dockerfile")
        image_spec(dockerfile)
    except DockerfileError as exc:
        print(f"image check: {exc}", file=sys.stderr)
        return 2
    checks = [digest_check(dockerfile, REPO), pull_check(), pip_line_check(dockerfile)]
    workdir = Path(tempfile.mkdtemp(prefix="broker-image-check-"))
    try:
        checks += _build_and_run(dockerfile, Layout.at(workdir))
    except (RootError, OSError) as exc:
        print(f"image check: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.keep:
            print(f"image check: work directory kept: {workdir}")
        else:
            _remove(workdir)
    print(report.render(checks))
    return 1 if any(c.outcome == "BROKEN" for c in checks) else 0


def _build_and_run(dockerfile: Dockerfile, layout: Layout) -> list[report.Check]:
    prepare(layout.root, layout.local_bin)
    print(f"image check: replaying the Dockerfile into {layout.root} (pip output: {layout.workdir / 'build.log'})")
    if _in_namespace("build", layout, net=False):
        log = (layout.workdir / "build.log").read_text(errors="replace").strip().splitlines()[-15:]
        return [report.Check("the image builds", "the Dockerfile's steps replayed", "BROKEN", log)]
    steps = json.loads((layout.workdir / stage.BUILD_RESULT).read_text())
    how = "the Dockerfile's COPY and RUN steps replayed, in order"
    checks = [report.Check("the image builds", how, "held", [f"{len(steps)} steps; RUN lines run by /bin/sh -c"])]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    checks += venv_checks(layout.root / _venv_path(dockerfile).lstrip("/"), REPO / "requirements.lock", project)
    print("image check: running the entrypoint in the read-only root as the image's user (under strace)")
    if _in_namespace("run", layout, net=True):
        return [
            *checks,
            report.Check("the container runs", "the run stage", "BROKEN", ["the run stage failed: see above"]),
        ]
    return checks + report.load(layout.workdir / stage.RUN_RESULT)


def _in_namespace(name: str, layout: Layout, *, net: bool) -> int:
    """Run a stage in a private mount (and network) namespace; its exit status."""
    command = ["unshare", "--mount", "--propagation", "private", *(["--net"] if net else [])]
    command += [sys.executable, "-m", "deploy.image_check.stage", name, str(layout.workdir), str(REPO)]
    return subprocess.run(command, cwd=REPO, check=False).returncode


def _venv_path(dockerfile: Dockerfile) -> str:
    """Where the final stage takes the venv from the build stage (`COPY --from`)."""
    for instruction in dockerfile.final.all("COPY"):
        if "from" in instruction.flags():
            return instruction.words()[-1]
    raise DockerfileError("the final stage copies no venv from the build stage")


def _preflight() -> str:
    import os  # noqa: PLC0415 - only here

    if os.geteuid() != 0:
        return "needs root (mount namespaces, chroot, setpriv); run it in the development container as root"
    missing = [f"{tool} ({package})" for tool, package in TOOLS.items() if shutil.which(tool) is None]
    return (
        f"missing tools: {', '.join(missing)}: apt-get install -y {' '.join(TOOLS[m.split()[0]] for m in missing)}"
        if missing
        else ""
    )


def _remove(workdir: Path) -> None:
    """Delete the work directory, unless something is still mounted under it (the
    namespaces should have taken every mount with them; never delete through a mount)."""
    mounts = Path("/proc/self/mounts").read_text().split()
    if any(m.startswith(str(workdir)) for m in mounts):
        print(f"image check: {workdir} still has mounts; left in place", file=sys.stderr)
        return
    shutil.rmtree(workdir)


if __name__ == "__main__":
    sys.exit(main())
