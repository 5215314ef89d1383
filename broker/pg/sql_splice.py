"""Branch scoping of reads by splicing the statement's own text.

Printing a whole rewritten parse tree costs far more than parsing it (pglast's printer
walks every node in Python), and most statements an app sends are reads whose only
change is that each branch-scoped table `t` in a FROM list becomes
`(SELECT * FROM schema.t WHERE <branch filter>) AS t` (see `branch_filter`). That change can
be made in the text as sent: the parser gives each table reference's position, the
scanner (PostgreSQL's own lexer) gives the exact span of its possibly qualified,
possibly quoted name, and only that span is replaced, with the same sub-select the
printer would print. The text keeps everything else byte for byte (literals, comments,
$n), so its meaning is the printed tree's; tests re-parse both and compare the trees.

Anything not plainly `FROM|JOIN|,|( [schema .] name [alias]` (ONLY, `name *`, TABLE t,
names the scanner spells differently from the parser) returns None, and the caller
prints the rewritten tree instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from pglast import ast, enums
from pglast.parser import ParseError, scan
from pglast.stream import RawStream

_BEFORE = frozenset({"FROM", "JOIN", "ASCII_44", "ASCII_40"})  # FROM, [... ] JOIN, ',', '('
_DOT = "ASCII_46"
_NOT_AFTER = frozenset({"ASCII_42", _DOT})  # `t *` (inheritance), a longer dotted name
COMMENT_TOKENS = frozenset({"C_COMMENT", "SQL_COMMENT"})
"""The scanner's names for comments, which carry no meaning for the parser."""
_PLACEHOLDER = "broker_branches_placeholder"


SPLIT = "\x00"
"""Marks a further place for the branch list inside an edit's text (SQL text never holds
NUL: the analyser refuses it), so one edit can carry the list twice."""


def branch_filter(column: tuple[str, ...], first: ast.String, second: ast.String) -> ast.BoolExpr:
    """`array_position(CAST(first AS text[]), column) IS NOT NULL AND column = ANY(CAST(second AS text[]))`.

    Both say the same. PostgreSQL runs a scan's conditions cheapest first, and `= ANY`
    costs more the more branches it lists: with a few branches, a statement's own
    condition (a division that fails on one row) would run first, on every branch's rows,
    and its error would tell about them. array_position costs one function call, the least
    any condition costs, and a tie keeps this filter first. `= ANY` stays for index scans."""

    def text_array(value: ast.String) -> ast.TypeCast:
        return ast.TypeCast(
            arg=ast.A_Const(isnull=False, val=value),
            typeName=ast.TypeName(names=(ast.String(sval="pg_catalog"), ast.String(sval="text")),
                                  arrayBounds=(ast.Integer(ival=-1),), typemod=-1),
        )  # fmt: skip

    reference = ast.ColumnRef(fields=tuple(ast.String(sval=name) for name in column))
    position = ast.FuncCall(
        funcname=(ast.String(sval="pg_catalog"), ast.String(sval="array_position")),
        args=(text_array(first), reference),
        funcformat=enums.CoercionForm.COERCE_EXPLICIT_CALL,
    )
    return ast.BoolExpr(
        boolop=enums.BoolExprType.AND_EXPR,
        args=(
            ast.NullTest(arg=position, nulltesttype=enums.NullTestType.IS_NOT_NULL),
            ast.A_Expr(kind=enums.A_Expr_Kind.AEXPR_OP_ANY, name=(ast.String(sval="="),), lexpr=reference,
                       rexpr=text_array(second)),
        ),
    )  # fmt: skip


def scoped_subselect(
    schema: str, relname: str, inh: bool, column: str, first: ast.String, second: ast.String
) -> ast.SelectStmt:
    """`SELECT * FROM schema.relname WHERE <branch_filter(column)>`."""
    return ast.SelectStmt(
        targetList=(ast.ResTarget(val=ast.ColumnRef(fields=(ast.A_Star(),))),),
        fromClause=(ast.RangeVar(schemaname=schema, relname=relname, inh=inh, relpersistence="p"),),
        whereClause=branch_filter((column,), first, second),
        limitOption=enums.LimitOption.LIMIT_OPTION_DEFAULT,
        op=enums.SetOperation.SETOP_NONE,
    )


@lru_cache(maxsize=1024)
def _printed(schema: str, relname: str, column: str) -> tuple[str, str] | None:
    """The printer's text of the scoped sub-select (in parentheses), split at the branch list."""
    placeholders = (ast.String(sval=_PLACEHOLDER), ast.String(sval=_PLACEHOLDER))
    inner = scoped_subselect(schema, relname, True, column, *placeholders)
    text = "(" + RawStream()(inner) + ")"
    pieces = text.split(f"'{_PLACEHOLDER}'")
    return (pieces[0], pieces[1] + SPLIT + pieces[2]) if len(pieces) == 3 else None


Edit = tuple[int, int, str, str]
"""One splice: the name spanning text[start:end] becomes `before` <branch list> `after`."""


def splice_edits(text: str, base: int, schema: str, reads: Sequence[tuple[Any, str]]) -> tuple[Edit, ...] | None:
    """The edits that make every (RangeVar, branch column) in `reads` a scoped sub-select,
    in text order, with spans in characters of `text`; None when any of them is not a
    plain name in a FROM list. `base` is where `text` starts in the string the parser saw
    (RangeVar locations count from there)."""
    try:
        tokens = [token for token in scan(text) if token.name not in COMMENT_TOKENS]
    except ParseError:
        return None
    at = {token.start: index for index, token in enumerate(tokens)}
    edits: list[Edit] = []
    cursor = 0
    for node, column in sorted(reads, key=lambda read: int(read[0].location)):
        start = node.location - base
        index = at.get(start)
        if index is None or index == 0 or start < cursor or not node.inh or node.catalogname is not None:
            return None
        if tokens[index - 1].name not in _BEFORE:
            return None
        names = (node.relname,) if node.schemaname is None else (node.schemaname, node.relname)
        last = index + 2 * len(names) - 2
        if last >= len(tokens):
            return None
        for offset, name in enumerate(names):
            token = tokens[index + 2 * offset]
            if _identifier(text[token.start : token.end + 1]) != name:
                return None
            if offset and tokens[index + 2 * offset - 1].name != _DOT:
                return None
        if last + 1 < len(tokens) and tokens[last + 1].name in _NOT_AFTER:
            return None
        printed = _printed(schema, node.relname, column)
        if printed is None:
            return None
        end = tokens[last].end + 1
        name_text = text[tokens[last].start : end]
        edits.append((start, end, printed[0], printed[1] + ("" if node.alias is not None else " AS " + name_text)))
        cursor = end
    return tuple(edits)


def ended(text: str) -> str:
    """`text` safe to append to: a trailing -- comment would swallow what comes after it."""
    return text + "\n" if "--" in text.rpartition("\n")[2] else text


def apply_edits(text: str, edits: Sequence[Edit]) -> tuple[str, ...]:
    """`text` with `edits` made (in text order, not overlapping), split where the branch lists go."""
    parts: list[str] = []
    cursor = 0
    tail = ""
    for start, end, before, after in edits:
        parts.append(tail + text[cursor:start] + before)
        tail = after
        cursor = end
    last_part = tail + text[cursor:]
    parts.append(ended(last_part))
    return tuple(piece for part in parts for piece in part.split(SPLIT))


def _identifier(spelled: str) -> str | None:
    """The name a spelled identifier stands for; None for spellings not worth decoding here."""
    if spelled.startswith('"'):
        return spelled[1:-1].replace('""', '"') if len(spelled) >= 2 and spelled.endswith('"') else None
    if not spelled.isascii() or spelled[:2].upper() == "U&":
        return None
    return spelled.lower()  # PostgreSQL folds unquoted names' ASCII letters only
