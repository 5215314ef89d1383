"""Replaying the Dockerfile's stages into the root, as `docker build` would run them.

Both stages share one root: the final stage's `COPY --from=build /opt/broker
/opt/broker` then finds the venv already at the path it was built at (which is why
Docker copies it to the same path: the venv's scripts name it). A RUN line runs as
Docker runs it, `/bin/sh -c` in the root with the stage's ENV and WORKDIR and nothing
of this machine's environment. Runs inside the caller's private mount namespace.
"""

from __future__ import annotations

import posixpath
import re
import subprocess
from pathlib import Path
from typing import IO

from deploy.image_check.context import copy_in, ignore_patterns
from deploy.image_check.dockerfile import Dockerfile, DockerfileError, Instruction, env_assignments
from deploy.image_check.rootfs import BASE_ENV, in_root

BUILD_ENV = {"HOME": "/root", "HOSTNAME": "image-check-build"}


class BuildError(RuntimeError):
    """A step failed; the message names the Dockerfile line and the log to read."""


def replay(dockerfile: Dockerfile, context: Path, root: Path, log: IO[str]) -> list[str]:
    """Run every stage's COPY, WORKDIR and RUN steps into `root`; returns the steps as
    one line each, for the report."""
    done: list[str] = []
    patterns = ignore_patterns(context)
    for stage in dockerfile.stages:
        env = {**BASE_ENV, **BUILD_ENV}
        workdir = "/"
        user: tuple[int, int] | None = None
        for instruction in stage.instructions:
            if instruction.keyword == "ENV":
                env.update(env_assignments(instruction, env))
            elif instruction.keyword == "WORKDIR":
                workdir = posixpath.join(workdir, instruction.text)
                (root / workdir.lstrip("/")).mkdir(parents=True, exist_ok=True)
            elif instruction.keyword == "USER":
                uid, _, gid = instruction.text.partition(":")
                user = (int(uid), int(gid or uid))
            elif instruction.keyword == "COPY":
                _copy(instruction, context, root, workdir, patterns)
            elif instruction.keyword == "RUN":
                _run(instruction, root, env, workdir, user, log)
            else:
                continue
            done.append(f"{stage.name or 'final'}: {instruction.keyword} {instruction.text}")
    return done


def _copy(instruction: Instruction, context: Path, root: Path, workdir: str, patterns: list[re.Pattern[str]]) -> None:
    *sources, target = instruction.words()
    target_path = posixpath.join(workdir, target)
    origin = instruction.flags().get("from")
    if origin is not None:
        if sources != [target] or not target.startswith("/"):
            raise DockerfileError(
                f"line {instruction.line}: COPY --from is replayed only to the same absolute path it copies"
            )
        if not (root / target.lstrip("/")).exists():
            raise BuildError(f"line {instruction.line}: {target} was not built by stage {origin!r}")
        return
    into_directory = target.endswith("/") or len(sources) > 1
    for source in sources:
        name = posixpath.basename(source.rstrip("/"))
        destination = (
            posixpath.join(target_path, name) if into_directory and (context / source).is_file() else target_path
        )
        copy_in(context, source, root / destination.lstrip("/"), patterns)


def _run(
    instruction: Instruction, root: Path, env: dict[str, str], workdir: str, user: tuple[int, int] | None, log: IO[str]
) -> None:
    if instruction.text.startswith("["):
        raise DockerfileError(f"line {instruction.line}: RUN in exec form is not replayed; use the shell form")
    log.write(f"\n### line {instruction.line}: RUN {instruction.text}\n")
    log.flush()
    command = in_root(root, ["/bin/sh", "-c", instruction.text], env=env, cwd=workdir, user=user)
    status = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if status:
        raise BuildError(f"Dockerfile line {instruction.line}: RUN exited with status {status} (see {log.name})")
