"""What one returned row may carry: the personal data of at most one record of each table.

The cap and the quota count rows, and the door counts rows on the wire. That count is
the number of records an employee received only if no row carries personal data of
more than one record. SQL has many ways to fold records together:

* aggregates and window functions (`max(CASE WHEN id % 20 = 0 THEN sender_phone END)` x
  20 columns `GROUP BY id / 20`: 600 phone numbers in 31 rows; `max(sender_phone)
  FILTER (WHERE id = k)` x 130 in one row; `max(...) OVER (ROWS 5 FOLLOWING ...)`);
* joining a table to itself (`SELECT a.sender_phone, b.sender_phone ... FROM waybills a,
  waybills b WHERE b.id = a.id + 1`), directly, through subqueries, CTEs used twice or
  LATERAL;
* a value subquery in the select list (`SELECT (SELECT count(*) FROM waybills x WHERE
  x.id = 7 AND x.sender_phone LIKE '5%')` x 130: a bit of another record per column);
* row-to-text of whole rows (`w::text`, `(w).col`), and functions that fold rows into
  one value (string_agg, array_agg, json_agg...: not on the function allow-list).

So the broker follows where personal-data columns (`pii_columns` in tables.toml) flow,
and refuses, for every role, a statement in which

1. an aggregate or window function (its arguments, FILTER, ORDER BY, OVER or a named
   WINDOW) reaches a personal-data column (`count(*)` and aggregates of other columns
   stay: honest counting works);
2. one query level's select list (or RETURNING) reaches personal data through two FROM
   entries holding records of the same resource (two instances of `waybills`, or a
   table and a view of it mapped under another name);
3. a subquery in a select list, VALUES, SET or RETURNING reaches personal data (whatever
   it returns: a value, EXISTS, IN), or an UPDATE's SET writes personal data of another
   record into a row (a later read would return both records as one), or an UPDATE or
   INSERT ... SELECT writes personal data into a column not marked as personal data
   (laundering it past the audit's marking and these rules);
4. a whole row of a mapped table (or of a subquery carrying personal data) is used as
   a value (`w`, `(w).col`, `w::text`, `ROW(w.*)`, `count(w.*)`); `SELECT w.*` as a
   select-list entry is columns, not a row value, and stays.

What is charged is then simple: every row that crosses the wire is at most one record
of each table touched, so counting rows counts records. Why for every role, not only
capped ones: the analysis is cached by text and shape for everyone, and a role with
neither cap nor quota gains nothing from packing (it may read the rows themselves).

A FROM entry that may hold personal data is a Carrier. A mapped table carries its
`pii_columns`; a subquery or CTE carries the output columns its personal data reaches
(all of them when the walk cannot name them: set operations, VALUES, unnamed
expressions). Every reference to a CTE is a new instance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from pglast import ast

from broker.messages.said import said
from broker.pg.sql_refused import SqlRefused

AGGREGATES = frozenset({
    "count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every", "any_value",
    "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp",
    "bit_and", "bit_or", "bit_xor", "corr", "covar_pop", "covar_samp", "regr_avgx", "regr_avgy",
    "regr_count", "regr_intercept", "regr_r2", "regr_slope", "regr_sxx", "regr_sxy", "regr_syy",
    "mode", "percentile_cont", "percentile_disc", "range_agg", "range_intersect_agg",
    "string_agg", "array_agg", "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg",
    "xmlagg",
})  # fmt: skip
"""PostgreSQL's built-in aggregates: a name tables.toml might allow is still known as one."""

_ONE_RECORD = said("one_record_per_row")


@dataclass(frozen=True, slots=True)
class Carrier:
    """A FROM entry whose columns may hold personal data of records of `tables`."""

    instance: int
    tables: frozenset[str]
    """The resources (waybill, customer) whose records' personal data it may hold."""
    columns: frozenset[str] | None
    """The columns that may hold personal data; None: any of its columns may."""

    def carries(self, column: str) -> bool:
        return self.columns is None or column in self.columns


@dataclass(frozen=True, slots=True)
class Carried:
    """What a query's output carries: personal data of `tables`, in `columns` (None: any)."""

    tables: frozenset[str]
    columns: frozenset[str] | None


def is_aggregate(node: Any, name: str) -> bool:
    """A call that folds several rows' values into one (an aggregate, or any window function)."""
    return bool(
        node.over is not None
        or node.agg_filter is not None
        or node.agg_order
        or node.agg_within_group
        or node.agg_distinct
        or name in AGGREGATES
    )


def aggregate_refusal(name: str) -> SqlRefused:
    return SqlRefused(
        f"{name}(...) here folds personal data (a column such as a phone number or a name) of several "
        "records into one value, and the broker counts records as rows",
        _ONE_RECORD,
    )


def window_refusal() -> SqlRefused:
    return SqlRefused(
        "a WINDOW clause ordered or partitioned by personal data (a column such as a phone number or a name) "
        "hands each row facts about other records",
        _ONE_RECORD,
    )


def subquery_refusal() -> SqlRefused:
    return SqlRefused(
        "a subquery in the select list (or in VALUES, SET or RETURNING) reads personal data (a column such as "
        "a phone number or a name): one row would carry facts about other records",
        said("join_not_subquery"),
    )


def laundering_refusal(column: str) -> SqlRefused:
    return SqlRefused(
        f"personal data (a column such as a phone number or a name) would be written into {column}, "
        "which tables.toml does not mark as personal data: later reads of it would be neither "
        "audited as personal data nor held to the rules for it",
        said("personal_columns_only"),
    )


def whole_row_refusal(name: str) -> SqlRefused:
    return SqlRefused(
        f"{name} is used as a whole row (as in {name}::text, ({name}).column or ROW({name}.*)); "
        "the broker does not pass whole rows of mapped tables as values",
        said("name_columns", name=name),
    )


def check_one_record_per_table(reached: Iterable[Carrier]) -> None:
    """Refuse an output that carries personal data of two instances of one table."""
    seen: dict[str, int] = {}
    for carrier in reached:
        for table in carrier.tables:
            first = seen.setdefault(table, carrier.instance)
            if first != carrier.instance:
                raise SqlRefused(
                    f"one row would carry personal data of two {table} records (their table is joined to itself, "
                    "directly or through a subquery or WITH, and both sides' personal data is selected)",
                    said("one_side_personal"),
                )


def carried(reached: Sequence[Carrier], columns: frozenset[str] | None) -> Carried | None:
    """What an output reaching `reached` carries (None: no personal data)."""
    if not reached:
        return None
    return Carried(frozenset(table for carrier in reached for table in carrier.tables), columns)


def renamed(found: Carried | None, alias: Any) -> Carried | None:
    """A subquery's output seen through `AS s(a, b)`: names change by position, which the
    walk does not track, so every column may then carry personal data."""
    if found is None or alias is None or not alias.colnames:
        return found
    return Carried(found.tables, None)


def output_name(value: Any) -> str | None:
    """The name PostgreSQL gives a select-list entry without AS, when it is a column's
    name (ColumnRef); None for anything else (the walk then assumes any column)."""
    if isinstance(value, ast.ColumnRef):
        last = cast(Any, value.fields)[-1]
        if isinstance(last, ast.String):
            return str(last.sval)
    return None
