"""The parts of the image check that run inside namespaces of their own.

`python -m deploy.image_check.stage build|run WORKDIR REPO`, started by the driver
under `unshare`: `build` in a private mount namespace (the network is needed for
PyPI), `run` in a private mount and network namespace. Each writes what it found to a
JSON file in WORKDIR for the driver to report; mounts and listeners end with it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from deploy.image_check import build, container, report
from deploy.image_check.dockerfile import load
from deploy.image_check.rootfs import mount
from deploy.image_check.spec import image_spec

BUILD_RESULT, RUN_RESULT = "build.json", "run.json"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.image_check.stage")
    parser.add_argument("stage", choices=("build", "run"))
    parser.add_argument("workdir", type=Path)
    parser.add_argument("repo", type=Path)
    args = parser.parse_args()
    layout = container.Layout.at(args.workdir)
    dockerfile = load(args.repo / "Dockerfile")
    if args.stage == "build":
        mount(layout.root, layout.local_bin, read_only=False)
        with (args.workdir / "build.log").open("w", encoding="utf-8") as log:
            try:
                steps = build.replay(dockerfile, args.repo, layout.root, log)
            except (build.BuildError, OSError, ValueError) as exc:
                print(f"image check: build: {exc}", file=sys.stderr)
                return 1
        (args.workdir / BUILD_RESULT).write_text(json.dumps(steps, indent=1), encoding="utf-8")
        return 0
    checks = container.run_checks(layout, image_spec(dockerfile))
    report.save(checks, args.workdir / RUN_RESULT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
