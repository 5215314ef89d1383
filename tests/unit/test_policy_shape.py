"""model.conf is proven to be a shape the index implements, never sampled.

Each edit below is one a platform team could make after reading Casbin's documentation.
The broker either proves it means what the index does (and then decides exactly as
`enforce()` would, checked here over every combination) or refuses it on load, naming the
supported shapes, whatever the roster size.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import pytest

from broker.policy.problem import PolicyError, PolicyProblem
from broker.policy.shape import ALLOW_AND_DENY, ALLOW_ONLY
from broker.policy.snapshot import PolicySnapshot, load_snapshot

SHIPPED = Path(__file__).resolve().parents[2] / "policies"
MATCHER = ALLOW_AND_DENY.matcher


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(SHIPPED, target)
    return target


def set_model_line(directory: Path, prefix: str, value: str) -> int:
    """Replace the model's `prefix = ...` line; its line number."""
    path = directory / "model.conf"
    lines = path.read_text(encoding="utf-8").splitlines()
    number = next(n for n, line in enumerate(lines) if line.startswith(f"{prefix} ="))
    lines[number] = f"{prefix} = {value}"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return number + 1


def refusal(directory: Path) -> PolicyProblem:
    with pytest.raises(PolicyError) as info:
        load_snapshot(directory)
    problems = info.value.problems
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


def assert_names_the_shapes(problem: PolicyProblem) -> None:
    for shape in (ALLOW_AND_DENY, ALLOW_ONLY):
        assert shape.name in problem.hint and shape.matcher in problem.hint, problem.hint
    assert "p, e5000, *, *, *, deny" in problem.hint


def agrees_everywhere(snapshot: PolicySnapshot) -> None:
    enforce = snapshot.casbin_enforcer().enforce
    employees = [*snapshot.index.employees, "e0000"]
    branches = [*sorted(snapshot.index.branches), "BR-NONE"]
    pairs = [*snapshot.index.grants, ("customer", "write"), ("nothing", "read")]
    for emp, branch, (resource, action) in itertools.product(employees, branches, pairs):
        expected = bool(enforce(emp, branch, resource, action))
        assert snapshot.index.allows(emp, branch, resource, action) is expected, (emp, branch, resource, action)


def test_the_shipped_model_is_the_allow_and_deny_shape() -> None:
    snapshot = load_snapshot(SHIPPED)
    assert snapshot.model.shape is ALLOW_AND_DENY
    agrees_everywhere(snapshot)


def test_excluding_one_employee_in_the_matcher_is_refused_whatever_the_roster(policies: Path) -> None:
    """The edit from issue #17: it used to pass for every employee outside a 64-sample."""
    roster = policies / "roster.csv"
    roster.write_text(
        roster.read_text() + "".join(f"g, e{n}, courier, BR001\ng2, e{n}, day-cn\n" for n in range(5000, 5300)),
        encoding="utf-8",
    )
    line = set_model_line(policies, "m", f'{MATCHER} && r.sub != "e5000"')
    problem = refusal(policies)
    assert (problem.file, problem.line) == ("model.conf", line)
    assert problem.message == 'the matcher tests `r.sub != "e5000"`, which the allow-and-deny model does not'
    assert_names_the_shapes(problem)


@pytest.mark.parametrize(
    ("matcher", "fragment", "why"),
    [
        (MATCHER.replace("r.obj == p.obj", "keyMatch(r.obj, p.obj)"), "keyMatch(r.obj, p.obj)", "only functions"),
        (MATCHER.replace("r.obj == p.obj", "regexMatch(r.obj, p.obj)"), "regexMatch(r.obj, p.obj)", "only functions"),
        (MATCHER.replace("r.obj == p.obj", "noSuchFunc(r.obj, p.obj)"), "noSuchFunc(r.obj, p.obj)", "only functions"),
        (MATCHER.replace("r.dom == p.dom", 'r.dom in ("BR001", "BR002")'), 'r.dom in ("BR001", "BR002")', "only =="),
        (MATCHER.replace("g(r.sub, p.sub, r.dom)", 'g(r.sub, p.sub, "BR001")'), 'g(r.sub, p.sub, "BR001")', "fields"),
        (f"{MATCHER} && eval(p.sub)", "eval", "eval() makes a policy line part of the matcher"),
        (f"{MATCHER} && r.obj", "r.obj", "not a comparison"),
    ],
)
def test_matchers_the_index_cannot_implement_are_refused(policies: Path, matcher: str, fragment: str, why: str) -> None:
    line = set_model_line(policies, "m", matcher)
    problem = refusal(policies)
    assert (problem.file, problem.line) == ("model.conf", line), str(problem)
    assert fragment in problem.message and why in problem.message, problem.message
    assert_names_the_shapes(problem)


@pytest.mark.parametrize(
    ("old", "new", "differs"),
    [
        ('(p.dom == "*" || r.dom == p.dom) && ', "", "r.dom == p.dom"),  # branch lines ignored
        (" || g3(r.sub, p.sub)", "", "g3(r.sub, p.sub)"),  # HQ roles dropped
        ("g(r.sub, p.sub, r.dom) || ", "", "g(r.sub, p.sub, r.dom)"),  # the roster dropped
        ("&& (p.act", "|| (p.act", "r.act == p.act"),  # any action
    ],
)
def test_a_matcher_that_means_something_else_is_refused_with_a_case(
    policies: Path, old: str, new: str, differs: str
) -> None:
    assert old in MATCHER
    line = set_model_line(policies, "m", MATCHER.replace(old, new, 1))
    problem = refusal(policies)
    assert (problem.file, problem.line) == ("model.conf", line)
    assert "does not mean the allow-and-deny model's matcher: they decide differently when" in problem.message
    assert differs in problem.message
    assert_names_the_shapes(problem)


@pytest.mark.parametrize(
    "matcher",
    [
        # operands swapped, conjuncts reordered, De Morgan: the same meaning
        '(p.sub == "*" || p.sub == r.sub || g3(r.sub, p.sub) || g(r.sub, p.sub, r.dom)) && (r.act == p.act || '
        '"*" == p.act) && (p.obj == "*" || p.obj == r.obj) && !(p.dom != "*" && r.dom != p.dom)',
        f"!!({MATCHER}) && True",
    ],
)
def test_an_equivalent_matcher_is_accepted_and_decides_as_casbin(policies: Path, matcher: str) -> None:
    (policies / "deny.csv").write_text(
        "p, e1002, *, *, *, deny\np, courier, waybill, *, BR001, deny\np, *, customer, read, BR003, deny\n",
        encoding="utf-8",
    )
    set_model_line(policies, "m", matcher)
    snapshot = load_snapshot(policies)
    assert snapshot.model.shape is ALLOW_AND_DENY
    agrees_everywhere(snapshot)


@pytest.mark.parametrize(
    "effect",
    ["!some(where (p.eft == deny))", "some(where (p.eft == allow))", "priority(p.eft) || deny"],
)
def test_another_effect_is_refused(policies: Path, effect: str) -> None:
    line = set_model_line(policies, "e", effect)
    problem = refusal(policies)
    assert (problem.file, problem.line) == ("model.conf", line)
    assert problem.message == f"with p = sub, obj, act, dom, eft the policy_effect must be e = {ALLOW_AND_DENY.effect}"


def test_another_policy_definition_is_refused(policies: Path) -> None:
    line = set_model_line(policies, "p", "sub, dom, obj, act, eft")
    problem = refusal(policies)
    assert (problem.file, problem.line) == ("model.conf", line)
    assert problem.message == "policy_definition p = sub, dom, obj, act, eft is not a supported shape"
    assert_names_the_shapes(problem)


def allow_only(directory: Path) -> None:
    set_model_line(directory, "p", ", ".join(ALLOW_ONLY.policy))
    set_model_line(directory, "e", ALLOW_ONLY.effect)
    set_model_line(directory, "m", ALLOW_ONLY.matcher)


def test_the_allow_only_model_still_loads_and_decides_as_casbin(policies: Path) -> None:
    allow_only(policies)
    snapshot = load_snapshot(policies)
    assert snapshot.model.shape is ALLOW_ONLY
    agrees_everywhere(snapshot)


def test_deny_lines_under_the_allow_only_model_are_refused(policies: Path) -> None:
    allow_only(policies)
    (policies / "deny.csv").write_text("p, e1001, *, *, *, deny\n", encoding="utf-8")
    problem = refusal(policies)
    assert (problem.file, problem.line) == ("deny.csv", 1)
    assert problem.message == "model.conf is the allow-only model, which has no deny lines"
