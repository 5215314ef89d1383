"""The Casbin model (`model.conf`), checked against the rule shapes the broker reads.

pycasbin loads a model whose `g = _, _` no longer matches the three-field `g` lines and
then quietly lets employees into other branches. Each definition the broker relies on
is compared with the shape of its lines before anything is built, and the policy
definition, effect and matcher must be proven one of the shapes the index implements
(`shape`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from casbin.model import Model

from broker.policy.problem import PolicyProblem
from broker.policy.rule import LINE_TYPES
from broker.policy.shape import SUPPORTED, Shape, ShapeMismatch, shape_of

REQUEST_FIELDS = ("sub", "dom", "obj", "act")
"""The request the broker asks Casbin about: employee, record's branch, resource, action."""


@dataclass(frozen=True, slots=True)
class LoadedModel:
    model: Any
    text: str
    shape: Shape


def load_model(name: str, raw: bytes) -> tuple[LoadedModel | None, list[PolicyProblem]]:
    try:
        text = raw.decode("utf-8")
        model = Model()
        model.load_model_from_text(text)
    except Exception as exc:  # pycasbin raises bare Exceptions with its own messages
        return None, [PolicyProblem(name, 0, f"cannot load the Casbin model: {exc}")]
    problems = _check_sections(name, text, model)
    if problems:
        return None, problems
    try:
        shape = shape_of(model)
    except ShapeMismatch as exc:
        prefix = {"p": "p =", "e": "e =", "m": "m ="}[exc.part]
        return None, [_problem(name, text, prefix, str(exc), SUPPORTED)]
    return LoadedModel(model, text, shape), []


def _check_sections(name: str, text: str, model: Any) -> list[PolicyProblem]:
    problems: list[PolicyProblem] = []
    request = _tokens(model, "r", "r")
    if request != [f"r_{f}" for f in REQUEST_FIELDS]:
        problems.append(_problem(name, text, "r =", f"request_definition must be r = {', '.join(REQUEST_FIELDS)}"))
    if "p" not in model.model or "p" not in model.model["p"]:
        problems.append(PolicyProblem(name, 0, "the model has no [policy_definition] p = ... line", SUPPORTED))
    for ptype, fields in LINE_TYPES.items():
        if ptype == "p":
            continue  # the shape of p, with the effect and matcher, is proven by shape_of
        problems.extend(_check_definition(name, text, model, ptype, len(fields)))
    if "m" not in model.model or "m" not in model.model["m"]:
        problems.append(PolicyProblem(name, 0, "the model has no [matchers] m = ... line"))
    if "e" not in model.model or "e" not in model.model["e"]:
        problems.append(PolicyProblem(name, 0, "the model has no [policy_effect] e = ... line"))
    return problems


def _check_definition(name: str, text: str, model: Any, ptype: str, arity: int) -> list[PolicyProblem]:
    section = ptype[0]
    found = model.model[section].get(ptype) if section in model.model else None
    if found is None:
        return [PolicyProblem(name, 0, f"the model does not define {ptype}", f"add {ptype} = ... with {arity} fields")]
    have = len(found.value.split(",")) if section == "g" else len(found.tokens)
    if have != arity:
        return [
            _problem(
                name,
                text,
                f"{ptype} =",
                f"{ptype} is defined with {have} fields but {ptype} lines have {arity}",
            )
        ]
    return []


def _tokens(model: Any, section: str, key: str) -> list[str]:
    if section not in model.model or key not in model.model[section]:
        return []
    return list(model[section][key].tokens)


def _problem(name: str, text: str, prefix: str, message: str, hint: str = "") -> PolicyProblem:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.replace(" ", "").startswith(prefix.replace(" ", "")):
            return PolicyProblem(name, number, message, hint)
    return PolicyProblem(name, 0, message, hint)
