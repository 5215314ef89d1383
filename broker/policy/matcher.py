"""A Casbin matcher read as a propositional formula over the comparisons it makes.

The broker decides with a compiled index, not with `enforce()`, so it must know what a
matcher means before it serves under it. A sample of decisions cannot know that (an edit
such as `&& r.sub != "e5000"` agrees with the index for every employee but one). Instead
the matcher is parsed, exactly as pycasbin will evaluate it, into "atoms" (one equality
between request and policy fields or a string, or one role lookup `g(...)`) joined by
and/or/not. A matcher the broker cannot read this way (any other function, operator or
field) is refused; one it can read is compared with the supported shapes by truth table
(see `shape`).
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from casbin.core_enforcer import CoreEnforcer

Atom = tuple[str, ...]
"""("==", left, right) with the operands in sorted order, or ("g", arg, ...)."""

ROLE_FUNCTIONS = frozenset({"g", "g3"})
"""The role lookups the index implements: g(employee, role, branch), g3(employee, role)."""


class UnreadableMatcher(ValueError):
    """The matcher holds something outside and/or/not, ==/!=, field names, string
    literals and the role lookups; `fragment` is that part, in the model's own syntax."""

    def __init__(self, fragment: str, why: str) -> None:
        self.fragment = fragment
        self.why = why
        super().__init__(f"{fragment}: {why}")


@dataclass(frozen=True, slots=True)
class Formula:
    expression: str
    """The text pycasbin evaluates (`&&` already `and`, `r.sub` already `r_sub`)."""
    tree: ast.expr

    def source(self, atom: Atom) -> str:
        """How the model file writes `atom` (first occurrence), for messages."""
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Compare | ast.Call) and _atom(node) == atom:
                return shown(ast.get_source_segment(self.expression, node) or ast.unparse(node))
        return atom_text(atom)

    @property
    def atoms(self) -> frozenset[Atom]:
        return frozenset(_atoms(self.tree))

    def value(self, truth: Mapping[Atom, bool]) -> bool:
        return _value(self.tree, truth)


def read_matcher(escaped: str, fields: Iterable[str]) -> Formula:
    """`escaped` is the model's `m` value as pycasbin stores it; `fields` the r_/p_ names
    the model defines. Raises UnreadableMatcher."""
    if re.search(r"\beval\(", escaped):
        raise UnreadableMatcher(shown(escaped), "eval() makes a policy line part of the matcher")
    expression = CoreEnforcer._get_expression(escaped).expr.strip()  # the very text pycasbin evaluates
    try:
        tree = ast.parse(expression, mode="eval").body
    except SyntaxError as exc:
        raise UnreadableMatcher(shown(expression), f"not an expression Casbin can evaluate ({exc.msg})") from exc
    _check(tree, expression, frozenset(fields))
    return Formula(expression, tree)


def equivalent(mine: Formula, other: Formula) -> dict[Atom, bool] | None:
    """None if both formulas agree for every truth value of every atom either holds;
    otherwise one assignment where they differ. Atoms are treated as independent, which
    is stricter than needed (never wrongly says "equivalent")."""
    atoms = sorted(mine.atoms | other.atoms)
    for values in itertools.product((False, True), repeat=len(atoms)):
        truth = dict(zip(atoms, values, strict=True))
        if mine.value(truth) != other.value(truth):
            return truth
    return None


def shown(text: str) -> str:
    """A piece of the evaluated expression in the syntax the model file uses."""
    text = re.sub(r"\b([rp])_(\w)", r"\1.\2", text)
    text = re.sub(r"\bnot\s+", "!", text)
    return re.sub(r"\band\b", "&&", re.sub(r"\bor\b", "||", text))


def atom_text(atom: Atom) -> str:
    if atom[0] == "==":
        return shown(f"{atom[1]} == {atom[2]}")
    return shown(f"{atom[0]}({', '.join(atom[1:])})")


def _check(node: ast.expr, source: str, fields: frozenset[str]) -> None:
    def refuse(why: str) -> UnreadableMatcher:
        return UnreadableMatcher(shown(ast.get_source_segment(source, node) or ast.unparse(node)), why)

    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check(value, source, fields)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        _check(node.operand, source, fields)
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        return
    elif isinstance(node, ast.Compare):
        if len(node.ops) != 1 or not isinstance(node.ops[0], ast.Eq | ast.NotEq):
            raise refuse("only == and != comparisons are supported")
        for operand in (node.left, node.comparators[0]):
            _check_operand(operand, fields, refuse)
    elif isinstance(node, ast.Call):
        name = node.func.id if isinstance(node.func, ast.Name) else ""
        if name not in ROLE_FUNCTIONS or node.keywords:
            raise refuse("the only functions supported are the role lookups g(...) and g3(...)")
        for arg in node.args:
            if not isinstance(arg, ast.Name) or arg.id not in fields:
                raise refuse("role lookups take request and policy fields only")
    else:
        raise refuse("not a comparison, role lookup, &&, || or !")


def _check_operand(operand: ast.expr, fields: frozenset[str], refuse: Callable[[str], UnreadableMatcher]) -> None:
    if isinstance(operand, ast.Name) and operand.id in fields:
        return
    if isinstance(operand, ast.Constant) and isinstance(operand.value, str):
        return
    raise refuse("comparisons take request and policy fields and quoted strings only")


def _operand(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    assert isinstance(node, ast.Constant) and isinstance(node.value, str)
    return f'"{node.value}"'


def _atom(node: ast.Compare | ast.Call) -> Atom:
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        return (node.func.id, *(arg.id for arg in node.args if isinstance(arg, ast.Name)))
    left, right = sorted((_operand(node.left), _operand(node.comparators[0])))
    return ("==", left, right)


def _atoms(node: ast.expr) -> Iterable[Atom]:
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            yield from _atoms(value)
    elif isinstance(node, ast.UnaryOp):
        yield from _atoms(node.operand)
    elif isinstance(node, ast.Compare | ast.Call):
        yield _atom(node)


def _value(node: ast.expr, truth: Mapping[Atom, bool]) -> bool:
    if isinstance(node, ast.BoolOp):
        results = (_value(v, truth) for v in node.values)
        return all(results) if isinstance(node.op, ast.And) else any(results)
    if isinstance(node, ast.UnaryOp):
        return not _value(node.operand, truth)
    if isinstance(node, ast.Constant):
        return bool(node.value)
    assert isinstance(node, ast.Compare | ast.Call)
    found = truth[_atom(node)]
    if isinstance(node, ast.Compare) and isinstance(node.ops[0], ast.NotEq):
        return not found
    return found
