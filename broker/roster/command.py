"""`broker roster pull`: the roster from where HR keeps it into the policy directory."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from broker.config import load_settings
from broker.roster.pull import Outcome, PullOptions, PullResult, pull
from broker.roster.render import ROSTER_FILE, SHIFTS_FILE
from broker.roster.source import source_from

EXIT_CODES = {
    Outcome.APPLIED: 0,
    Outcome.UNCHANGED: 0,
    Outcome.CHECKED: 0,
    Outcome.REFUSED: 1,
    Outcome.UNREADABLE: 3,
    Outcome.FAILED: 3,
    Outcome.SHRINK: 4,
}
"""2 is a configuration or usage error, as for every broker command."""
EXIT_BAD_CONFIG = 2
DEFAULT_SHOW = 20

EPILOG = """\
exit codes:
  0  written, already up to date, or (--dry-run) would be written
  1  refused: a row is malformed or repeated, a roster line sits where a pull cannot own it,
     or the policy with the pulled roster fails `broker check` or its own test cases
  2  configuration or usage error (no [roster] source, a bad key, no such policy directory)
  3  the source cannot be read as a roster (missing file, encoding, delimiter, columns,
     database unreachable, query error or timeout), or the policy directory cannot be written
  4  refused as a shrink: the source holds no employees, or the pull would remove more than
     [roster] max_removed_fraction of them (--allow-shrink accepts the latter)
Nothing is written unless the exit code is 0 without --dry-run."""


def add_roster_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    roster = commands.add_parser("roster", help="the roster from where HR keeps it (a CSV export, a PostgreSQL query)")
    roster_commands = roster.add_subparsers(title="roster commands", required=True, metavar="ROSTER_COMMAND")
    pull_command = roster_commands.add_parser(
        "pull",
        help="fetch the roster from the [roster] source, check it, show what changes, and write "
        f"{ROSTER_FILE} and {SHIFTS_FILE} if the whole policy still checks",
        description=f"Fetch the roster from the [roster] source in broker.toml, check every row and the whole "
        f"policy it would make (as `broker check` and a reload do), show who is added, removed or changed, "
        f"and replace {ROSTER_FILE} and the g2 lines of {SHIFTS_FILE} in the policy directory, atomically.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_option(pull_command)
    pull_command.add_argument("--policies", type=Path, help="write into this policy directory, not the configured one")
    pull_command.add_argument(
        "--csv", type=Path, metavar="FILE", help="read this export instead of the configured source (same columns)"
    )
    pull_command.add_argument("--dry-run", action="store_true", help="check and show the changes; write nothing")
    pull_command.add_argument(
        "--allow-shrink",
        action="store_true",
        help="accept a pull removing more than [roster] max_removed_fraction of the employees (never all of them)",
    )
    pull_command.add_argument(
        "--show",
        type=int,
        default=DEFAULT_SHOW,
        metavar="N",
        help=f"employees listed per change (default: {DEFAULT_SHOW})",
    )
    pull_command.set_defaults(func=run_pull)


def run_pull(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    directory: Path = args.policies or settings.policy.directory
    if not directory.is_dir():
        print(f"broker roster pull: policy directory {directory} does not exist", file=sys.stderr)
        return EXIT_BAD_CONFIG
    source = source_from(settings.roster, args.csv)  # ConfigError: exit 2, in main
    roster = settings.roster
    options = PullOptions(roster.max_removed_fraction, args.allow_shrink, args.dry_run, roster.headquarters_branch)
    result = pull(source, directory, options)
    _report(result, directory, max(0, args.show))
    return EXIT_CODES[result.outcome]


def _report(result: PullResult, directory: Path, show: int) -> None:
    if result.diff is not None:
        change = result.diff
        print(f"roster from {result.source}: {change.after} employees ({change.before} in {directory} now)")
        print("\n".join(change.lines(show)))
    for problem in result.problems:
        print(problem, file=sys.stderr)
    print(_verdict(result, directory), file=sys.stdout if result.outcome.succeeded else sys.stderr)


def _verdict(result: PullResult, directory: Path) -> str:
    files = f"{ROSTER_FILE} and {SHIFTS_FILE}"
    count = f"{len(result.problems)} problem(s)"
    return {
        Outcome.APPLIED: f"wrote {files} in {directory}: policy revision {result.revision}",
        Outcome.UNCHANGED: f"{files} in {directory} already say this: nothing written",
        Outcome.CHECKED: f"dry run: the policy would check (revision {result.revision}); nothing written",
        Outcome.REFUSED: f"broker roster pull: refused ({count}); nothing written",
        Outcome.UNREADABLE: "broker roster pull: the source cannot be read as a roster; nothing written",
        Outcome.FAILED: f"broker roster pull: {directory} could not be locked, read or written; nothing written",
        Outcome.SHRINK: "broker roster pull: refused as a shrink; nothing written",
    }[result.outcome]
