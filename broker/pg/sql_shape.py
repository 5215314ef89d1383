"""Reusing an analysis for statements that differ from an analysed one only in literal values.

Apps using the simple query protocol put values in the text (`... WHERE aid = 48213`), so
nearly every text is new and a cache by text misses. A statement's SHAPE is its token
stream from PostgreSQL's own scanner with the values of literal tokens (strings, numbers,
bit strings) left out. Two texts with one shape give the parser the same tokens but for
those values, so the same tree but for its constants; `analyse` reads constants in only
three places, each re-read here from the new text:

* the row bound, when it is a literal LIMIT / FETCH FIRST number (its token is recorded);
* an INSERT's literal branches (their tokens are recorded);
* the scoped text: the splices are recorded as the token indexes of the table names and
  made again at the new text's character offsets.

The statement text is the new text; the fingerprint is the old one (libpg_query's
fingerprint leaves constants out); kind, tables, PII columns and $n are the tree's.

Not shaped (a full analyse every time, cached by text only): several statements in one
string, SET/RESET/SHOW and other non-data statements (a setting's value matters),
refusals (their messages may quote literals), statements whose scoped text was printed
from a rewritten tree (UPDATE/DELETE of a branch-scoped table, COPY of one: the printer
re-spells literals), U&"..." / UESCAPE (the escape literal changes names), casts to the
reg* types (the literal names a catalog object), `float(p)` (the grammar checks p), and
any re-read literal in a form not decoded here (E'...', $$...$$, 0x1F, negative or
non-integer LIMITs): those texts fall back to a full analyse.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pglast.parser import ParseError, parse_sql_json, scan

from broker.pg.sql import Literals, RowBound, Statement, _tighter
from broker.pg.sql_scope import single_statement
from broker.pg.sql_splice import COMMENT_TOKENS, apply_edits

_LITERALS = frozenset({"SCONST", "ICONST", "FCONST", "BCONST", "XCONST"})
_UNSHAPED_TOKENS = frozenset({"UIDENT", "USCONST", "UESCAPE", "FLOAT_P"})
"""U& names and strings, float(p)."""
_SEMICOLON = "ASCII_59"
"""Only as the very last token (drivers and pgbench end statements with it); anywhere
else the string holds several statements, which are not shaped."""
_REFUSED_TOKENS = _UNSHAPED_TOKENS | {_SEMICOLON}
_REG_TYPES = frozenset({
    "regclass", "regcollation", "regconfig", "regdictionary", "regnamespace", "regoper",
    "regoperator", "regproc", "regprocedure", "regrole", "regtype",
})  # fmt: skip
_SHAPED_KINDS = frozenset({"select", "insert", "update", "delete", "copy_out"})
_SIGNS = frozenset({"ASCII_43", "ASCII_45"})
_SPACE = " \t\n\r\f"
"""PostgreSQL's whitespace (Python's str.strip also strips other characters)."""

Key = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Scanned:
    text: str
    """The statement text: the string without surrounding whitespace."""
    tokens: list[Any]
    """Its tokens (pglast Token: start, end inclusive, in characters), comments left out."""
    key: Key


@dataclass(frozen=True, slots=True)
class Template:
    statement: Statement
    limit: tuple[RowBound, int] | None
    """The bound without LIMIT and the token index of the LIMIT number; None: rows is fixed."""
    branches_at: tuple[int, ...]
    """Token indexes of the INSERT's literal branches."""
    edits: tuple[tuple[int, int, str, str], ...]
    """Splices as (first name token, last name token, text before, text after the branch list)."""


def scanned(sql: str) -> Scanned | None:
    """The shape of `sql`; None when it is not one to shape (see the module's docstring).

    Runs for every simple Query (its values make most texts new): comprehensions over the
    tokens unpacked as tuples rather than one loop with attribute reads per token (this
    halved its Python part)."""
    text = sql.strip(_SPACE)
    if "\0" in text or len(text) != len(sql.strip()):
        return None
    try:
        tokens = scan(text)
    except ParseError:
        return None
    kept = [token for token in tokens if token[2] not in COMMENT_TOKENS]
    if kept and kept[-1][2] == _SEMICOLON:
        text = text[: kept[-1][0]].rstrip(_SPACE)  # what analyse() keeps as the statement
        kept.pop()
    names = {token[2] for token in kept}
    if not names.isdisjoint(_REFUSED_TOKENS):
        return None
    if "IDENT" in names and "reg" in text.lower():  # a reg* type can only be spelled with "reg"
        for start, end, name, _ in kept:
            if name == "IDENT" and text[start : end + 1].strip('"').lower() in _REG_TYPES:
                return None
    # no text holds NUL: a literal's "\0NAME" is never equal to a spelled token
    key = tuple([("\0" + name) if name in _LITERALS else text[start : end + 1] for start, end, name, _ in kept])
    return Scanned(text, kept, key)


def template(shape: Scanned, statement: Statement, literals: Literals) -> Template | None:
    """What to keep of `statement` (analysed from `shape.text`) to make others of its shape;
    None when it must not be reused."""
    if statement.kind not in _SHAPED_KINDS or statement.sql != shape.text or literals.edits is None:
        return None
    if statement.cap_marker is not None:
        return None  # a capped write is printed from its tree
    if statement.kind == "copy_out" and (statement.header_rows or _names_header(shape.text)):
        # HEADER 'on' and HEADER 'off' (or 1 and 0) have one shape: analysed by its text each
        # time, whichever was seen first (made from 'off', 'on' would count its header as a row)
        return None
    tokens = shape.tokens
    starts = {token.start: index for index, token in enumerate(tokens)}
    ends = {token.end + 1: index for index, token in enumerate(tokens)}
    edits = []
    for start, end, before, after in literals.edits:
        first, last = starts.get(start), ends.get(end)
        if first is None or last is None:
            return None
        edits.append((first, last, before, after))
    limit = None
    branches_at: tuple[int, ...] = ()
    if literals.natural is not None or statement.branch_constants:
        tree = _tree(shape.text)
        if tree is None:
            return None
        if literals.natural is not None:
            limit = _limit_token(shape, tree, statement, literals.natural, starts)
            if limit is None:
                return None
            if limit[1] < 0:
                limit = None  # FETCH FIRST ROW ONLY: a 1 no text holds
        if statement.branch_constants:
            found = _branch_tokens(shape, tree, statement, starts)
            if found is None:
                return None
            branches_at = found
    return Template(statement, limit, branches_at, tuple(edits))


def instantiate(template: Template, shape: Scanned) -> Statement | None:
    """The statement `shape.text` analyses to, made from `template` (of its shape); None
    when a literal it depends on is in a form not decoded here."""
    text, tokens = shape.text, shape.tokens
    known = template.statement
    rows = known.rows
    if template.limit is not None:
        natural, index = template.limit
        value = _number(_spelled(text, tokens[index]))
        if value is None:
            return None
        rows = _tighter(natural, RowBound(value, None))
    constants = known.branch_constants
    if template.branches_at:
        decoded = [_string(_spelled(text, tokens[index])) for index in template.branches_at]
        if any(value is None for value in decoded):
            return None
        constants = tuple(value for value in decoded if value is not None)
    parts = known.scoped_parts
    if template.edits:
        spans = [(tokens[i].start, tokens[j].end + 1, before, after) for i, j, before, after in template.edits]
        parts = apply_edits(text, spans)
        if not single_statement("''".join(parts)):
            return None
    return Statement(
        sql=text,
        fingerprint=known.fingerprint,
        kind=known.kind,
        uses=known.uses,
        rows=rows,
        pii=known.pii,
        branch_params=known.branch_params,
        branch_constants=constants,
        scoped_parts=parts,
        inserted_rows=known.inserted_rows,  # the same shape lists as many rows
    )


def _spelled(text: str, token: Any) -> str:
    return text[token.start : token.end + 1]


def _number(spelled: str) -> int | None:
    """A LIMIT number as analyse reads it: plain decimal digits only (no 0x, no _)."""
    if not (spelled.isascii() and spelled.isdigit() and len(spelled) <= 30):
        return None
    return int(spelled)


def _string(spelled: str) -> str | None:
    """The value of a plain '...' string (standard_conforming_strings is pinned on); None
    for E'...', $$...$$, strings continued over lines and anything else."""
    if len(spelled) < 2 or spelled[0] != "'" or spelled[-1] != "'":
        return None
    inner = spelled[1:-1]
    if "'" in inner.replace("''", ""):
        return None
    return inner.replace("''", "'")


def _names_header(text: str) -> bool:
    """Whether a COPY names a HEADER option at all, whatever its value (True when unsure)."""
    tree = _tree(text)
    if tree is None:
        return True
    options = tree.get("CopyStmt", {}).get("options") or []
    return any(isinstance(o, dict) and o.get("DefElem", {}).get("defname") == "header" for o in options)


def _tree(text: str) -> dict[str, Any] | None:
    """The statement's parse tree as libpg_query's JSON (which keeps constants' locations)."""
    try:
        stmts = json.loads(parse_sql_json(text)).get("stmts", [])
    except (ParseError, ValueError):
        return None
    if len(stmts) != 1:
        return None
    stmt = stmts[0].get("stmt")
    return stmt if isinstance(stmt, dict) else None


def _char_offset(text: str, location: int) -> int | None:
    """A JSON location (UTF-8 bytes) in characters."""
    if text.isascii():
        return location
    try:
        return len(text.encode("utf-8")[:location].decode("utf-8"))
    except UnicodeDecodeError:
        return None


def _query(tree: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The SELECT whose LIMIT is the statement's."""
    if kind == "select":
        node = tree.get("SelectStmt")
    elif kind == "insert":
        node = tree.get("InsertStmt", {}).get("selectStmt", {}).get("SelectStmt")
    elif kind == "copy_out":
        node = tree.get("CopyStmt", {}).get("query", {}).get("SelectStmt")
    else:
        node = None
    return node if isinstance(node, dict) else None


def _limit_token(
    shape: Scanned, tree: dict[str, Any], statement: Statement, natural: RowBound, starts: dict[int, int]
) -> tuple[RowBound, int] | None:
    """(natural, the LIMIT number's token index), index -1 for an implicit 1; None: unknown."""
    query = _query(tree, statement.kind)
    if query is None:
        return None
    node = query.get("limitCount", {})
    if "TypeCast" in node:
        node = node["TypeCast"].get("arg", {})
    const = node.get("A_Const")
    if not isinstance(const, dict):
        return None
    location = const.get("location", -1)
    if location < 0:
        return (natural, -1) if statement.rows == _tighter(natural, RowBound(1, None)) else None
    offset = _char_offset(shape.text, location)
    index = starts.get(offset) if offset is not None else None
    if index is None or index == 0 or shape.tokens[index].name not in ("ICONST", "FCONST"):
        return None
    if shape.tokens[index - 1].name in _SIGNS:
        return None  # LIMIT -5: leave negative numbers to a full analyse
    value = _number(_spelled(shape.text, shape.tokens[index]))
    if value is None or _tighter(natural, RowBound(value, None)) != statement.rows:
        return None
    return natural, index


def _branch_tokens(
    shape: Scanned, tree: dict[str, Any], statement: Statement, starts: dict[int, int]
) -> tuple[int, ...] | None:
    """The token indexes of the INSERT's literal branches, checked against what analyse read."""
    insert = tree.get("InsertStmt", {})
    columns = [col.get("ResTarget", {}).get("name") for col in insert.get("cols", [])]
    written = [use.branch_column for use in statement.uses if use.action == "write" and use.branch_column]
    select = insert.get("selectStmt", {}).get("SelectStmt", {})
    if len(written) != 1 or written[0] not in columns or not isinstance(select, dict):
        return None
    at = columns.index(written[0])
    found: list[int] = []
    for row in select.get("valuesLists", []):
        items: Sequence[Any] = row.get("List", {}).get("items", [])
        const = items[at].get("A_Const") if at < len(items) else None
        if not isinstance(const, dict) or "sval" not in const:
            continue  # a $n
        offset = _char_offset(shape.text, const.get("location", -1))
        index = starts.get(offset) if offset is not None else None
        if index is None or shape.tokens[index].name != "SCONST":
            return None
        found.append(index)
    decoded = [_string(_spelled(shape.text, shape.tokens[index])) for index in found]
    return tuple(found) if tuple(decoded) == statement.branch_constants else None
