"""What a SQL string asks for, decided with PostgreSQL's own grammar (pglast / libpg_query).

`analyse` turns a query string into Statements (kind, tables and actions, a bound on the
rows it can return, PII columns named) or refuses it. It is pure and its results are
immutable, so the door's StatementCache keeps them by text or by shape. `scoped_sql` puts each employee's
branch list into the statements; `row_bound`, `branch_values` and
`check_insert_branches` resolve what only the Bind message knows.

Fail closed: a statement kind, node type or function the broker does not know is
refused, never passed through. An empty string (or only comments) is `[]`: there is no
statement, and the session answers it like PostgreSQL does (EmptyQueryResponse).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from pglast import ast, enums, fingerprint, parse_sql
from pglast.parser import ParseError

from broker.messages.said import said
from broker.messages.shipped import english
from broker.pg.setting import PINNED_SETTINGS, SHOWN_SETTINGS, timeout_refusal
from broker.pg.sql_refused import SqlRefused
from broker.pg.sql_scope import (
    Found,
    Source,
    TableUse,
    children,
    walk_copy,
    walk_delete,
    walk_insert,
    walk_select,
    walk_update,
)
from broker.pg.sql_splice import Edit, ended
from broker.pg.sql_write_cap import check_inserted_rows, with_cap
from broker.pg.startup import PASSED_ON
from broker.policy.table import TableMap

__all__ = [
    "RowBound",
    "SqlRefused",
    "Statement",
    "StatementKind",
    "TableUse",
    "analyse",
    "branch_values",
    "check_insert_branches",
    "row_bound",
    "scoped_sql",
]

StatementKind = Literal["select", "insert", "update", "delete", "copy_out", "transaction", "set", "show", "deallocate"]


@dataclass(frozen=True, slots=True)
class RowBound:
    """An upper bound on the rows a statement can return; both None: unbounded."""

    constant: int | None
    """A literal bound: LIMIT 10 -> 10; statements returning no rows -> 0."""
    param: int | None
    """The 1-based $n of a parameter LIMIT, decided at Bind."""


UNBOUNDED = RowBound(None, None)
NO_ROWS = RowBound(0, None)
ONE_ROW = RowBound(1, None)


@dataclass(frozen=True, slots=True)
class Statement:
    sql: str
    """This statement's text as sent (one statement, no trailing semicolon)."""
    fingerprint: str
    kind: StatementKind
    uses: tuple[TableUse, ...]
    """Every mapped table referenced, deduplicated by (table, action), in the order the
    walk meets them (WITH, FROM, then the rest)."""
    rows: RowBound
    pii: tuple[str, ...]
    """PII columns named, as "table.column", sorted; `*` counts as all of the table's."""
    branch_params: tuple[int, ...] = ()
    """INSERT: the $n giving inserted rows' branches, checked at Bind."""
    branch_constants: tuple[str, ...] = ()
    """INSERT: the literal branches of inserted rows."""
    scoped_parts: tuple[str, ...] = ()
    """The rewritten text split where the branch list goes; () when nothing needs scoping."""
    deallocates: tuple[str, ...] | None = None
    """DEALLOCATE: the prepared statement it drops, () for ALL; None for other statements.
    The session forgets them too, or it would refuse to prepare the name again."""
    cap_marker: str | None = None
    """UPDATE/DELETE of a mapped table: where `scoped_sql` puts the employee's row cap."""
    capped_sql: str | None = None
    """UPDATE/DELETE of a mapped table, for employees of every branch: the text with its cap guard."""
    inserted_rows: int = 0
    """INSERT ... VALUES into a mapped table: the rows it adds, checked against the cap."""
    header_rows: int = 0
    """COPY ... TO STDOUT WITH (HEADER): the server's first CopyData is the column names,
    not a record, and is not counted (1); 0 for every other statement, and for a HEADER
    option whose value the broker does not read as surely true (counting one line too
    many is the safe mistake)."""

    def resources(self) -> dict[tuple[str, str], tuple[str, ...]]:
        """(resource, action) -> the tables through which the statement touches it."""
        touched: dict[tuple[str, str], tuple[str, ...]] = {}
        for use in self.uses:
            key = (use.resource, use.action)
            touched[key] = (*touched.get(key, ()), use.table)
        return touched


def analyse(sql: str, tables: TableMap) -> list[Statement]:
    """Every statement in `sql` (a simple-query string may hold several), or SqlRefused
    for the first one the broker will not run. Syntax errors are SQLSTATE 42601."""
    return [statement for statement, _ in analyse_with_literals(sql, tables)]


@dataclass(frozen=True, slots=True)
class Literals:
    """How a Statement's fields that depend on its text were made (for sql_shape)."""

    natural: RowBound | None
    """The rows bound without the top-level LIMIT when `rows` is the tighter of that and a
    literal LIMIT number; None: `rows` does not come from a literal."""
    edits: tuple[Edit, ...] | None
    """The splices that made scoped_parts from the statement's text (character spans of
    it); None: the rewritten tree was printed."""


def analyse_with_literals(sql: str, tables: TableMap) -> list[tuple[Statement, Literals]]:
    """`analyse`, with where each statement's literal-dependent fields come from."""
    if "\0" in sql:
        raise SqlRefused("the statement contains a NUL character", said("no_nul"), "42601")
    try:
        raws = parse_sql(sql)
    except ParseError as exc:
        raise SqlRefused(str(exc), said("check_syntax"), "42601") from None
    return [_statement(_source_of(sql, raw), raw.stmt, tables) for raw in raws]


def scoped_sql(statements: Sequence[Statement], branches: frozenset[str] | None, write_cap: int | None = None) -> str:
    """The SQL to send: every branch-scoped table seen only through `branches` (None: all),
    and every UPDATE/DELETE of a mapped table failing at the server past `write_cap` rows
    (None: no cap; see sql_write_cap).

    Also refuses an INSERT whose literal branch is not one of `branches`, or that adds more
    rows than `write_cap`."""
    texts = []
    for statement in statements:
        if branches is not None and statement.branch_constants:
            _check_branches(statement, branches, statement.branch_constants)
        if statement.inserted_rows:
            check_inserted_rows(statement.inserted_rows, write_cap)
        if statement.cap_marker is not None and statement.capped_sql is not None:
            if branches is not None and statement.scoped_parts:
                text = _array_literal(branches).join(statement.scoped_parts)
            else:
                text = statement.capped_sql
            texts.append(with_cap(text, statement.cap_marker, write_cap))
        elif branches is None or not statement.scoped_parts:
            texts.append(ended(statement.sql))
        else:
            texts.append(_array_literal(branches).join(statement.scoped_parts))
    return "; ".join(texts)


def row_bound(bound: RowBound, params: Sequence[bytes | None], formats: Sequence[int]) -> int | None:
    """The bound as an int at Bind; None: unbounded (also a NULL LIMIT, which means no limit)."""
    if bound.param is None:
        return bound.constant
    value = _param(bound.param, params)
    if value is None:
        return None
    return _decode_limit(value, _format_of(formats, bound.param, len(params)), bound.param)


def branch_values(statement: Statement, params: Sequence[bytes | None], formats: Sequence[int]) -> list[str]:
    """The branch of every row an INSERT adds: its literals, then its parameters read as text."""
    values = list(statement.branch_constants)
    for number in statement.branch_params:
        value = _param(number, params)
        if value is None:
            raise SqlRefused(f"parameter ${number} (the branch of an inserted row) is NULL", said("send_branch"))
        # text and varchar travel as the same UTF-8 bytes in text and binary format
        _format_of(formats, number, len(params))
        try:
            values.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            raise SqlRefused(f"parameter ${number} is not UTF-8 text", said("branch_as_text"), "22021") from None
    return values


def check_insert_branches(
    statement: Statement, branches: frozenset[str] | None, params: Sequence[bytes | None], formats: Sequence[int]
) -> None:
    """Refuse an INSERT adding a row outside `branches` (None: every branch is allowed)."""
    if branches is None or not (statement.branch_constants or statement.branch_params):
        return
    _check_branches(statement, branches, branch_values(statement, params, formats))


# --- statements ------------------------------------------------------------------------

_Shape = tuple[StatementKind, RowBound, Found, RowBound | None]
"""kind, rows, what the walk found, and the bound without LIMIT when rows came from a literal LIMIT."""
_NOTHING = Found((), (), ())


def _statement(source: Source, node: Any, tables: TableMap) -> tuple[Statement, Literals]:
    handler = _HANDLERS.get(type(node))
    if handler is None:
        raise _refusal(node)
    text = source[0]
    kind, rows, found, limit = handler(node, tables, source)
    statement = Statement(
        sql=text,
        fingerprint=fingerprint(text),
        kind=kind,
        uses=found.uses,
        rows=rows,
        pii=found.pii,
        branch_params=found.branch_params,
        branch_constants=found.branch_constants,
        scoped_parts=found.parts,
        deallocates=_deallocated(node),
        cap_marker=found.cap_marker,
        capped_sql=found.capped_sql,
        inserted_rows=_inserted_rows(node, found),
        header_rows=_header_rows(node),
    )
    return statement, Literals(limit, found.edits)


_SURELY_TRUE = frozenset({"true", "on", "1", "yes", "t", "y"})
"""Spellings PostgreSQL's parse_bool reads as true (it also takes prefixes such as "tru"):
a subset, so the broker never takes a row for a header the server did not send."""


def _header_rows(node: Any) -> int:
    """1 for COPY ... TO with exactly one HEADER option that is surely on (HEADER alone,
    HEADER true/on/1/yes, the old CSV HEADER syntax); else 0. Two HEADER options are an
    error at the server, and HEADER MATCH is for COPY FROM only."""
    if not isinstance(node, ast.CopyStmt) or node.is_from:
        return 0
    headers = [option.arg for option in node.options or () if option.defname == "header"]
    if len(headers) != 1:
        return 0
    value = headers[0]
    if value is None:
        return 1
    if isinstance(value, ast.Boolean):
        return 1 if value.boolval else 0
    if isinstance(value, ast.Integer):
        return 1 if value.ival == 1 else 0
    if isinstance(value, ast.String):
        return 1 if (value.sval or "").lower() in _SURELY_TRUE else 0
    return 0


def _inserted_rows(node: Any, found: Found) -> int:
    if not isinstance(node, ast.InsertStmt) or not any(use.action == "write" for use in found.uses):
        return 0
    select: Any = node.selectStmt
    if select is None:
        return 1  # DEFAULT VALUES
    return len(select.valuesLists) if select.valuesLists else 0  # INSERT ... SELECT: guarded at the server


def _deallocated(node: Any) -> tuple[str, ...] | None:
    if not isinstance(node, ast.DeallocateStmt):
        return None
    return () if node.isall or node.name is None else (str(node.name),)


def _select(node: Any, tables: TableMap, source: Source) -> _Shape:
    limit = _limit_bound(node)
    found = walk_select(node, tables, source)
    rows, literal = _bounded(_natural_bound(node, found), limit)
    return "select", rows, found, literal


def _bounded(natural: RowBound, limit: RowBound) -> tuple[RowBound, RowBound | None]:
    """The tighter bound, and `natural` when a literal LIMIT took part."""
    return _tighter(natural, limit), (None if limit.constant is None else natural)


def _insert(node: Any, tables: TableMap, source: Source) -> _Shape:
    select = node.selectStmt
    literal = None
    if node.returningClause is None:
        rows = NO_ROWS
    elif select is None:
        rows = ONE_ROW  # DEFAULT VALUES
    else:
        natural = _natural_bound(select, _NOTHING, custom_functions=True)
        rows, literal = _bounded(natural, _limit_bound(select))
    return "insert", rows, walk_insert(node, tables, source), literal


def _update(node: Any, tables: TableMap, source: Source) -> _Shape:
    # UPDATE/DELETE ... RETURNING: as many rows as match, unknown in advance; clients
    # wanting a bound select the rows (with LIMIT) and change them by key
    rows = NO_ROWS if node.returningClause is None else UNBOUNDED
    return "update", rows, walk_update(node, tables, source), None


def _delete(node: Any, tables: TableMap, source: Source) -> _Shape:
    rows = NO_ROWS if node.returningClause is None else UNBOUNDED
    return "delete", rows, walk_delete(node, tables, source), None


def _copy(node: Any, tables: TableMap, source: Source) -> _Shape:
    if node.is_from:
        raise SqlRefused("the broker does not run COPY ... FROM", said("copy_from"))
    if node.filename is not None or node.is_program:
        raise SqlRefused(
            "the broker does not run COPY to a file or program on the database server", said("copy_to_stdout")
        )
    query = node.query  # walk_copy turns COPY table into COPY (query) when it scopes it
    found = walk_copy(node, tables, source)
    if query is None:
        return "copy_out", UNBOUNDED, found, None  # COPY table TO STDOUT: the whole table
    rows, literal = _bounded(_natural_bound(query, found), _limit_bound(query))
    return "copy_out", rows, found, literal


_TRANSACTION_KINDS = frozenset({
    enums.TransactionStmtKind.TRANS_STMT_BEGIN, enums.TransactionStmtKind.TRANS_STMT_START,
    enums.TransactionStmtKind.TRANS_STMT_COMMIT, enums.TransactionStmtKind.TRANS_STMT_ROLLBACK,
    enums.TransactionStmtKind.TRANS_STMT_SAVEPOINT, enums.TransactionStmtKind.TRANS_STMT_RELEASE,
    enums.TransactionStmtKind.TRANS_STMT_ROLLBACK_TO,
})  # fmt: skip


def _transaction(node: Any, tables: TableMap, source: Source) -> _Shape:
    if node.kind not in _TRANSACTION_KINDS:
        raise SqlRefused(
            "the broker does not run two-phase commit (PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED)",
            said("begin_commit"),
        )
    return "transaction", NO_ROWS, _NOTHING, None


_MULTI_SETTINGS = frozenset({"TRANSACTION", "SESSION CHARACTERISTICS"})


def _set(node: Any, tables: TableMap, source: Source) -> _Shape:
    """SET/RESET of ordinary settings; the ones the broker relies on stay as they are."""
    if node.kind == enums.VariableSetKind.VAR_SET_MULTI and node.name in _MULTI_SETTINGS:
        return "set", NO_ROWS, _NOTHING, None
    if node.kind in (enums.VariableSetKind.VAR_RESET_ALL, enums.VariableSetKind.VAR_SET_MULTI):
        raise SqlRefused("the broker does not run RESET ALL or SET of several settings at once",
                         said("one_setting"))  # fmt: skip
    name = (node.name or "").lower()  # setting names are case-insensitive, quoted or not
    if "." in name:
        raise SqlRefused(
            f"custom setting {name} may not be changed through the broker",
            said("custom_setting"),
        )
    if name in PINNED_SETTINGS and not (name == "client_encoding" and _is_utf8(node)):
        raise SqlRefused(f"setting {name} may not be changed through the broker", PINNED_SETTINGS[name])
    if name not in PASSED_ON and name != "client_encoding":
        raise SqlRefused(
            f"setting {name} may not be changed through the broker",
            said("settings_allowed", settings=", ".join(sorted(PASSED_ON))),
        )
    if name == "statement_timeout" and node.kind == enums.VariableSetKind.VAR_SET_VALUE:
        refusal = timeout_refusal(_setting_text(node))
        if refusal is not None:
            raise SqlRefused(english(refusal), said("reset_timeout"), "22023")
    return "set", NO_ROWS, _NOTHING, None


def _setting_text(node: Any) -> str:
    """The one value of a SET, as text ("" when it is not one plain constant)."""
    if len(node.args or ()) != 1 or not isinstance(node.args[0], ast.A_Const):
        return ""
    value = node.args[0].val
    for kind, attribute in ((ast.String, "sval"), (ast.Integer, "ival"), (ast.Float, "fval")):
        if isinstance(value, kind):
            return str(getattr(value, attribute))
    return ""


def _is_utf8(node: Any) -> bool:
    if node.kind != enums.VariableSetKind.VAR_SET_VALUE or len(node.args or ()) != 1:
        return False
    (value,) = node.args
    text = str(value.val.sval) if isinstance(value, ast.A_Const) and isinstance(value.val, ast.String) else ""
    return re.sub(r"[^a-z0-9]", "", text.lower()) in ("utf8", "unicode")


def _show(node: Any, tables: TableMap, source: Source) -> _Shape:
    name = (node.name or "").lower()
    if name not in SHOWN_SETTINGS:
        raise SqlRefused(
            f"SHOW {name[:60]} is not answered through the broker",
            said("show_settings"),
        )
    return "show", ONE_ROW, _NOTHING, None


def _deallocate(node: Any, tables: TableMap, source: Source) -> _Shape:
    return "deallocate", NO_ROWS, _NOTHING, None


_HANDLERS: dict[type[ast.Node], Callable[[Any, TableMap, Source], _Shape]] = {
    ast.SelectStmt: _select,
    ast.InsertStmt: _insert,
    ast.UpdateStmt: _update,
    ast.DeleteStmt: _delete,
    ast.CopyStmt: _copy,
    ast.TransactionStmt: _transaction,
    ast.VariableSetStmt: _set,
    ast.VariableShowStmt: _show,
    ast.DeallocateStmt: _deallocate,
}

# --- refusals by statement type --------------------------------------------------------

_PLAIN = said("plain_statements")
_CURSOR = said("cursors")
_PREPARE = said("prepared_statements")
_SCHEMA = said("schema_changes")
_NOTIFY = said("notifications")
_REFUSED = {
    "DoStmt": ("DO blocks", _PLAIN),
    "CallStmt": ("CALL", _PLAIN),
    "ExplainStmt": ("EXPLAIN", said("explain")),
    "DeclareCursorStmt": ("cursors (DECLARE)", _CURSOR),
    "FetchStmt": ("cursors (FETCH, MOVE)", _CURSOR),
    "ClosePortalStmt": ("cursors (CLOSE)", _CURSOR),
    "PrepareStmt": ("SQL-level PREPARE", _PREPARE),
    "ExecuteStmt": ("SQL-level EXECUTE", _PREPARE),
    "ListenStmt": ("LISTEN", _NOTIFY),
    "UnlistenStmt": ("UNLISTEN", _NOTIFY),
    "NotifyStmt": ("NOTIFY", _NOTIFY),
    "VacuumStmt": ("VACUUM or ANALYZE", said("maintenance")),
    "LockStmt": ("LOCK TABLE", said("lock_rows")),
    "DiscardStmt": ("DISCARD", said("discard")),
    "TruncateStmt": ("TRUNCATE", _SCHEMA),
    "GrantStmt": ("GRANT or REVOKE", _SCHEMA),
    "GrantRoleStmt": ("GRANT or REVOKE", _SCHEMA),
    "MergeStmt": ("MERGE", said("merge")),
    "CreateTableAsStmt": ("CREATE TABLE AS", _SCHEMA),
}
_SCHEMA_PREFIXES = (
    "Create", "Alter", "Drop", "Rename", "Comment", "SecLabel", "Reindex", "Cluster", "Refresh", "Import",
    "View", "Index", "Rule", "Define", "CompositeType", "ReassignOwned", "ReplicaIdentity",
)  # fmt: skip
_ALLOWED = said("allowed_statements")
"""The hints above are `pg` texts, worded in the session's locale; the labels are English
causes (the reason's message shows them in English; other locales say it in general)."""


def _refusal(node: Any) -> SqlRefused:
    name = type(node).__name__
    if name in _REFUSED:
        label, hint = _REFUSED[name]
    elif name.startswith(_SCHEMA_PREFIXES):
        label, hint = "schema changes (CREATE, ALTER, DROP...)", _SCHEMA
    else:
        label, hint = f"this kind of statement ({name.removesuffix('Stmt')})", _ALLOWED
    return SqlRefused(f"the broker does not run {label}", hint)


# --- row bounds ------------------------------------------------------------------------

_INTEGER_TYPES = frozenset({"int2", "int4", "int8"})
_AGGREGATES = frozenset({
    "count", "sum", "avg", "min", "max", "bool_and", "bool_or", "every",
    "stddev", "stddev_pop", "stddev_samp", "variance", "var_pop", "var_samp",
})  # fmt: skip


def _limit_bound(node: Any) -> RowBound:
    """LIMIT n / FETCH FIRST n ROWS ONLY; WITH TIES can return more than n, so it bounds nothing."""
    count = _without_integer_cast(node.limitCount)
    if count is None or node.limitOption == enums.LimitOption.LIMIT_OPTION_WITH_TIES:
        return UNBOUNDED
    if isinstance(count, ast.ParamRef):
        return RowBound(None, count.number)
    if isinstance(count, ast.A_Const):
        if count.isnull:  # LIMIT ALL, LIMIT NULL
            return UNBOUNDED
        if isinstance(count.val, ast.Integer):
            return RowBound(max(cast(int, count.val.ival), 0), None)
        if isinstance(count.val, ast.Float) and str(count.val.fval).isdigit():  # beyond 32 bits
            return RowBound(int(str(count.val.fval)), None)
    raise SqlRefused("the broker cannot bound this LIMIT: it must be a whole number or a parameter", said("limit_form"))


def _without_integer_cast(node: Any) -> Any:
    if not isinstance(node, ast.TypeCast) or node.typeName is None or node.typeName.arrayBounds:
        return node
    names = node.typeName.names or ()
    return node.arg if names and names[-1].sval in _INTEGER_TYPES else node


def _natural_bound(node: Any, found: Found, custom_functions: bool = False) -> RowBound:
    """Rows a SELECT returns whatever its LIMIT: VALUES lists, no FROM, or an aggregate without GROUP BY.

    A function from the table map's own list might return a set: then no natural bound."""
    if node.valuesLists:
        return RowBound(len(node.valuesLists), None)
    if node.op != enums.SetOperation.SETOP_NONE or custom_functions or found.custom_functions:
        return UNBOUNDED
    if not node.fromClause:
        return ONE_ROW
    # the walk saw every function call: without an aggregate's name anywhere, none is at this level
    if not node.groupClause and not _AGGREGATES.isdisjoint(found.function_names) and _has_aggregate(node.targetList):
        return ONE_ROW
    return UNBOUNDED


def _has_aggregate(node: Any) -> bool:
    """An aggregate call at this query level (not in a subquery, not a window function)."""
    if isinstance(node, tuple):
        return any(_has_aggregate(item) for item in node)
    if not isinstance(node, ast.Node) or isinstance(node, ast.SubLink | ast.SelectStmt):
        return False
    if isinstance(node, ast.FuncCall) and node.over is None and (node.funcname or ())[-1].sval in _AGGREGATES:
        return True
    return any(_has_aggregate(child) for child in children(node))


def _tighter(first: RowBound, second: RowBound) -> RowBound:
    """The smaller of two bounds; a constant beats a parameter, anything beats unbounded."""
    if first.constant is not None and second.constant is not None:
        return first if first.constant <= second.constant else second
    if first.constant is not None:
        return first
    if second != UNBOUNDED:
        return second
    return first


# --- parameters and literals -----------------------------------------------------------

_DECIMAL = re.compile(r"\s*[+-]?[0-9]+\s*\Z", re.ASCII)


def _param(number: int, params: Sequence[bytes | None]) -> bytes | None:
    if not 1 <= number <= len(params):
        raise SqlRefused(f"parameter ${number} was not sent", said("bind_every_parameter", number=number), "08P01")
    return params[number - 1]


def _format_of(formats: Sequence[int], number: int, count: int) -> int:
    """Bind's rule: no codes = all text, one code = for all, else one code per parameter."""
    if len(formats) in (0, 1):
        code = formats[0] if formats else 0
    elif len(formats) == count:
        code = formats[number - 1]
    else:
        raise SqlRefused("Bind has a format code count that matches neither 1 nor the parameters", None, "08P01")
    if code not in (0, 1):
        raise SqlRefused(f"parameter ${number} has unknown format code {code}", said("format_codes"), "08P01")
    return code


def _decode_limit(value: bytes, code: int, number: int) -> int:
    """A LIMIT parameter: decimal ASCII in text format, a 2/4/8-byte big-endian integer in binary."""
    if code == 1 and len(value) in (2, 4, 8):
        return max(int.from_bytes(value, "big", signed=True), 0)
    if code == 0:
        text = value.decode("ascii", errors="replace")
        if _DECIMAL.match(text):
            return max(int(text), 0)  # a negative LIMIT is an error in PostgreSQL: no rows
    raise SqlRefused(f"parameter ${number} (the LIMIT) is not a whole number", said("limit_integer"), "22023")


def _check_branches(statement: Statement, branches: frozenset[str], values: Sequence[str]) -> None:
    outside = [value for value in values if value not in branches]
    if not outside:
        return
    use = next(use for use in statement.uses if use.action == "write" and use.branch_column)
    mine = ", ".join(sorted(branches))
    held = f"of your branch ({mine})" if len(branches) == 1 else f"of your branches ({mine})"
    raise SqlRefused(
        f"you may only insert {use.resource} records {held}" if branches else
        f"you may not insert {use.resource} records: you hold no branch",
        said("insert_own_branch", column=use.branch_column, branches=mine, value=repr(outside[0])) if branches else
        said("insert_no_branch", column=use.branch_column, value=repr(outside[0])),
    )  # fmt: skip


def _array_literal(branches: frozenset[str]) -> str:
    """`'{"B1","B2"}'` quoted for SQL (E'...' when a code holds a backslash)."""
    elements = ",".join('"' + code.replace("\\", "\\\\").replace('"', '\\"') + '"' for code in sorted(branches))
    literal = "{" + elements + "}"
    if "\\" in literal:
        return "E'" + literal.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + literal.replace("'", "''") + "'"


def _source_of(sql: str, raw: Any) -> Source:
    """The statement's text (stripped) and where that text starts in `sql`, in characters."""
    start = raw.stmt_location
    end = start + raw.stmt_len if raw.stmt_len else len(sql)
    segment = sql[start:end]
    text = segment.strip()
    return text, start + (len(segment) - len(segment.lstrip()) if text else 0)
