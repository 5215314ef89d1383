"""`policy.toml`: the few choices a policy makes about itself (optional file).

[roster]
several_branches = true   # an employee may hold roles in more than one branch

Without it, an employee holding roles in two branches is an error: usually a stale
roster line that lets someone into a branch they left.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

from broker.policy.problem import PolicyProblem

POLICY_FILE = "policy.toml"


@dataclass(frozen=True, slots=True)
class PolicySettings:
    several_branches: bool = False


def parse_policy_settings(name: str, raw: bytes | None) -> tuple[PolicySettings, list[PolicyProblem]]:
    if raw is None:
        return PolicySettings(), []
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        return PolicySettings(), [PolicyProblem(name, 0, f"not valid TOML: {exc}")]
    unknown = sorted(set(doc) - {"roster"}) + sorted(
        f"roster.{k}" for k in set(doc.get("roster", {})) - {"several_branches"}
    )
    if unknown:
        return PolicySettings(), [
            PolicyProblem(name, 0, f"unknown keys {', '.join(unknown)}", "known: [roster] several_branches")
        ]
    several = doc.get("roster", {}).get("several_branches", False)
    if not isinstance(several, bool):
        return PolicySettings(), [PolicyProblem(name, 0, "[roster] several_branches must be true or false")]
    return PolicySettings(several), []
