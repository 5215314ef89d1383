"""The model shapes the compiled index implements, and the proof that a model is one.

The index answers "may this employee do this action on this resource in this branch?"
for exactly two Casbin models (below). A `model.conf` is accepted only when its policy
definition and effect are those of a shape and its matcher, read as a formula over its
comparisons and role lookups (`matcher`), is equivalent to the shape's for every truth
value of every comparison: then Casbin's `enforce()` and the index decide alike for the
whole loaded policy, whatever its size, and no decision is sampled. Anything else (an
extra condition, keyMatch, regexMatch, eval, another effect) is refused with a message
naming the shapes, so a platform team never gets a model that says one thing while the
broker does another. That the index implements each shape is the job of the differential
tests in tests/unit/test_policy_parity.py (every employee x branch x resource x action of
random policies, against the real `enforce()`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from casbin.model import Model

from broker.policy.matcher import Formula, UnreadableMatcher, equivalent, read_matcher, shown


@dataclass(frozen=True, slots=True)
class Shape:
    name: str
    policy: tuple[str, ...]
    """The fields of `p`, in order."""
    effect: str
    matcher: str
    denies: bool
    """Whether `p` lines may carry `deny` (and wildcards `*`)."""

    def definition(self) -> str:
        return f"p = {', '.join(self.policy)}; e = {self.effect}; m = {self.matcher}"


ALLOW_ONLY = Shape(
    "allow-only",
    ("role", "obj", "act"),
    "some(where (p.eft == allow))",
    "r.act == p.act && r.obj == p.obj && (g(r.sub, p.role, r.dom) || g3(r.sub, p.role))",
    denies=False,
)
ALLOW_AND_DENY = Shape(
    "allow-and-deny",
    ("sub", "obj", "act", "dom", "eft"),
    "some(where (p.eft == allow)) && !some(where (p.eft == deny))",
    '(p.obj == "*" || r.obj == p.obj) && (p.act == "*" || r.act == p.act) && (p.dom == "*" || r.dom == p.dom)'
    ' && (p.sub == "*" || r.sub == p.sub || g(r.sub, p.sub, r.dom) || g3(r.sub, p.sub))',
    denies=True,
)
SHAPES = (ALLOW_AND_DENY, ALLOW_ONLY)
REQUEST = ("sub", "dom", "obj", "act")

SUPPORTED = (
    "the broker enforces one of two Casbin models, written as in the shipped model.conf: "
    + " | or | ".join(f"{s.name}: {s.definition()}" for s in SHAPES)
    + ". Operands may be swapped and the matcher rearranged (&&, ||, !, parentheses) as long as it means the "
    "same; to exclude an employee, a role in a branch or a resource, write a deny line "
    "(p, e5000, *, *, *, deny) instead of editing the matcher"
)


class ShapeMismatch(ValueError):
    """Which part of the model differs from every shape (`part`: p, e or m), and how."""

    def __init__(self, part: str, message: str) -> None:
        self.part = part
        super().__init__(message)


def shape_of(model: Any) -> Shape:
    """The shape `model` (a loaded casbin Model, r/g already checked) is; raises ShapeMismatch."""
    policy = tuple(token.removeprefix("p_") for token in model["p"]["p"].tokens)
    shape = next((s for s in SHAPES if s.policy == policy), None)
    if shape is None:
        raise ShapeMismatch("p", f"policy_definition p = {', '.join(policy)} is not a supported shape")
    effect = model["e"]["e"].value
    if _squeezed(effect) != _squeezed(_escaped(shape.effect)):
        raise ShapeMismatch("e", f"with p = {', '.join(policy)} the policy_effect must be e = {shape.effect}")
    fields = [f"r_{f}" for f in REQUEST] + [f"p_{f}" for f in shape.policy]
    try:
        formula = read_matcher(model["m"]["m"].value, fields)
    except UnreadableMatcher as exc:
        message = f"the matcher uses `{exc.fragment}`, which the broker cannot enforce: {exc.why}"
        raise ShapeMismatch("m", message) from exc
    _prove(formula, read_matcher(_escaped(shape.matcher), fields), shape)
    return shape


def _prove(formula: Formula, canonical: Formula, shape: Shape) -> None:
    foreign = sorted(formula.atoms - canonical.atoms)
    if foreign:
        listed = ", ".join(f"`{formula.source(a)}`" for a in foreign)
        raise ShapeMismatch("m", f"the matcher tests {listed}, which the {shape.name} model does not")
    differs = equivalent(formula, canonical)
    if differs is not None:
        case = ", ".join(f"{canonical.source(a)} is {v}" for a, v in sorted(differs.items()))
        raise ShapeMismatch(
            "m",
            f"the matcher `{shown(formula.expression)}` does not mean the {shape.name} model's matcher: "
            f"they decide differently when {case}",
        )


def _escaped(text: str) -> str:
    """`text` as pycasbin stores a model value (r.sub -> r_sub)."""
    model = Model()
    model.add_def("m", "m", text)
    return str(model["m"]["m"].value)


def _squeezed(text: str) -> str:
    return "".join(text.split())
