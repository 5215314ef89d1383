"""StatementCache: a statement made from the analysis of another of its shape (same tokens,
other literal values) is exactly what a fresh `analyse` of its own text gives.

The property test takes many statement shapes (the corpus of test_pg_sql plus pgbench-like
statements), substitutes random values into their literal tokens (lengths, quotes, E''
and dollar-quoted strings, non-ASCII, negative and large numbers, LIMITs around the caps)
and compares the cache's answer with a fresh analyse field by field, and the scoped SQL
for several branch sets; refusals must never come from the shape cache.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from pglast.parser import scan

from broker.pg import statement_cache
from broker.pg.analyser import InlineAnalyser, run_now
from broker.pg.sql import SqlRefused, Statement, analyse, scoped_sql
from broker.pg.statement_cache import StatementCache
from broker.policy.snapshot import PolicySnapshot
from broker.policy.table import TableMap
from tests.unit.test_pg_sql import PRINTED, SHAPES, SPLICED, TABLES
from tests.unit.test_pg_sql import _tables as parse_map

PGBENCH = [
    "SELECT abalance FROM pgbench_accounts WHERE aid = 48213",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 48213 LIMIT 1",
    "UPDATE pgbench_accounts SET abalance = abalance + -3091 WHERE aid = 48213",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 48213, -3091, CURRENT_TIMESTAMP)",
]
EXTRA = [
    "SELECT id, status FROM waybills WHERE waybill_no = 'BR001-1' LIMIT 1",
    "SELECT w.id, w.status, c.name FROM waybills w JOIN customers c ON c.id = w.customer_id "
    "WHERE w.waybill_no = 'BR001-1' LIMIT 10",
    "WITH recent AS (SELECT id, status FROM waybills WHERE created_at > '2026-11-01' AND id > 5) "
    "SELECT status, count(*) FROM recent GROUP BY status",
    "UPDATE waybills SET status = 'delivered' WHERE waybill_no = 'BR001-1'",
    "UPDATE depots SET code = 'x' WHERE code IN (SELECT status FROM waybills WHERE id = 3)",
    "DELETE FROM depots WHERE code = 'x'",
    "SELECT id FROM waybills WHERE recipient_name = '张三1' LIMIT 1",
    "SELECT id FROM waybills LIMIT 5::int8",
    "SELECT id FROM waybills LIMIT 99999999999",
    "SELECT id FROM waybills LIMIT 2 OFFSET 10",
    "SELECT id FROM waybills ORDER BY id FETCH FIRST 3 ROWS ONLY",
    "SELECT id FROM waybills ORDER BY id FETCH FIRST ROW ONLY",
    "SELECT id FROM waybills ORDER BY id FETCH FIRST 3 ROWS WITH TIES",
    "SELECT id FROM waybills LIMIT (7)",
    "SELECT id FROM waybills LIMIT -5",
    "SELECT id FROM waybills LIMIT 1.5",
    "SELECT count(*) FROM waybills WHERE sender_name = 'a' LIMIT 3",
    "SELECT 1 LIMIT 4",
    "VALUES (1), (2), (3) LIMIT 2",
    "SELECT * FROM (VALUES (1), (2)) v LIMIT 9",
    "SELECT id FROM waybills WHERE status = E'a\\nb' AND sender_name = $$x'y$$ LIMIT 3",
    "SELECT id FROM waybills WHERE status = 'a'\n'b' LIMIT 3",
    "SELECT id FROM waybills WHERE flags = B'1010' OR flags = X'1F' AND weight > 1.25e3",
    "SELECT id FROM waybills w WHERE w.status = 'it''s -- not a comment'",
    "SELECT id FROM waybills WHERE status = 'x' -- 'trailing'",
    "SELECT id FROM waybills WHERE id = 9 LIMIT 1;",
    "SELECT id FROM waybills WHERE status = 'a;b' LIMIT 2 ; -- done",
    "SELECT id FROM waybills WHERE id = 9 /* c */ LIMIT 3 /* d */;",
    "INSERT INTO waybills (waybill_no, branch_code) VALUES ('x', 'B1');",
    "/* lead */ SELECT id FROM waybills WHERE id = 1 /* mid */ LIMIT 2 -- tail",
    "INSERT INTO waybills (waybill_no, branch_code, sender_name, status) VALUES ('x', 'B1', 'y', 'new')",
    "INSERT INTO waybills (waybill_no, branch_code) VALUES ('x', 'B1'), ('y', $1), ('z', 'B2')",
    "INSERT INTO waybills (waybill_no, branch_code) VALUES ('x', 'B1') RETURNING id",
    "INSERT INTO depots (code) VALUES ('a'), ('b') RETURNING code",
    "INSERT INTO depots (code) SELECT status FROM waybills LIMIT 4 RETURNING code",
    "COPY (SELECT id FROM waybills WHERE status = 'a' LIMIT 6) TO STDOUT",
    "SELECT id FROM waybills WHERE sender_name LIKE 'ab%' LIMIT 1000000",
    "SELECT lpad(status, 5, '*') FROM waybills LIMIT 0",
    "SELECT 'pg_authid'::regclass FROM waybills",
    "SELECT id FROM waybills WHERE weight::float(10) > 1",
    "SET client_encoding TO 'UTF8'",
    "SET statement_timeout = 5000",
    "SHOW statement_timeout",
    "SELECT 1; SELECT id FROM waybills LIMIT 3",
    "SELECT id FROM waybills w WHERE w.status = 'a' UNION ALL SELECT id FROM customers LIMIT 8",
    "SELECT id FROM nowhere WHERE a = 'secret'",
    "SELECT id FROM waybills WHERE status = 'é€😀' AND id IN (1, 2, 3) LIMIT 2",
]
CORPUS = list(dict.fromkeys([shape for shape, _ in SHAPES] + SPLICED + PRINTED + PGBENCH + EXTRA))

BRANCH_SETS: list[frozenset[str] | None] = [None, frozenset(), frozenset({"B1"}), frozenset({"B1", "B2"})]
LITERAL_TOKENS = frozenset({"SCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
PGBENCH_MAP = (
    (Path(__file__).resolve().parents[2] / "policies" / "tables.toml").read_text(encoding="utf-8")
    + '\n[[table]]\nname = "depots"\nresource = "depot"\n'
    + "".join(
        f'\n[[table]]\nname = "{name}"\nresource = "bench"\n'
        for name in ("pgbench_accounts", "pgbench_history", "pgbench_branches", "pgbench_tellers")
    )
)


MAP: TableMap = parse_map(PGBENCH_MAP)
assert set(TABLES.tables) <= set(MAP.tables)


def _snapshot(tables: TableMap, revision: str = "r1") -> PolicySnapshot:
    none: Any = None
    return PolicySnapshot(revision, Path("."), none, none, none, (), (), (), tables=tables)


def _string(rng: random.Random) -> str:
    pieces = ["", "a", "B1", "B2", "x" * rng.randint(0, 40), "it's", "''", "--", "/*", ";", "é", "张三", "😀"]
    pieces += ["\\", "$$"]
    value = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 4)))
    form = rng.randrange(6)
    if form == 0:
        return "E'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if form == 1 and "$q$" not in value and not value.endswith("$"):
        return "$q$" + value + "$q$"
    if form == 2 and "$" not in value:
        return "$$" + value + "$$"
    return "'" + value.replace("'", "''") + "'"


def _number(rng: random.Random, kind: str) -> str:
    choices = ["0", "1", "2", "7", "10", "99", "100", "1000", "1001", "5000", "10000", "100000", "007"]
    choices += [str(rng.randint(0, 2**31 - 1)), str(rng.randint(2**31, 2**40)), "0x1F", "1_000"]
    if kind == "FCONST":
        choices += ["1.5", "1e3", "0.0", "99999999999", "3."]
    return rng.choice(choices)


def _variant(sql: str, rng: random.Random) -> str:
    """`sql` with random values in (some of) its literal tokens."""
    try:
        tokens = [token for token in scan(sql) if token.name in LITERAL_TOKENS]
    except Exception:
        return sql
    text = sql
    for token in reversed(tokens):
        if rng.random() < 0.2:
            continue
        if token.name == "SCONST":
            new = _string(rng)
        elif token.name in ("ICONST", "FCONST"):
            new = _number(rng, token.name)
        elif token.name == "BCONST":
            new = "B'" + "".join(rng.choice("01") for _ in range(rng.randint(0, 9))) + "'"
        else:
            new = "X'" + "".join(rng.choice("0123456789abcdef") for _ in range(rng.randint(0, 6))) + "'"
        text = text[: token.start] + new + text[token.end + 1 :]
    return text


def _outcome(call: Any) -> Any:
    try:
        return ("ok", call())
    except SqlRefused as exc:
        return ("refused", exc.message, exc.hint, exc.sqlstate)


def _fields(statement: Statement) -> tuple[Any, ...]:
    return (
        statement.sql, statement.fingerprint, statement.kind, statement.uses, statement.rows, statement.pii,
        statement.branch_params, statement.branch_constants, statement.scoped_parts,
    )  # fmt: skip


class SyncCache:
    """The cache with analysis in this process, called without an event loop."""

    def __init__(self, **options: Any) -> None:
        self.inner = StatementCache(InlineAnalyser(), **options)

    def analyse(self, sql: str, snapshot: PolicySnapshot) -> list[Statement]:
        return run_now(self.inner.analyse(sql, snapshot))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class _Counting:
    """Counts statements served from the shape cache."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.served = 0
        real = statement_cache.instantiate

        def counted(*args: Any) -> Any:
            made = real(*args)
            self.served += made is not None
            return made

        monkeypatch.setattr(statement_cache, "instantiate", counted)


def _check_same(cache: SyncCache, snapshot: PolicySnapshot, sql: str) -> None:
    got = _outcome(lambda: cache.analyse(sql, snapshot))
    want = _outcome(lambda: analyse(sql, snapshot.tables))
    if want[0] == "refused" or got[0] == "refused":
        assert got == want, sql
        return
    assert [_fields(s) for s in got[1]] == [_fields(s) for s in want[1]], sql
    for branches in BRANCH_SETS:
        assert _outcome(lambda b=branches: scoped_sql(got[1], b)) == _outcome(  # type: ignore[misc]
            lambda b=branches: scoped_sql(want[1], b)
        ), (sql, branches)


def test_shape_hits_equal_a_fresh_analyse(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = _Counting(monkeypatch)
    rng = random.Random(20261128)  # noqa: S311
    snapshot = _snapshot(MAP)
    checked = 0
    for sql in CORPUS:
        cache = SyncCache()
        _check_same(cache, snapshot, sql)  # the analysis the others are made from
        for _ in range(60):
            _check_same(cache, snapshot, _variant(sql, rng))
            checked += 1
        # and texts whose values were already turned into others' templates
        cache = SyncCache()
        for _ in range(20):
            _check_same(cache, snapshot, _variant(sql, rng))
            checked += 1
    assert checked > 5000
    assert counting.served > 2000, counting.served  # the shape cache did serve most of them


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id FROM nowhere WHERE a = 'secret'",
        "SELECT id FROM waybills LIMIT 'x'",
        "SELECT string_agg(status, 'x') FROM waybills",
        "INSERT INTO waybills (waybill_no, branch_code) SELECT 'a', 'B1'",
        "SET role = 'admin'",
    ],
)
def test_refusals_are_never_served_by_shape(sql: str, monkeypatch: pytest.MonkeyPatch) -> None:
    counting = _Counting(monkeypatch)
    cache = SyncCache()
    snapshot = _snapshot(MAP)
    rng = random.Random(sql)  # noqa: S311
    for text in [sql] + [_variant(sql, rng) for _ in range(30)]:
        with pytest.raises(SqlRefused) as caught:
            cache.analyse(text, snapshot)
        with pytest.raises(SqlRefused) as fresh:
            analyse(text, MAP)
        assert (caught.value.message, caught.value.hint) == (fresh.value.message, fresh.value.hint)
    assert counting.served == 0
    assert cache._shapes == {}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("SET client_encoding TO 'UTF8'", "SET client_encoding TO 'LATIN1'"),
        ("SET statement_timeout = 5000", "SET statement_timeout = 6000"),
        ("SELECT 'waybills'::regclass FROM waybills", "SELECT 'pg_authid'::regclass FROM waybills"),
        ("SELECT 'waybills'::REGCLASS FROM waybills", "SELECT 'pg_authid'::REGCLASS FROM waybills"),
        ("SELECT 'waybills'::\"regrole\" FROM waybills", "SELECT 'postgres'::\"regrole\" FROM waybills"),
        ("SELECT CAST('f' AS pg_catalog.regproc) FROM depots", "SELECT CAST('g' AS pg_catalog.regproc) FROM depots"),
        ("SELECT weight::float(10) FROM waybills", "SELECT weight::float(0) FROM waybills"),
        ("UPDATE waybills SET status = 'a' WHERE id = 1", "UPDATE waybills SET status = 'b' WHERE id = 2"),
        ("DELETE FROM waybills WHERE id = 1", "DELETE FROM waybills WHERE id = 2"),
        ("SELECT 1; SELECT id FROM waybills LIMIT 3", "SELECT 2; SELECT id FROM waybills LIMIT 4"),
        ("SELECT 1; SELECT id FROM waybills LIMIT 3;", "SELECT 2; SELECT id FROM waybills LIMIT 4;"),
        ("SELECT id FROM waybills LIMIT 3;;", "SELECT id FROM waybills LIMIT 4;;"),
        ("SELECT U&\"d!0069\" UESCAPE '!' FROM waybills", "SELECT U&\"d!0069\" UESCAPE '?' FROM waybills"),
        ("SELECT id FROM waybills LIMIT -5", "SELECT id FROM waybills LIMIT -6"),
        ("SELECT * FROM only waybills WHERE id = 1", "SELECT * FROM only waybills WHERE id = 2"),
    ],
)
def test_unsafe_classes_are_not_shaped(first: str, second: str, monkeypatch: pytest.MonkeyPatch) -> None:
    counting = _Counting(monkeypatch)
    cache = SyncCache()
    snapshot = _snapshot(MAP)
    _check_same(cache, snapshot, first)
    _check_same(cache, snapshot, second)
    assert counting.served == 0
    assert cache._shapes == {}


def test_float_precision_checked_by_the_grammar_is_not_reused() -> None:
    """float(p) is the grammar's one check of a literal's value: float(0) is a syntax error."""
    cache = SyncCache()
    snapshot = _snapshot(MAP)
    cache.analyse("SELECT weight::float(10) FROM waybills", snapshot)
    with pytest.raises(SqlRefused):
        cache.analyse("SELECT weight::float(0) FROM waybills", snapshot)


def test_pgbench_select_is_served_by_shape_with_new_text(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = _Counting(monkeypatch)
    cache = SyncCache()
    snapshot = _snapshot(MAP)
    first = cache.analyse("SELECT id FROM waybills WHERE id = 48213 LIMIT 1", snapshot)
    (second,) = cache.analyse("SELECT id FROM waybills  WHERE id = 7 LIMIT 25", snapshot)
    assert counting.served == 1
    assert second.sql == "SELECT id FROM waybills  WHERE id = 7 LIMIT 25"
    assert second.fingerprint == first[0].fingerprint
    assert second.rows.constant == 25
    assert "WHERE id = 7 LIMIT 25" in scoped_sql([second], frozenset({"B1"}))


def test_a_trailing_semicolon_is_one_statement_and_is_shaped(monkeypatch: pytest.MonkeyPatch) -> None:
    """pgbench and many drivers end statements with `;`: the common case must be reused."""
    counting = _Counting(monkeypatch)
    cache = SyncCache()
    snapshot = _snapshot(MAP)
    cache.analyse("SELECT id FROM waybills WHERE id = 48213 LIMIT 1;", snapshot)
    (second,) = cache.analyse("SELECT id FROM waybills WHERE id = 7 LIMIT 25;", snapshot)
    assert counting.served == 1
    assert second.sql == "SELECT id FROM waybills WHERE id = 7 LIMIT 25"
    assert second.rows.constant == 25


def test_shapes_follow_the_policy_revision_and_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = _Counting(monkeypatch)
    cache = SyncCache(entries=3)
    cache.analyse("SELECT id FROM waybills WHERE id = 1", _snapshot(MAP, "r1"))
    cache.analyse("SELECT id FROM waybills WHERE id = 2", _snapshot(MAP, "r2"))
    assert counting.served == 0  # a new revision starts empty
    for n in range(10):
        cache.analyse(f"SELECT id FROM waybills WHERE id = {n} AND status = 'a' LIMIT {n}", _snapshot(MAP, "r2"))
        cache.analyse(f"SELECT id{n} FROM depots WHERE code = 'x'", _snapshot(MAP, "r2"))
        assert len(cache._shapes) <= 3 and len(cache._known) <= 3
