"""Row caps on UPDATE and DELETE, enforced by the database server itself.

A read is capped on the wire: the door counts the rows coming back and stops at the cap.
A write sends nothing back (without RETURNING), and how many rows `DELETE FROM waybills
WHERE status <> 'x'` matches is known only to the server. So the broker adds one
condition to the statement's WHERE clause:

    AND CAST(CASE WHEN (SELECT count(*) FROM (SELECT 1 FROM <the same FROM and USING>
                                               WHERE <the same WHERE, branch filter included>
                                               LIMIT <cap> + 1) AS broker_matched) > <cap>
                  THEN 'broker.write_cap' ELSE '1' END AS integer) = 1

The subquery has no reference to the row being changed, so PostgreSQL runs it once
(an InitPlan), before the first row passes the WHERE clause, in the statement's own
snapshot. When more rows than the cap match, the cast fails (22P02, quoting
`broker.write_cap`), the statement fails, and nothing is changed: a statement is atomic.
The door shows that failure as the broker's own 42501 `bulk.over_cap` (see
`translated`). At most cap + 1 rows are counted, so the check costs little.

The cap is the employee's per-statement record cap for the resource (p3 in limits.csv),
put into the text when it is sent, like the branch list. `clock_timestamp()` and
`timeofday()`-like functions are refused in capped writes: they could match fewer rows
when counted than when changed.

INSERT ... VALUES adds as many rows as it lists: checked against the cap when sent.
INSERT ... SELECT becomes `INSERT ... SELECT * FROM (<select>) AS broker_rows WHERE
<the same guard, counting the rows of a copy of the select>`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, cast

from pglast import ast, enums, parse_sql

from broker.messages.said import Said, said
from broker.pg.sql_refused import SqlRefused
from broker.pg.wire import error_response

SIGNAL = "broker.write_cap"
"""The text the guard's failing cast quotes: PostgreSQL reports
`invalid input syntax for type integer: "broker.write_cap"` (22P02)."""
CAP_MARKER = "broker_write_cap_{}"
CAPS_PER_GUARD = 2
VOLATILE = frozenset({"clock_timestamp", "timeofday", "random"})

_GUARD_SQL = (
    "SELECT WHERE CAST(CASE WHEN (SELECT count(*) FROM (SELECT 1 LIMIT 'cap'::int8 + 1) AS broker_matched) "
    "> 'cap'::int8 THEN 'broker.write_cap' ELSE '1' END AS integer) = 1"
)
_GUARD: Any = cast(Any, parse_sql(_GUARD_SQL)[0].stmt).whereClause


def guard(relation: Any, items: Any, where: Any) -> tuple[Any, list[ast.String]]:
    """The condition to AND into a write's WHERE clause, built on `relation`, `items` (USING
    or FROM entries) and `where` (copies: they become part of the guard), and the two
    string nodes where the cap goes."""
    made = copy.deepcopy(_GUARD)
    counted = made.lexpr.arg.args[0].expr.lexpr.subselect.fromClause[0].subquery
    counted.fromClause = (relation, *(items or ()))
    counted.whereClause = where
    caps = [
        counted.limitCount.lexpr.arg.val,
        made.lexpr.arg.args[0].expr.rexpr.arg.val,
    ]
    return made, caps


def and_guard(where: Any, condition: Any) -> Any:
    """`where AND condition` (just `condition` when there is no WHERE clause)."""
    if where is None:
        return condition
    return ast.BoolExpr(boolop=enums.BoolExprType.AND_EXPR, args=(where, condition))


def check_volatile(function_names: frozenset[str]) -> None:
    volatile = sorted(VOLATILE & function_names)
    if volatile:
        raise SqlRefused(
            f"UPDATE and DELETE through the broker may not use {', '.join(volatile)}(): the broker counts the rows "
            "a write matches before it runs, and these would match other rows when counted",
            said("use_now"),
        )


def with_cap(text: str, marker: str, cap: int | None) -> str:
    """The statement text with its cap (None: unlimited) where the guard's marker stands."""
    value = (1 << 62) if cap is None else max(cap, 0)
    return text.replace(f"'{marker}'", str(value))


def check_inserted_rows(rows: int, cap: int | None) -> None:
    """INSERT ... VALUES: refuse more rows than the cap before anything is sent."""
    if cap is not None and rows > cap:
        raise SqlRefused(
            f"this INSERT adds {rows} rows; your per-statement cap is {cap} records [bulk.over_cap]",
            said("insert_at_most", cap=cap),
        )


def translated(fields: dict[str, str], words: Callable[[Said], str]) -> bytes | None:
    """The broker's own error for a server error raised by a write's cap guard, in the
    session's `words`; None for any other error."""
    if fields.get("C") != "22P02" or f'"{SIGNAL}"' not in fields.get("M", ""):
        return None
    return error_response(
        "ERROR",
        "42501",
        words(said("write_over_cap")) + " [bulk.over_cap]",
        hint=words(said("narrow_where")),
    )


def capped_select(select: Any, counted: Any) -> tuple[Any, list[ast.String]]:
    """INSERT ... SELECT: `SELECT * FROM (select) AS broker_rows WHERE <guard>`, the guard
    counting the rows of `counted` (a copy of `select`)."""
    counted_rows = ast.RangeSubselect(lateral=False, subquery=counted, alias=ast.Alias(aliasname="broker_counted"))
    condition, caps = guard(counted_rows, (), None)
    wrapper = ast.SelectStmt(
        targetList=(ast.ResTarget(val=ast.ColumnRef(fields=(ast.A_Star(),))),),
        fromClause=(ast.RangeSubselect(lateral=False, subquery=select, alias=ast.Alias(aliasname="broker_rows")),),
        whereClause=condition,
        limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT,
        op=enums.SetOperation.SETOP_NONE,
    )
    return wrapper, caps
