"""The branch list (`branches.csv`): every branch code the policy may name.

Without it a roster line for `br001` (lower case) or `BR0O1` loaded silently and gave its
employee a branch no record belongs to. Every branch code in the policy is checked
against this list (`check_branch_codes`); a miss is an error with the closest code.

One line per branch: `code, name, time zone, network ranges`, the ranges separated by
spaces (may be empty). Not a Casbin file: it never reaches the enforcer.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from broker.policy.problem import PolicyProblem

BRANCHES_FILE = "branches.csv"
_CODE = re.compile(r"[A-Za-z0-9_.\-]+\Z")
_FIELDS = ("code", "name", "time zone", "network ranges")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Branch:
    code: str
    name: str
    zone: str
    networks: tuple[Network, ...]
    line: int


def parse_branches(name: str, raw: bytes) -> tuple[dict[str, Branch], list[PolicyProblem]]:
    """Every branch, or the problems found (file, line, reason)."""
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return {}, [PolicyProblem(name, 0, "file is not valid UTF-8")]
    branches: dict[str, Branch] = {}
    problems: list[PolicyProblem] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        branch, problem = _branch(name, number, stripped)
        if problem is None and branch is not None and branch.code in branches:
            problem = PolicyProblem(
                name, number, f"branch {branch.code} is already listed on line {branches[branch.code].line}"
            )
        if problem is not None:
            problems.append(problem)
        elif branch is not None:
            branches[branch.code] = branch
    if not branches and not problems:
        problems.append(
            PolicyProblem(name, 0, "no branches listed", "one line per branch: code, name, time zone, network ranges")
        )
    return branches, problems


def _branch(name: str, number: int, line: str) -> tuple[Branch | None, PolicyProblem | None]:
    def problem(message: str, hint: str = "") -> tuple[None, PolicyProblem]:
        return None, PolicyProblem(name, number, message, hint)

    if "#" in line:
        return problem("inline comment after a branch", "put the comment on a line of its own")
    fields = [part.strip() for part in line.split(",")]
    if len(fields) != len(_FIELDS):
        return problem(
            f"branch line has {len(fields)} fields, expected 4", "write it as: code, name, time zone, network ranges"
        )
    code, title, zone, ranges = fields
    if not _CODE.match(code):
        return problem(f"branch code {code!r} is empty or malformed", "codes use only A-Z a-z 0-9 _ . -")
    if not title:
        return problem(f"branch {code} has no name")
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        return problem(f"branch {code}: unknown time zone {zone!r}", "an IANA name such as Asia/Shanghai")
    networks: list[Network] = []
    for text in ranges.split():
        try:
            networks.append(ipaddress.ip_network(text))
        except ValueError as exc:
            return problem(
                f"branch {code}: {exc}", "ranges in CIDR notation, separated by spaces: 10.1.0.0/16 10.9.8.0/24"
            )
    return Branch(code, title, zone, tuple(networks), number), None


def unknown_branch(code: str, branches: dict[str, Branch]) -> tuple[str, str] | None:
    """(message, hint) when `code` is not a listed branch, else None."""
    if code in branches:
        return None
    close = next((known for known in sorted(branches) if known.casefold() == code.casefold()), None)
    hint = (
        f"branch codes are case-sensitive: did you mean {close}?" if close else f"add it to {BRANCHES_FILE}, or fix it"
    )
    return f"unknown branch {code!r}", hint
