"""What a container of the image starts with: the final stage's ENV, WORKDIR, USER,
ENTRYPOINT and HEALTHCHECK, read from the Dockerfile (never restated here)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from deploy.image_check.dockerfile import Dockerfile, DockerfileError, Stage, env_assignments
from deploy.image_check.rootfs import BASE_ENV


@dataclass(frozen=True, slots=True)
class ImageSpec:
    env: dict[str, str]
    workdir: str
    user: tuple[int, int]
    entrypoint: list[str]
    healthcheck: list[str]
    exposed: list[int]

    def container_env(self) -> dict[str, str]:
        """The environment a container's process sees: the image's ENV plus what Docker
        adds (HOME from the user's passwd entry: useradd gave uid 10001 the WORKDIR)."""
        return {**self.env, "HOME": self.workdir, "HOSTNAME": "image-check"}


def stage_env(stage: Stage) -> dict[str, str]:
    env = dict(BASE_ENV)
    for instruction in stage.all("ENV"):
        env.update(env_assignments(instruction, env))
    return env


def workdir_of(stage: Stage) -> str:
    workdir = "/"
    for instruction in stage.all("WORKDIR"):
        workdir = posixpath.join(workdir, instruction.text)
    return workdir


def image_spec(dockerfile: Dockerfile) -> ImageSpec:
    final = dockerfile.final
    user = final.last("USER")
    entrypoint = final.last("ENTRYPOINT")
    healthcheck = final.last("HEALTHCHECK")
    if user is None or entrypoint is None or healthcheck is None:
        raise DockerfileError("the final stage needs USER, ENTRYPOINT and HEALTHCHECK")
    uid, _, gid = user.text.partition(":")
    if not (uid.isdigit() and (gid or uid).isdigit()):
        raise DockerfileError(f"line {user.line}: USER {user.text!r} must be numeric uid[:gid]")
    exposed = [int(word.split("/")[0]) for i in final.all("EXPOSE") for word in i.words()]
    return ImageSpec(
        env=stage_env(final),
        workdir=workdir_of(final),
        user=(int(uid), int(gid or uid)),
        entrypoint=entrypoint.exec_form(),
        healthcheck=healthcheck.exec_form(),
        exposed=exposed,
    )
