"""Walking one statement's parse tree: what it touches, and scoping it to branches.

One pass over the tree (pglast / libpg_query, PostgreSQL's own grammar) does four jobs:
resolves every table reference through the table map (with WITH-scoping, so a CTE
named like a table is not that table), checks every function against an allowlist,
notes the personal-data columns the statement names, and replaces every read of a
branch-scoped table with a sub-select that only sees the branches' rows. Unknown node
types are refused: what the broker cannot follow, it does not run.

The scoped text is made once and kept as text parts split where the branch list goes;
the session joins them around each employee's branch list, so the per-statement cost of
scoping is a string join. When every change is a scoped read, the walk only notes the
reads and they are spliced into the text as sent (sql_splice: printing a tree costs
several times more than parsing it); otherwise (scoped UPDATE/DELETE/COPY targets, names
the splice does not take) the walk rewrites the tree and it is printed with a marker.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from pglast import ast, enums
from pglast.parser import ParseError, split
from pglast.stream import RawStream

from broker.messages.said import said
from broker.pg.sql_carry import (
    Carried,
    Carrier,
    aggregate_refusal,
    carried,
    check_one_record_per_table,
    is_aggregate,
    laundering_refusal,
    output_name,
    renamed,
    subquery_refusal,
    whole_row_refusal,
    window_refusal,
)
from broker.pg.sql_fact import check_type, check_value_function
from broker.pg.sql_refused import SqlRefused
from broker.pg.sql_splice import Edit, apply_edits, branch_filter, scoped_subselect, splice_edits
from broker.pg.sql_write_cap import CAP_MARKER, and_guard, capped_select, check_volatile, guard
from broker.policy.table import TableMap, TableRule


@dataclass(frozen=True, slots=True)
class TableUse:
    table: str
    resource: str
    action: Literal["read", "write"]
    branch_column: str | None


SAFE_FUNCTIONS = frozenset({
    # aggregates that fold rows into one *number or value*, never a list of records
    "count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every",
    "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp",
    # window functions: one value per row, no row is added
    # (not lag, lead, first_value, last_value, nth_value: each hands one row another row's
    # value, so nested calls fold hundreds of records into one row past the row count)
    "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "ntile",
    # text
    "lower", "upper", "initcap", "length", "char_length", "character_length", "octet_length",
    "substr", "substring", "trim", "btrim", "ltrim", "rtrim", "lpad", "rpad", "concat", "concat_ws",
    "left", "right", "replace", "translate", "position", "strpos", "starts_with", "split_part",
    "overlay", "normalize", "is_normalized", "similar_to_escape", "like_escape",
    # conditionals (COALESCE, NULLIF, GREATEST and LEAST are syntax, listed for clarity)
    "coalesce", "nullif", "greatest", "least", "num_nulls", "num_nonnulls",
    # date and time
    "now", "clock_timestamp", "statement_timestamp", "transaction_timestamp", "date_trunc",
    "date_part", "date_bin", "extract", "to_char", "to_date", "to_timestamp", "to_number", "age",
    "make_date", "make_time", "make_timestamp", "make_interval", "timezone", "overlaps",
    "isfinite", "justify_days", "justify_hours", "justify_interval",
    # numbers
    "round", "trunc", "abs", "floor", "ceil", "ceiling", "sign", "mod", "power", "sqrt",
})  # fmt: skip
"""Functions that return one value per input row (or one per group) and read nothing else.

None returns a set (that would break the row bounds) or folds rows into a list
(string_agg, array_agg, json_agg...: one row holding thousands of records)."""

_EXPRESSION_NODES: frozenset[type[ast.Node]] = frozenset({
    ast.A_Const, ast.Integer, ast.Float, ast.Boolean, ast.String, ast.BitString, ast.ParamRef,
    ast.A_Expr, ast.BoolExpr, ast.NullTest, ast.BooleanTest, ast.CaseExpr, ast.CaseWhen,
    ast.CoalesceExpr, ast.MinMaxExpr, ast.TypeCast, ast.TypeName, ast.CollateClause,
    ast.SQLValueFunction, ast.A_Indirection, ast.A_Indices, ast.A_ArrayExpr, ast.RowExpr,
    ast.A_Star, ast.ResTarget, ast.SortBy, ast.WindowDef, ast.GroupingSet, ast.GroupingFunc,
    ast.Alias, ast.SetToDefault, ast.ColumnDef, ast.CTESearchClause, ast.CTECycleClause,
    ast.InferClause, ast.IndexElem, ast.ReturningOption,
})  # fmt: skip
"""Node types that only compute values from what is already in scope; anything else
inside a statement (XML and JSON constructors, TABLESAMPLE, CURRENT OF...) is refused."""

COUNTING_AGGREGATES = frozenset({
    "count", "sum", "avg", "bool_and", "bool_or", "every",
    "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp",
})  # fmt: skip
"""The aggregates a scalar subquery in a returned value may use over a mapped table: each
folds many rows into a number or a boolean about them. Not min/max: each hands back one
record's value, so a select list of such subqueries packs many records into one row."""

_VALUE_SUBLINKS = frozenset({enums.SubLinkType.EXPR_SUBLINK, enums.SubLinkType.MULTIEXPR_SUBLINK})
"""Sublinks whose value is the subquery's own (EXISTS, IN, ANY, ALL and row comparisons
yield booleans)."""

_COMPARISONS = frozenset({"=", "<>", "!=", "<", ">", "<=", ">="})
_TESTS = frozenset({
    enums.A_Expr_Kind.AEXPR_OP_ANY, enums.A_Expr_Kind.AEXPR_OP_ALL, enums.A_Expr_Kind.AEXPR_DISTINCT,
    enums.A_Expr_Kind.AEXPR_NOT_DISTINCT, enums.A_Expr_Kind.AEXPR_IN, enums.A_Expr_Kind.AEXPR_LIKE,
    enums.A_Expr_Kind.AEXPR_ILIKE, enums.A_Expr_Kind.AEXPR_SIMILAR, enums.A_Expr_Kind.AEXPR_BETWEEN,
    enums.A_Expr_Kind.AEXPR_NOT_BETWEEN, enums.A_Expr_Kind.AEXPR_BETWEEN_SYM, enums.A_Expr_Kind.AEXPR_NOT_BETWEEN_SYM,
})  # fmt: skip
"""Expressions yielding a boolean: their operands are compared, not returned."""

_PACKED_HINT = said("count_or_sum")

_MARKER = "broker_branches_{}"
_MAX_MARKER_TRIES = 20
NOT_ANALYSABLE = said("plain_features")


@dataclass(slots=True)
class _Level:
    """One query level: the CTE names it sees and the FROM entries named in it."""

    ctes: frozenset[str]
    ranges: dict[str, TableRule | None] = field(default_factory=dict)
    parent: _Level | None = None
    carriers: dict[str, Carrier] = field(default_factory=dict)
    """The FROM entries named in it that may hold personal data (see sql_carry)."""

    def find(self, refname: str) -> TableRule | None:
        level = self.holding(refname)
        return None if level is None else level.ranges[refname]

    def carrier(self, refname: str) -> Carrier | None:
        level = self.holding(refname)
        return None if level is None else level.carriers.get(refname)

    def holding(self, refname: str) -> _Level | None:
        """The innermost level naming `refname` in its FROM list."""
        level: _Level | None = self
        while level is not None:
            if refname in level.ranges:
                return level
            level = level.parent
        return None


@dataclass(frozen=True, slots=True)
class Found:
    """What the walk found in one statement."""

    uses: tuple[TableUse, ...]
    pii: tuple[str, ...]
    parts: tuple[str, ...]
    """The rewritten statement split where the branch list goes; () when nothing is scoped."""
    branch_constants: tuple[str, ...] = ()
    branch_params: tuple[int, ...] = ()
    custom_functions: bool = False
    """A function from the table map's own list was called: it might return a set."""
    function_names: frozenset[str] = frozenset()
    """The (unqualified) names of every function called anywhere in the statement."""
    edits: tuple[Edit, ...] | None = ()
    """How `parts` were made from the statement's text: its splices (() when nothing is
    scoped); None when the tree was printed instead."""
    cap_marker: str | None = None
    """UPDATE/DELETE of a mapped table: the quoted literal in `parts` (and `capped_sql`)
    where the employee's row cap goes (see sql_write_cap)."""
    capped_sql: str | None = None
    """The statement with its cap guard but no branch filter, for employees of every branch."""


Source = tuple[str, int]
"""A statement's text and where it starts in the string the parser saw (in characters)."""


def walk_select(node: Any, tables: TableMap, source: Source | None = None) -> Found:
    return _walk(_select, node, tables, source)


def walk_copy(node: Any, tables: TableMap, source: Source | None = None) -> Found:
    """COPY (query) TO STDOUT, or COPY table TO STDOUT (made a query when it must be scoped)."""
    return _walk(_copy, node, tables, None if _scoped_target(node.relation, tables) else source)


def walk_insert(node: Any, tables: TableMap, source: Source | None = None) -> Found:
    return _walk(_insert, node, tables, source)


def walk_update(node: Any, tables: TableMap, source: Source | None = None) -> Found:
    return _walk(_update, node, tables, None if _scoped_target(node.relation, tables) else source)


def walk_delete(node: Any, tables: TableMap, source: Source | None = None) -> Found:
    return _walk(_delete, node, tables, None if _scoped_target(node.relation, tables) else source)


class _NeedsTree(Exception):
    """Raised by a walk that only notes scoped reads when the statement needs a change the
    text cannot take by splicing: the walk is done again, rewriting the tree."""


def _walk(walk: Callable[[_Walker, Any], None], node: Any, tables: TableMap, source: Source | None) -> Found:
    """Walk `node` once noting the scoped reads and splice them into `source`; when that is
    not possible (or `source` is None), walk it rewriting the tree and print the tree."""
    if source is not None:
        walker = _Walker(tables, source)
        try:
            walk(walker, node)
        except _NeedsTree:
            pass
        else:
            spliced = walker.spliced()
            if spliced is not None:
                return walker.found(*spliced)
    walker = _Walker(tables, None)
    walk(walker, node)
    if walker.cap_markers:
        parts, cap_marker, capped = _capped_template(node, walker)
        return walker.found(parts, None, cap_marker, capped)
    if walker.markers:
        return walker.found(_template(node, walker.markers), None)
    return walker.found((), ())


def _scoped_target(relation: Any, tables: TableMap) -> bool:
    """The statement writes (or COPYs) a branch-scoped table: its tree is rewritten, never spliced."""
    if relation is None or relation.catalogname is not None:
        return False
    rule = tables.rule(relation.schemaname, relation.relname)
    return rule is not None and rule.branch_column is not None


def _select(walker: _Walker, node: Any) -> None:
    walker.query(node, None)


def _copy(walker: _Walker, node: Any) -> None:
    if node.relation is not None:
        rule = walker.target(node.relation, "read")
        if rule.branch_column is not None:
            if walker.source is not None:
                raise _NeedsTree
            node.query, node.relation, node.attlist = _copy_query(node), None, None
        else:
            columns = tuple(c.sval for c in node.attlist or ())
            walker.named(rule, columns or tuple(rule.pii_columns))
    if node.query is not None:
        walker.query(node.query, None)


def _insert(walker: _Walker, node: Any) -> None:
    pristine = walker.pristine(node)
    walker.output = node.returningClause is not None  # what is written is only returned by RETURNING
    level = _Level(walker.with_clause(node.withClause, None))
    rule = walker.target(node.relation, "write")
    columns = tuple(col.name for col in node.cols or ())
    walker.named(rule, columns or tuple(rule.pii_columns))
    if rule.branch_column is not None:
        walker.insert_branches(node, rule, columns)
    if node.selectStmt is not None:
        found = walker.query(node.selectStmt, level)
        plain = [column for column in columns or ("*",) if column not in rule.pii_columns]
        if found is not None and plain:
            raise laundering_refusal(plain[0])
    level.ranges.update({_refname(node.relation): rule, "excluded": rule})
    target = walker.table_carrier(rule)
    level.carriers.update({_refname(node.relation): target, "excluded": target})
    if node.onConflictClause is not None:
        walker.expr((node.onConflictClause.infer, node.onConflictClause.targetList), level)
        walker.expr_in(node.onConflictClause.whereClause, level, output=False)
    walker.returning(node.returningClause, rule, level, _refname(node.relation))
    if node.selectStmt is not None and not node.selectStmt.valuesLists:
        walker.cap_insert(node, pristine)


def _update(walker: _Walker, node: Any) -> None:
    pristine = walker.pristine(node)
    walker.output = node.returningClause is not None
    level = _Level(walker.with_clause(node.withClause, None))
    rule = walker.target(node.relation, "write")
    level.ranges[_refname(node.relation)] = rule
    level.carriers[_refname(node.relation)] = walker.table_carrier(rule)
    walker.from_clause(node, "fromClause", level)
    for target in node.targetList:
        if target.name == rule.branch_column:
            raise SqlRefused(
                f"UPDATE may not set {rule.name}.{target.name}: records are not moved between branches "  # noqa: S608
                "through the broker",
                said("branch_column_fixed"),
            )
        walker.named(rule, (target.name,))
    walker.written(node.targetList, level, level.carriers[_refname(node.relation)])
    walker.expr_in(node.whereClause, level, output=False)
    walker.returning(node.returningClause, rule, level, _refname(node.relation))
    walker.scope_write(node, rule)
    walker.cap_write(node, pristine, "fromClause")


def _delete(walker: _Walker, node: Any) -> None:
    pristine = walker.pristine(node)
    walker.output = node.returningClause is not None
    level = _Level(walker.with_clause(node.withClause, None))
    rule = walker.target(node.relation, "write")
    level.ranges[_refname(node.relation)] = rule
    level.carriers[_refname(node.relation)] = walker.table_carrier(rule)
    walker.from_clause(node, "usingClause", level)
    walker.expr_in(node.whereClause, level, output=False)
    walker.returning(node.returningClause, rule, level, _refname(node.relation))
    walker.scope_write(node, rule)
    walker.cap_write(node, pristine, "usingClause")


class _Walker:
    def __init__(self, tables: TableMap, source: Source | None) -> None:
        self.tables = tables
        self.source = source
        """Set: only note the scoped reads, to splice them into this text; None: rewrite the tree."""
        self.reads: list[tuple[Any, str]] = []
        self.allowed_functions = SAFE_FUNCTIONS | tables.functions
        self.uses: dict[tuple[str, str], TableUse] = {}
        self.pii: set[str] = set()
        self.markers: list[ast.String] = []
        self.branch_constants: list[str] = []
        self.branch_params: list[int] = []
        self.custom_functions = False
        self.function_names: set[str] = set()
        self.output = True
        """The expressions being walked may be returned to the client (a target list,
        VALUES or RETURNING whose rows flow out); False in WHERE, JOIN ON, ORDER BY..."""
        self.data_reads = 0
        """FROM entries met so far that may hold mapped records (mapped tables, CTEs)."""
        self.reached: list[Carrier] = []
        """Every reference to a column that may hold personal data, by its FROM entry, in
        walk order: a walk of part of the tree reached personal data if this grew."""
        self.instances = 0
        self.in_target = False
        """Walking a select list, VALUES or RETURNING: what is met there is returned."""
        self.star_ok = False
        """Walking a select-list entry that is `*` or `t.*` (columns, not a row value)."""
        self.cte_carried: dict[str, Carried] = {}
        self.cap_markers: list[ast.String] = []
        """Where a write's row cap goes in the rewritten tree (sql_write_cap)."""
        self.unscoped: Any = None
        """The write as sent plus its cap guard, for employees of every branch."""
        self.unscoped_caps: list[ast.String] = []

    def found(
        self,
        parts: tuple[str, ...],
        edits: tuple[Edit, ...] | None,
        cap_marker: str | None = None,
        capped_sql: str | None = None,
    ) -> Found:
        return Found(
            cap_marker=cap_marker,
            capped_sql=capped_sql,
            uses=tuple(self.uses.values()),
            pii=tuple(sorted(self.pii)),
            parts=parts,
            branch_constants=tuple(self.branch_constants),
            branch_params=tuple(self.branch_params),
            custom_functions=self.custom_functions,
            function_names=frozenset(self.function_names),
            edits=edits,
        )

    def spliced(self) -> tuple[tuple[str, ...], tuple[Edit, ...]] | None:
        """The text with the scoped reads spliced in, split where the branch lists go, and
        the splices made; ((), ()) when nothing is scoped, None when the text cannot take them."""
        if not self.reads:
            return (), ()
        assert self.source is not None  # reads are only noted while splicing
        text, base = self.source
        edits = splice_edits(text, base, self.tables.schema, self.reads)
        if edits is None:
            return None
        parts = apply_edits(text, edits)
        return (parts, edits) if single_statement("''".join(parts)) else None

    # --- queries and their FROM lists --------------------------------------------------

    def query(self, node: Any, outer: _Level | None) -> Carried | None:
        if not isinstance(node, ast.SelectStmt):
            raise SqlRefused(
                "the broker does not run data-changing statements inside WITH, COPY or other statements",
                said("writes_alone"),
            )
        if node.intoClause is not None:
            raise SqlRefused("the broker does not run SELECT INTO (it creates a table)", said("select_without_into"))
        # CTEs, FROM entries and set-operation branches feed this query's rows: they are
        # walked as returned when it is; WHERE, GROUP BY, ORDER BY... values are not returned
        level = _Level(self.with_clause(node.withClause, outer), parent=outer)
        in_target, self.in_target = self.in_target, False
        try:
            found = self.query_body(node, level)
        finally:
            self.in_target = in_target
        self.expr_in((node.sortClause, node.limitOffset, node.limitCount), level, output=False)
        for locking in node.lockingClause or ():
            if not isinstance(locking, ast.LockingClause):
                raise _not_analysable(locking)
            # lockedRels name FROM entries of this query (aliases), not tables: nothing to resolve
        return found

    def query_body(self, node: Any, level: _Level) -> Carried | None:
        """Walk a query but for its ORDER BY and LIMIT; what its output carries."""
        if node.op != enums.SetOperation.SETOP_NONE:
            left, right = self.query(node.larg, level), self.query(node.rarg, level)
            # a branch's columns are named by the first branch: any column may carry
            both = [found for found in (left, right) if found is not None]
            return Carried(frozenset().union(*(found.tables for found in both)), None) if both else None
        self.from_clause(node, "fromClause", level)
        found = self.targets(node.targetList, level, rows=node.valuesLists)
        self.expr_in((node.whereClause, node.groupClause, node.havingClause), level, output=False)
        reached = len(self.reached)
        self.expr_in(node.windowClause, level, output=False)
        if len(self.reached) > reached:
            raise window_refusal()
        self.expr_in(node.distinctClause, level, output=False)
        return found

    def written(self, items: Any, level: _Level, target: Carrier) -> None:
        """UPDATE SET: what is written into a row is returned by every later read of it, as
        one record. So it may carry personal data of that record only: not another
        instance's (`SET sender_name = x.sender_phone FROM waybills x`), nor a subquery's
        reading personal data (each such UPDATE would fold one more record into the row)."""
        mark = len(self.reached)
        for item in items:
            before = len(self.reached)
            self.targets((item,), level)
            if len(self.reached) > before and not target.carries(item.name):
                raise laundering_refusal(item.name)
        check_one_record_per_table([target, *self.reached[mark:]])

    def targets(self, items: Any, level: _Level, rows: Any = None) -> Carried | None:
        """Walk a select list (or RETURNING) and VALUES rows as returned: refuse a row that
        would carry personal data of two records of one table; what the output carries."""
        self.in_target = True
        reached: list[Carrier] = []
        columns: set[str] | None = set()
        try:
            for target in items or ():
                mark = len(self.reached)
                self.star_ok = _is_star_target(target)
                try:
                    self.expr(target, level)
                finally:
                    self.star_ok = False
                new = self.reached[mark:]
                reached += new
                if new and columns is not None:
                    columns = _carrying_columns(target, new, columns)
            for row in rows or ():
                mark = len(self.reached)
                self.expr(row, level)
                if len(self.reached) > mark:
                    reached += self.reached[mark:]
                    columns = None  # VALUES columns are column1, column2...
        finally:
            self.in_target = False
        check_one_record_per_table(reached)
        return carried(reached, None if columns is None else frozenset(columns))

    def with_clause(self, node: Any, outer: _Level | None) -> frozenset[str]:
        """The CTE names visible after `node`, each CTE's body walked with the names it sees."""
        visible = outer.ctes if outer is not None else frozenset()
        if node is None:
            return visible
        if node.recursive:
            # A recursive query can fold any number of records into one row (each step
            # appending the next record's fields): the row count would no longer bound them.
            raise SqlRefused(
                "the broker does not run WITH RECURSIVE",
                said("no_recursive"),
            )
        names = frozenset(cte.ctename for cte in node.ctes)
        seen = set(visible)
        for cte in node.ctes:
            sees = frozenset(seen)  # a CTE sees only the ones before it
            found = self.query(cte.ctequery, _Level(sees, parent=outer))
            if found is not None:
                self.carry_cte(cte.ctename, Carried(found.tables, None) if cte.aliascolnames else found)
            self.expr((cte.search_clause, cte.cycle_clause), _Level(sees, parent=outer))
            seen.add(cte.ctename)
        return visible | names

    def from_clause(self, node: Any, name: str, level: _Level) -> None:
        """Walk the FROM list `node.<name>`, putting it back only if an entry was replaced."""
        items = getattr(node, name)
        if items is None:
            return
        kept = tuple(self.from_item(item, level) for item in items)
        if any(new is not old for new, old in zip(kept, items, strict=True)):
            setattr(node, name, kept)

    def from_item(self, item: Any, level: _Level) -> Any:
        """The FROM entry to keep: the same node, or a scoped sub-select in its place."""
        if isinstance(item, ast.RangeVar):
            return self.read_table(item, level)
        found: Carried | None = None
        if isinstance(item, ast.RangeSubselect):
            found = renamed(self.query(item.subquery, level), item.alias)
        elif isinstance(item, ast.JoinExpr):
            before = len(level.carriers)
            larg, rarg = self.from_item(item.larg, level), self.from_item(item.rarg, level)
            if larg is not item.larg:
                item.larg = larg
            if rarg is not item.rarg:
                item.rarg = rarg
            self.expr_in(item.quals, level, output=False)
            if item.alias is not None and len(level.carriers) > before:
                raise SqlRefused(
                    "the broker does not follow personal data through a join alias (JOIN ... AS j)",
                    said("join_alias"),
                )
        elif isinstance(item, ast.RangeFunction):
            mark = len(self.reached)
            self.expr((item.functions, item.coldeflist), level)
            found = carried(self.reached[mark:], None)
        else:
            raise _not_analysable(item)
        # a subquery or function without an alias (PostgreSQL 16 takes them) has no name to
        # qualify by, but its columns are still found by unqualified names
        name = item.alias.aliasname if item.alias is not None else f"\0unnamed {len(level.ranges)}"
        if item.alias is not None or found is not None:
            level.ranges[name] = None
        if found is not None:
            level.carriers[name] = self.carrier_of(found)
        return item

    def read_table(self, node: Any, level: _Level) -> Any:
        self.data_reads += 1  # a CTE counts too: it may hold mapped records
        if node.schemaname is None and node.relname in level.ctes:
            level.ranges[_refname(node)] = None
            found = self.cte_carried.get(node.relname)
            if found is not None:  # each reference is one more instance of its records
                level.carriers[_refname(node)] = self.carrier_of(renamed(found, node.alias) or found)
            return node
        rule = self.target(node, "read")
        level.ranges[_refname(node)] = rule
        level.carriers[_refname(node)] = self.table_carrier(rule)
        return node if rule.branch_column is None else self.scoped_read(node, rule.branch_column)

    def table_carrier(self, rule: TableRule) -> Carrier:
        self.instances += 1
        # by resource, not table: two mapped names for one set of records (a table and a
        # view of it) are still two records of that resource in one row
        return Carrier(self.instances, frozenset({rule.resource}), rule.pii_columns)

    def carrier_of(self, found: Carried) -> Carrier:
        self.instances += 1
        return Carrier(self.instances, found.tables, found.columns)

    def carry_cte(self, name: str, found: Carried) -> None:
        """Note what a CTE's output carries (merged with a CTE of the same name elsewhere)."""
        known = self.cte_carried.get(name)
        if known is not None:
            columns = None if known.columns is None or found.columns is None else known.columns | found.columns
            found = Carried(known.tables | found.tables, columns)
        self.cte_carried[name] = found

    def target(self, node: Any, action: Literal["read", "write"]) -> TableRule:
        """The rule of a real table (never a CTE: INSERT/UPDATE/DELETE/COPY targets are tables)."""
        rule = None if node.catalogname is not None else self.tables.rule(node.schemaname, node.relname)
        if rule is None:
            shown = ".".join(p for p in (node.catalogname, node.schemaname, node.relname) if p)
            open_tables = ", ".join(sorted(self.tables.tables)) or "none"
            raise SqlRefused(
                f"table {shown} is not open through the broker",
                said("open_tables", schema=self.tables.schema, tables=open_tables),
            )
        self.uses.setdefault((rule.name, action), TableUse(rule.name, rule.resource, action, rule.branch_column))
        return rule

    # --- branch scoping ----------------------------------------------------------------

    def scoped_read(self, node: Any, column: str) -> Any:
        """`(SELECT * FROM schema.table WHERE <branch filter>) AS <alias or name>` in place
        of `node`; while splicing, `node` itself, noted for the splice."""
        if self.source is not None:
            self.reads.append((node, column))
            return node
        marker = self.marker()
        inner = scoped_subselect(self.tables.schema, node.relname, node.inh, column, marker, self.marker())
        alias = node.alias if node.alias is not None else ast.Alias(aliasname=node.relname)
        return ast.RangeSubselect(lateral=False, subquery=inner, alias=alias)

    def scope_write(self, node: Any, rule: TableRule) -> None:
        """UPDATE/DELETE: AND the branch predicate into the WHERE clause."""
        if rule.branch_column is None:
            return
        if self.source is not None:
            raise _NeedsTree
        predicate = self.branch_predicate(_refname(node.relation), rule.branch_column)
        where = node.whereClause
        # the branch filter first: of two conditions that cost the same, PostgreSQL runs the first first
        node.whereClause = (
            predicate if where is None else ast.BoolExpr(boolop=enums.BoolExprType.AND_EXPR, args=(predicate, where))
        )

    def pristine(self, node: Any) -> Any:
        """A copy of a write before the walk changes it (None while splicing: a capped
        write is always printed from the tree)."""
        return None if self.source is not None else copy.deepcopy(node)

    def cap_write(self, node: Any, pristine: Any, items: str) -> None:
        """UPDATE/DELETE: AND the row cap guard into the WHERE clause of the scoped write
        (built on copies of its FROM/USING and WHERE, branch filters included) and of the
        write as sent (for employees of every branch)."""
        if self.source is not None:
            raise _NeedsTree
        check_volatile(frozenset(self.function_names))
        memo: dict[int, Any] = {}
        copied = copy.deepcopy((node.relation, getattr(node, items), node.whereClause), memo)
        # the copies' branch lists are filled in like the originals'
        self.markers += [memo[id(marker)] for marker in list(self.markers) if id(marker) in memo]
        condition, caps = guard(*copied)
        node.whereClause = and_guard(node.whereClause, condition)
        self.cap_markers += caps
        plain = copy.deepcopy((pristine.relation, getattr(pristine, items), pristine.whereClause))
        condition, caps = guard(*plain)
        pristine.whereClause = and_guard(pristine.whereClause, condition)
        self.unscoped, self.unscoped_caps = pristine, caps

    def cap_insert(self, node: Any, pristine: Any) -> None:
        """INSERT ... SELECT: the rows selected pass through a guard that fails past the cap."""
        if self.source is not None:
            raise _NeedsTree
        check_volatile(frozenset(self.function_names))
        memo: dict[int, Any] = {}
        counted = copy.deepcopy(node.selectStmt, memo)
        self.markers += [memo[id(marker)] for marker in list(self.markers) if id(marker) in memo]
        node.selectStmt, caps = capped_select(node.selectStmt, counted)
        self.cap_markers += caps
        pristine.selectStmt, self.unscoped_caps = capped_select(pristine.selectStmt, copy.deepcopy(pristine.selectStmt))
        self.unscoped = pristine

    def marker(self) -> ast.String:
        marker = ast.String(sval=_MARKER.format(0))
        self.markers.append(marker)
        return marker

    def branch_predicate(self, qualifier: str, column: str) -> ast.BoolExpr:
        """The branch filter on `qualifier.column` (see sql_splice.branch_filter)."""
        return branch_filter((qualifier, column), self.marker(), self.marker())

    def insert_branches(self, node: Any, rule: TableRule, columns: tuple[str, ...]) -> None:
        """Note each inserted row's branch (a constant or a $n), to check against the employee's."""
        column = rule.branch_column
        conflict = node.onConflictClause
        if conflict is not None and conflict.action == enums.OnConflictAction.ONCONFLICT_UPDATE:
            raise SqlRefused(
                f"the broker does not run INSERT ... ON CONFLICT DO UPDATE on {rule.name}",
                said("on_conflict"),
            )
        source = node.selectStmt
        if source is None or not source.valuesLists or source.op != enums.SetOperation.SETOP_NONE:
            # S608: messages for people, not SQL
            raise SqlRefused(
                f"the broker only runs INSERT ... VALUES on {rule.name} (not INSERT ... SELECT or DEFAULT VALUES)",  # noqa: S608
                said("insert_values", table=rule.name, column=column),
            )
        if column not in columns:
            raise SqlRefused(
                f"INSERT into {rule.name} must name the {column} column",
                said("insert_branch_column", column=column),
            )
        for row in source.valuesLists:
            self.branch_value(row[columns.index(column)] if len(row) == len(columns) else None, rule)

    def branch_value(self, value: Any, rule: TableRule) -> None:
        if isinstance(value, ast.A_Const) and isinstance(value.val, ast.String):
            self.branch_constants.append(str(value.val.sval))
        elif isinstance(value, ast.ParamRef):
            self.branch_params.append(cast(int, value.number))
        else:
            raise SqlRefused(
                f"the {rule.branch_column} of each row inserted into {rule.name} must be a string or a parameter",
                said("branch_literal"),
            )

    # --- expressions -------------------------------------------------------------------

    def expr_in(self, node: Any, level: _Level, *, output: bool) -> None:
        """Walk `node` as returned to the client (output) or not."""
        saved, self.output = self.output, output
        try:
            self.expr(node, level)
        finally:
            self.output = saved

    def expr(self, node: Any, level: _Level) -> None:
        if node is None:
            return
        if isinstance(node, tuple):
            for item in node:
                self.expr(item, level)
            return
        kind = type(node)
        if kind is ast.ColumnRef:
            self.column(node, level)
        elif kind is ast.FuncCall:
            self.function(node, level)
        elif kind is ast.SubLink:
            self.sublink(node, level)
        elif kind is ast.MultiAssignRef:
            # UPDATE SET (a, b) = (SELECT ...): the parser repeats the source for every
            # column and the printer prints only the last copy, so walk only that one
            if node.colno == node.ncolumns:
                self.expr(node.source, level)
        elif kind in _EXPRESSION_NODES:
            if kind is ast.SQLValueFunction:
                check_value_function(node)
            elif kind is ast.TypeName:
                check_type(node)
            if self.output and _is_test(node):
                self.expr_in(tuple(children(node)), level, output=False)
                return
            for child in children(node):
                self.expr(child, level)
        else:
            raise _not_analysable(node)

    def sublink(self, node: Any, level: _Level) -> None:
        if node.subLinkType == enums.SubLinkType.ARRAY_SUBLINK:
            raise SqlRefused(
                "the broker does not run ARRAY(subquery): it packs many records into one row",
                said("rows_not_arrays"),
            )
        returned = self.output and node.subLinkType in _VALUE_SUBLINKS
        in_target, mark = self.in_target, len(self.reached)
        self.expr_in(node.testexpr, level, output=False)  # compared, yielding a boolean
        reads = self.data_reads
        saved, self.output = self.output, returned
        try:
            self.query(node.subselect, level)
        finally:
            self.output = saved
        if in_target and len(self.reached) > mark:
            raise subquery_refusal()
        if returned and self.data_reads != reads:
            self.counting_subquery(node.subselect)

    def counting_subquery(self, node: Any) -> None:
        """A subquery whose value is returned and that reads mapped records must count or
        sum them: one that hands back a record's value lets one row carry as many records as
        the select list has subqueries (`SELECT (SELECT phone ... OFFSET 0), (... OFFSET 1)`)."""
        problem = None
        if node.op != enums.SetOperation.SETOP_NONE or node.valuesLists:
            problem = "is a UNION, INTERSECT, EXCEPT or VALUES"
        elif node.groupClause or node.windowClause:
            problem = "has GROUP BY or WINDOW"
        else:
            for target in node.targetList:
                problem = self.counting_aggregate(target.val)
                if problem is not None:
                    break
        if problem is not None:
            raise SqlRefused(
                "a subquery whose value is returned (in a select list, VALUES or RETURNING) may only count "
                f"or sum the records it reads, and this one {problem}: one row would carry many records",
                _PACKED_HINT,
            )

    def counting_aggregate(self, value: Any) -> str | None:
        """What is wrong with `value` as a subquery's counting aggregate; None if nothing."""
        if not isinstance(value, ast.FuncCall) or value.over is not None:
            return "returns a value that is not an aggregate"
        names = tuple(part.sval for part in cast(Any, value.funcname))
        if names[:-1] not in ((), ("pg_catalog",)) or names[-1] not in COUNTING_AGGREGATES:
            return f"returns {'.'.join(names)}(...), not count, sum, avg, bool_and/or, every, stddev or variance"
        if names[-1] != "count" and self.names_pii(value.args):
            # sum(sender_phone::bigint) over one record is that record's phone number
            return f"returns {names[-1]}(...) of a personal-data column"
        return None

    def names_pii(self, node: Any) -> bool:
        """`node` names a personal-data column of some mapped table (by its name alone)."""
        if node is None:
            return False
        if isinstance(node, tuple):
            return any(self.names_pii(item) for item in node)
        if isinstance(node, ast.ColumnRef):
            last = cast(Any, node.fields)[-1]
            return isinstance(last, ast.A_Star) or any(
                last.sval in rule.pii_columns for rule in self.tables.tables.values()
            )
        return any(self.names_pii(child) for child in children(node))

    def function(self, node: Any, level: _Level) -> None:
        names = tuple(part.sval for part in node.funcname)
        name = names[-1]
        if names[:-1] not in ((), ("pg_catalog",)) or name not in self.allowed_functions:
            raise SqlRefused(
                f"function {'.'.join(names)} is not allowed through the broker",
                said("functions"),
            )
        self.custom_functions |= name not in SAFE_FUNCTIONS
        self.function_names.add(name)
        mark = len(self.reached)
        self.expr((node.args, node.agg_order, node.agg_filter, node.over), level)
        if len(self.reached) > mark and is_aggregate(node, name):
            raise aggregate_refusal(name)

    def column(self, node: Any, level: _Level) -> None:
        """Note the PII columns named; `*` names every PII column of the tables it covers."""
        fields = node.fields
        last = fields[-1]
        qualifier = fields[-2].sval if len(fields) > 1 and isinstance(fields[-2], ast.String) else None
        star = isinstance(last, ast.A_Star)
        if qualifier is not None:
            rule = level.find(qualifier)
            if rule is not None:
                self.named(rule, tuple(rule.pii_columns) if star else (last.sval,))
            carrier = level.carrier(qualifier)
            if carrier is not None and (star or carrier.carries(last.sval)):
                if star and not self.star_ok:
                    raise whole_row_refusal(qualifier)
                self.reached.append(carrier)
        elif star:
            for rule in filter(None, level.ranges.values()):
                self.named(rule, tuple(rule.pii_columns))
            if level.carriers and not self.star_ok:
                raise whole_row_refusal("*")
            self.reached += level.carriers.values()
        else:
            self.unqualified(last.sval, level)
            self.reach(last.sval, level)

    def reach(self, column: str, level: _Level) -> None:
        """An unqualified name: a whole row if it names a FROM entry that may hold personal
        data; else every entry of the innermost level that may carry such a column."""
        if level.carrier(column) is not None:
            raise whole_row_refusal(column)
        scope: _Level | None = level
        while scope is not None:
            carriers = [carrier for carrier in scope.carriers.values() if carrier.carries(column)]
            if carriers:
                self.reached += carriers
                return
            scope = scope.parent

    def unqualified(self, column: str, level: _Level | None) -> None:
        """The innermost level with a table having `column` as PII (over-approximates on purpose)."""
        while level is not None:
            owners = [rule for rule in level.ranges.values() if rule is not None and column in rule.pii_columns]
            if owners:
                for rule in owners:
                    self.named(rule, (column,))
                return
            level = level.parent

    def named(self, rule: TableRule, columns: tuple[str, ...]) -> None:
        self.pii.update(f"{rule.name}.{column}" for column in columns if column in rule.pii_columns)

    def returning(self, node: Any, rule: TableRule, level: _Level, name: str) -> None:
        """RETURNING hands records back: it reads the target as well as writing it."""
        if node is None:
            return
        self.uses.setdefault((rule.name, "read"), TableUse(rule.name, rule.resource, "read", rule.branch_column))
        for option in node.options or ():
            level.ranges[option.value] = rule
        level.ranges.update({"old": rule, "new": rule})
        target = level.carriers[name]
        for option in node.options or ():
            level.carriers[option.value] = target
        level.carriers.update({"old": target, "new": target})
        saved, self.output = self.output, True
        try:
            self.targets(node.exprs, level)
        finally:
            self.output = saved


def _copy_query(node: Any) -> ast.SelectStmt:
    """COPY table (cols) TO STDOUT as COPY (SELECT cols FROM ONLY table) TO STDOUT."""
    columns = tuple(ast.ColumnRef(fields=(name,)) for name in node.attlist or ())
    table = node.relation
    table.inh = False  # COPY table copies that table only, not its inheritance children
    return ast.SelectStmt(
        targetList=tuple(ast.ResTarget(val=column) for column in columns or (ast.ColumnRef(fields=(ast.A_Star(),)),)),
        fromClause=(table,),
        limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT,
        op=enums.SetOperation.SETOP_NONE,
    )


def _template(root: Any, markers: list[ast.String]) -> tuple[str, ...]:
    """Print the rewritten tree, split where the branch lists go.

    The marker must appear exactly once per predicate we added: a statement that happens
    to contain the marker text itself gets the next marker."""
    for attempt in range(_MAX_MARKER_TRIES):
        marker = _MARKER.format(attempt)
        for node in markers:
            node.sval = marker
        text = RawStream()(root)
        if text.count(marker) == len(markers) and single_statement(text):
            return tuple(text.split(f"'{marker}'"))
    raise SqlRefused("the broker cannot scope this statement to your branches", NOT_ANALYSABLE)


def _capped_template(root: Any, walker: _Walker) -> tuple[tuple[str, ...], str, str]:
    """`_template` for a capped write: the scoped text's parts, the cap marker, and the
    unscoped text; each marker must appear exactly as often as it was put in."""
    for attempt in range(_MAX_MARKER_TRIES):
        marker, cap = _MARKER.format(attempt), CAP_MARKER.format(attempt)
        for node in walker.markers:
            node.sval = marker
        for node in (*walker.cap_markers, *walker.unscoped_caps):
            node.sval = cap
        text, plain = RawStream()(root), RawStream()(walker.unscoped)
        if (
            text.count(marker) == len(walker.markers)
            and text.count(cap) == len(walker.cap_markers)
            and plain.count(cap) == len(walker.unscoped_caps)
            and marker not in plain
            and single_statement(text)
            and single_statement(plain)
        ):
            return tuple(text.split(f"'{marker}'")), cap, plain
    raise SqlRefused("the broker cannot cap this statement's rows", NOT_ANALYSABLE)


def single_statement(text: str) -> bool:
    """The printed statement re-parses as one statement (guards against printer surprises)."""
    try:
        return len(split(text)) == 1  # parses without building Python nodes: ~4 µs
    except ParseError:
        return False


def children(node: Any) -> Iterator[Any]:
    kind = type(node)
    names = _CHILD_SLOTS.get(kind)
    if names is None:
        names = _CHILD_SLOTS[kind] = _child_slots(kind)
    for name in names:
        value = getattr(node, name)
        if isinstance(value, ast.Node | tuple):
            yield value


_CHILD_SLOTS: dict[type, tuple[str, ...]] = {}


def _child_slots(kind: type) -> tuple[str, ...]:
    """The slots of a node type that may hold a node or a list (not locations, names, flags)."""
    slots = getattr(kind, "__slots__", ())
    if not isinstance(slots, dict):
        return tuple(slots)
    kept = []
    for name, info in slots.items():
        accepted = info.py_type if isinstance(info.py_type, tuple) else (info.py_type,)
        if any(t is tuple or t is list or (isinstance(t, type) and issubclass(t, ast.Node)) for t in accepted):
            kept.append(name)
    return tuple(kept)


def _is_test(node: Any) -> bool:
    """`node` yields a boolean from its operands (a comparison, IS NULL...), not their values."""
    if isinstance(node, ast.A_Expr):
        if node.kind == enums.A_Expr_Kind.AEXPR_OP:
            name = node.name or ()
            return len(name) == 1 and name[0].sval in _COMPARISONS
        return node.kind in _TESTS
    return isinstance(node, ast.NullTest | ast.BooleanTest)


def _is_star_target(target: Any) -> bool:
    value = getattr(target, "val", None)
    return isinstance(value, ast.ColumnRef) and isinstance(cast(Any, value.fields)[-1], ast.A_Star)


def _carrying_columns(target: Any, reached: list[Carrier], columns: set[str]) -> set[str] | None:
    """`columns` with the output column(s) `target` carries personal data in; None: unknown."""
    if _is_star_target(target):
        for carrier in reached:
            if carrier.columns is None:
                return None
            columns |= carrier.columns
        return columns
    name = target.name or output_name(target.val)
    if name is None:
        return None
    columns.add(name)
    return columns


def _refname(node: Any) -> str:
    return str(node.alias.aliasname if node.alias is not None else node.relname)


def _not_analysable(node: Any) -> SqlRefused:
    return SqlRefused(f"the broker cannot check this part of the statement ({type(node).__name__})", NOT_ANALYSABLE)
