"""The image check's pure parts: it reads the real Dockerfile the way it will replay it
(so a Dockerfile change it cannot replay fails here, in `make test`, and not only in
`make image-check`), and it finds write attempts in strace output."""

from __future__ import annotations

from pathlib import Path

import pytest

from deploy.image_check import strace_log
from deploy.image_check.context import ignore_patterns, ignored
from deploy.image_check.dockerfile import DockerfileError, load, parse
from deploy.image_check.installed import locked_pins
from deploy.image_check.spec import image_spec
from deploy.image_check.static import digest_check, pip_line_check

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_the_real_dockerfile_is_one_the_check_can_replay() -> None:
    dockerfile = load(REPO / "Dockerfile")
    assert [s.name for s in dockerfile.stages] == ["build", ""]
    spec = image_spec(dockerfile)
    assert spec.user == (10001, 10001)
    assert spec.entrypoint[:2] == ["broker", "run"] and spec.workdir == "/app"
    assert spec.env["PATH"].startswith("/opt/broker/bin:/usr/local/sbin:")  # $PATH expanded from the base image's
    assert spec.env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert "TMPDIR" not in spec.env  # the fork server's socket goes to the container's own /tmp, never /dev/shm
    assert all(not run.text.startswith("[") for stage in dockerfile.stages for run in stage.all("RUN"))
    for copy in dockerfile.final.all("COPY"):
        if "from" in copy.flags():  # replayed in one root: the venv must land where it was built
            sources, target = copy.words()[:-1], copy.words()[-1]
            assert sources == [target] and target.startswith("/"), copy.text


def test_every_pip_install_is_hash_locked_wheels_or_the_project_alone() -> None:
    assert pip_line_check(parse(DOCKERFILE)).outcome == "held"
    loose = DOCKERFILE.replace("--only-binary=:all: -r requirements-build.lock", "-r requirements-build.lock")
    check = pip_line_check(parse(loose))
    assert check.outcome == "BROKEN" and "lacks --only-binary=:all:" in check.details[0]
    resolving = DOCKERFILE.replace("--no-deps --no-build-isolation .", ".")
    assert pip_line_check(parse(resolving)).outcome == "BROKEN"


def test_the_base_image_digest_is_the_same_wherever_it_is_named() -> None:
    check = digest_check(load(REPO / "Dockerfile"), REPO)
    assert check.outcome == "held", check.details
    assert "README.md" in check.details[0]
    moved = parse(DOCKERFILE.replace("sha256:9c900dea", "sha256:00000000"))
    assert digest_check(moved, REPO).outcome == "BROKEN"  # the README still names the old one


def test_a_dockerfile_the_check_cannot_replay_is_refused_with_its_line() -> None:
    with pytest.raises(DockerfileError, match="line 2: VOLUME"):
        parse("FROM debian\nVOLUME /data\n")
    with pytest.raises(DockerfileError, match="line 1: RUN before the first FROM"):
        parse("RUN true\n")
    shell_form = parse("FROM debian\nENTRYPOINT broker run\n").final.last("ENTRYPOINT")
    with pytest.raises(DockerfileError, match="line 2: ENTRYPOINT is not in exec form"):
        assert shell_form is not None and shell_form.exec_form()
    with pytest.raises(DockerfileError, match="must be numeric"):
        image_spec(parse('FROM debian\nUSER broker\nENTRYPOINT ["broker"]\nHEALTHCHECK CMD ["true"]\n'))


def test_continuations_and_comments_join_as_docker_joins_them() -> None:
    dockerfile = parse("FROM debian\nRUN a \\\n# a comment inside\n && b\nENV X=1 Y=$X/2\n")
    [run] = dockerfile.final.all("RUN")
    assert run.text == "a && b" and run.line == 2
    spec_env = dockerfile.final.all("ENV")[0]
    assert spec_env.text == "X=1 Y=$X/2"


def test_dockerignore_patterns_leave_out_caches_wherever_they_are() -> None:
    patterns = ignore_patterns(REPO)
    assert ignored("broker/policy/__pycache__/build.cpython-311.pyc", patterns)
    assert ignored(".venv/bin/python", patterns) and ignored("broker.egg-info/PKG-INFO", patterns)
    assert not ignored("broker/policy/build.py", patterns) and not ignored("requirements.lock", patterns)


def test_the_lock_reader_sees_every_pin() -> None:
    pins = locked_pins(REPO / "requirements.lock")
    assert pins["pyjwt"] and pins["aiohttp"] and all(pins.values())


TRACE = """\
100 execve("/usr/sbin/chroot", ["chroot", "/r"], 0x1 /* 3 vars */) = 0
100 openat(AT_FDCWD, "/etc/ld.so.cache", O_WRONLY|O_CREAT, 0600) = 3</etc/ld.so.cache>
100 execve("/usr/local/sbin/broker", ["broker"], 0x1 /* 3 vars */) = -1 ENOENT (No such file or directory)
100 execve("/opt/broker/bin/broker", ["broker", "run"], 0x1 /* 3 vars */) = 0
100 openat(AT_FDCWD, "/opt/broker/lib/x.pyc", O_RDONLY|O_CLOEXEC) = 3</opt/broker/lib/x.pyc>
100 openat(AT_FDCWD, "/var/tmp/tmpab", O_RDWR|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, 0600 <unfinished ...>
101 mkdir("/tmp/pymp-1", 0700) = 0
100 <... openat resumed>) = -1 EROFS (Read-only file system)
101 unlinkat(3</tmp/r/tmp/pymp-1>, "listener-2", 0) = 0
101 mkdir("/dev/shm/pymp-2", 0700) = 0
101 bind(5<socket:[9]>, {sa_family=AF_UNIX, sun_path=@"abstract"}, 12) = 0
101 openat(AT_FDCWD, "/dev/null", O_WRONLY|O_CLOEXEC) = 4</dev/null>
101 mkdirat(AT_FDCWD</tmp/r/app>, "cache", 0700) = -1 EROFS (Read-only file system)
101 renameat2(AT_FDCWD, "/app/a.tmp", AT_FDCWD, "/app/a", RENAME_NOREPLACE) = -1 EROFS (Read-only file system)
"""


def test_write_attempts_are_found_from_the_entrypoint_on_wherever_they_land() -> None:
    started, attempts = strace_log.write_attempts(TRACE.splitlines(), "broker", root="/tmp/r")
    assert started
    found = [(a.call.name, a.call.paths, a.where, a.call.failed) for a in attempts]
    assert found == [
        ("mkdir", ["/tmp/pymp-1"], "tmpfs", False),  # the container's private /tmp: allowed
        ("openat", ["/var/tmp/tmpab"], "root", True),  # joined with its resumption; failed, still reported
        ("unlinkat", ["/tmp/pymp-1/listener-2"], "tmpfs", False),  # relative to its descriptor, seen inside
        ("mkdir", ["/dev/shm/pymp-2"], "root", False),  # a tmpfs, but a pod's containers share it: counted
        ("mkdirat", ["/app/cache"], "root", True),  # relative to the working directory
        ("renameat2", ["/app/a.tmp", "/app/a"], "root", True),
    ]  # the launcher's own write (before the entrypoint), the abstract socket and /dev/null are not counted
    assert "failed: EROFS" in attempts[1].describe()


def test_a_trace_that_never_reaches_the_entrypoint_says_so() -> None:
    started, attempts = strace_log.write_attempts(TRACE.splitlines()[:3], "broker")
    assert not started and attempts == []
