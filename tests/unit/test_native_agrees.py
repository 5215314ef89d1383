"""The compiled per-request modules decide exactly as their sources do, on inputs an insider
or a broken upstream would send: mypyc checks annotations at run time, so a value of an
unexpected type (a list where a record was expected, a number for a branch) could raise
where Python carried on. Thousands of seeded answers and request targets go through the
compiled build here and through the sources in a second interpreter
(`BROKER_PURE_PYTHON=1`); every outcome must be the same, and nothing may raise."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import broker
from broker.native import PURE_ENV

REPO = Path(__file__).resolve().parents[2]
BRANCHES = ["BR001", "BR002", "", "br001", "BR001 ", "\u0042R001"]
ODD_VALUES: list[Any] = [None, True, 0, 7, -1, 1.5, 1e308, "", "x", [], {}, ["BR001"], {"code": "BR001"}]

DECIDE = r"""
import json, sys
from pathlib import Path
from multidict import MultiDict
from urllib.parse import parse_qsl
from broker.http.classify import classify
from broker.http.inspect import holds_records, inspect_records, record_branches
from broker.policy.build import load_snapshot

routes = load_snapshot(Path(sys.argv[1])).routes
mapped = [r for r in routes.routes if r.records != "none"]
mine = frozenset({"BR001"})
cases = json.load(sys.stdin)
out = []
for body_text in cases["bodies"]:
    body = body_text.encode("latin-1")
    row = []
    for route in mapped:
        counted = inspect_records(route, body, 5, mine)
        row.append([counted[0], counted[1].value if counted[1] else None, counted[2], bool(counted[3])])
    branches = record_branches(body, ("branch_code",))
    row.append(sorted(branches) if branches is not None else None)
    row.append(holds_records(body, routes.branch_paths))
    out.append(row)
for target in cases["targets"]:
    query = MultiDict(parse_qsl(target.partition("?")[2], keep_blank_values=True))
    access, route = classify(routes, "GET", target, query, "token", "127.0.0.1")
    refusal = access.refusal
    out.append([access.resource, access.action, access.branch, access.records,
                refusal.reason.value if refusal else None, refusal.detail if refusal else None,
                route.name if route else None])
print(json.dumps({"native": __import__("broker").NATIVE, "out": out}))
"""


def record(rng: random.Random, depth: int) -> Any:
    fields: dict[str, Any] = {"waybill_no": f"SF{rng.randrange(10**6)}"}
    roll = rng.random()
    if roll < 0.7:
        fields["branch_code"] = rng.choice(BRANCHES)
    elif roll < 0.85:
        fields["branch_code"] = rng.choice(ODD_VALUES)
    if depth < 3 and rng.random() < 0.25:
        fields[rng.choice(["related", "previous", "org"])] = (
            [record(rng, depth + 1) for _ in range(rng.randrange(3))] if rng.random() < 0.5 else record(rng, depth + 1)
        )
    return fields if rng.random() > 0.05 else rng.choice(ODD_VALUES)


def answer(rng: random.Random) -> str:
    items = [record(rng, 0) for _ in range(rng.randrange(7))]
    shapes: list[Any] = [
        {"items": items},
        {"items": items, "total": len(items)},
        {"items": items, "more": [record(rng, 0)]},
        {"result": {"records": items}},
        items,
        record(rng, 0),
        {"items": rng.choice(ODD_VALUES)},
        rng.choice(ODD_VALUES),
    ]
    text = json.dumps(rng.choice(shapes))
    mutation = rng.random()
    if mutation < 0.1:  # a key named twice
        text = text.replace('"branch_code": "BR001"', '"branch_code": "BR001", "branch_code": "BR002"', 1)
    elif mutation < 0.15:  # an escaped key
        text = text.replace('"branch_code"', '"\\u0062ranch_code"', 1)
    elif mutation < 0.2:  # cut short, or not JSON
        text = text[: rng.randrange(len(text) + 1)]
    elif mutation < 0.23:
        text = "[" * rng.choice([10, 100, 10_000]) + "]" * rng.choice([0, 10])
    elif mutation < 0.25:
        text = text.replace("1", "NaN", 1)
    return text


def target(rng: random.Random) -> str:
    branch = rng.choice(["BR001", "BR002", "br001", "%42R001", "BR001%00", "..", "%2e%2e", "", "BR001;x"])
    number = rng.choice(["SF100", "SF100%2F..", "%SF", "SF100/", "SF100//x"])
    path = rng.choice(
        [
            f"/api/branches/{branch}/waybills",
            f"/api/waybills/{number}",
            f"/api/branches/{branch}/waybills/{number}",
            f"//api/branches/{branch}/waybills",
            f"/api/./branches/{branch}/waybills",
            f"/API/branches/{branch}/waybills",
            "/api/branches",
            "/-/x",
            "/api/branches/" + "a" * rng.choice([1, 300, 5000]) + "/waybills",
        ]
    )
    query = rng.choice(
        ["", "limit=1", "limit=0", "limit=-1", "limit=1e3", "limit=99999999999999999999", "limit=1&limit=2",
         "limit=%31", "LIMIT=1", "limit=", "limit=1&_method=DELETE", "branch=BR002&limit=1", "limit=\u0661"]
    )  # fmt: skip
    return f"{path}?{query}" if query else path


def decide(cases: dict[str, list[str]], env: dict[str, str]) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", DECIDE, str(REPO / "policies")],
        input=json.dumps(cases),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    decided: dict[str, Any] = json.loads(result.stdout)
    return decided


def test_compiled_and_python_decide_alike_on_odd_answers_and_targets() -> None:
    rng = random.Random(20261203)  # noqa: S311 - seeded cases, not secrets
    cases = {"bodies": [answer(rng) for _ in range(1500)], "targets": [target(rng) for _ in range(1500)]}
    base = {k: v for k, v in os.environ.items() if k != PURE_ENV}
    compiled = decide(cases, base)
    python = decide(cases, {**base, PURE_ENV: "1"})
    assert python["native"] == "source"
    assert compiled["native"] == broker.NATIVE  # "compiled" under `make test`
    # the cases reach every outcome, so agreeing means something
    verdicts = {cell[1] for row in compiled["out"][:1500] for cell in row[:-2]}
    assert {None, "upstream.other_branch", "upstream.uninspectable"} <= verdicts
    targets = compiled["out"][1500:]
    assert {"request.bad_path", "route.unknown", "request.bad_limit"} <= {row[4] for row in targets}
    assert sum(row[6] is not None for row in targets) > 100  # and many are classified to a route
    for index, (mine, theirs) in enumerate(zip(compiled["out"], python["out"], strict=True)):
        case = cases["bodies"][index] if index < 1500 else cases["targets"][index - 1500]
        assert mine == theirs, f"case {index}: {case[:300]!r}"
