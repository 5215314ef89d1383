"""The policy as it would be after a pull, checked exactly as `broker check` and a reload
check it (every file, then the policy's own test cases), in a private copy of the
directory: nothing the running broker watches changes until the whole policy passes."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

from broker.policy.problem import PolicyError, PolicyProblem
from broker.policy.snapshot import load_snapshot
from broker.review.cases import verify_with_own_tests
from broker.roster.render import ROSTER_FILE, SHIFTS_FILE, RenderedRoster

_GENERATED_LINE = re.compile(rf"\b({re.escape(ROSTER_FILE)}|{re.escape(SHIFTS_FILE)}):(\d+)")


def check_candidate(directory: Path, rendered: RenderedRoster) -> tuple[str | None, list[str]]:
    """(the revision the policy would have, problems); problems in pulled lines are cited
    at the source row they came from, the others at their policy file."""
    with tempfile.TemporaryDirectory(prefix="broker-roster-") as scratch:
        candidate = Path(scratch) / "policies"
        shutil.copytree(directory, candidate)
        for name, data in rendered.files.items():
            (candidate / name).write_bytes(data)
        try:
            snapshot = load_snapshot(candidate)
        except PolicyError as exc:
            return None, [_cite(p, rendered, directory, candidate) for p in exc.problems]
        except Exception as exc:  # as a reload: a surprise refuses the roster, never writes it
            return None, [f"{directory}: unexpected error while checking the policy: {exc!r}"]
        failing = verify_with_own_tests(snapshot)
        return snapshot.revision, [_cite(p, rendered, directory, candidate) for p in failing]


def _cite(problem: PolicyProblem, rendered: RenderedRoster, directory: Path, candidate: Path) -> str:
    """A pulled line's problem at its source row ("hr.csv:17: unknown role ..."), the lines
    it mentions too; any other at its place in the real policy directory."""

    def real(file: str, line: int) -> str:
        """Where a line of the candidate is: a source row, or its line in the real directory."""
        origin = rendered.origin.get((file, line))
        if origin is not None:
            return origin
        if file == SHIFTS_FILE:
            line = rendered.kept.get(line, line)
        return f"{directory}/{file}:{line}" if line else f"{directory}/{file}"

    def cited(text: str) -> str:
        text = _GENERATED_LINE.sub(lambda found: real(found[1], int(found[2])), text)
        return text.replace(str(candidate), str(directory))

    if Path(problem.file).is_absolute():  # a test case file, by its full path
        where = problem.file.replace(str(candidate), str(directory))
        return str(PolicyProblem(where, problem.line, cited(problem.message), cited(problem.hint)))
    return str(PolicyProblem(real(problem.file, problem.line), 0, cited(problem.message), cited(problem.hint)))
