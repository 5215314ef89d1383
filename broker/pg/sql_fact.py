"""Server facts a statement may not ask for, beyond the function allow-list.

Functions are allowed by name (sql_scope.SAFE_FUNCTIONS and tables.toml's `functions`,
which may never name one of `broker.policy.table.NEVER_FUNCTIONS`); tables by the table
map, so `pg_settings`, `pg_stats`, `pg_class`, `pg_stat_activity` and every other
catalog are not open. Two spellings reach server facts without naming a function or a
table, and are refused here:

* SQL value keywords: `current_user`, `session_user`, `user`, `current_role` (the
  broker's own database login, the one that got rented), `current_catalog` and
  `current_schema` (the database's layout). The date and time keywords stay.
* casts to the object identifier types (`'pg_authid'::regclass`, `'x'::regrole`,
  `::regproc`...): each looks the name up in the catalog, so it answers whether a table,
  role or function exists and hands out its oid.
"""

from __future__ import annotations

from typing import Any

from pglast import ast, enums

from broker.messages.said import said
from broker.pg.sql_refused import SqlRefused

_SERVER_KEYWORDS = {
    enums.SQLValueFunctionOp.SVFOP_CURRENT_ROLE: "current_role",
    enums.SQLValueFunctionOp.SVFOP_CURRENT_USER: "current_user",
    enums.SQLValueFunctionOp.SVFOP_USER: "user",
    enums.SQLValueFunctionOp.SVFOP_SESSION_USER: "session_user",
    enums.SQLValueFunctionOp.SVFOP_CURRENT_CATALOG: "current_catalog",
    enums.SQLValueFunctionOp.SVFOP_CURRENT_SCHEMA: "current_schema",
}
OID_TYPES = frozenset({
    "regclass", "regcollation", "regconfig", "regdictionary", "regnamespace", "regoper",
    "regoperator", "regproc", "regprocedure", "regrole", "regtype",
})  # fmt: skip
VALUE_TYPES = frozenset({
    "bool", "boolean", "int2", "int4", "int8", "smallint", "integer", "bigint", "numeric", "decimal", "float4",
    "float8", "real", "double precision", "money", "text", "varchar", "bpchar", "char", "character", "date",
    "time", "timetz", "timestamp", "timestamptz", "interval", "uuid", "json", "jsonb", "bytea", "inet", "cidr",
    "macaddr", "bit", "varbit",
})  # fmt: skip
"""The only types a statement may name (casts, `NULL::t`, literals): plain values. Any
other name is a catalog lookup or a way out for data: a relation's row type answers
whether a table or view exists and lists its columns (`(NULL::pg_authid).*`), and the
input functions of `aclitem`, `tsquery`, `tsvector` and `jsonpath` quote their input in
their errors, carrying records past the row count."""
_FACTS_HINT = said("records_not_server")


def check_value_function(node: Any) -> None:
    """Refuse `current_user` and the other keywords that name the server's login or layout."""
    name = _SERVER_KEYWORDS.get(node.op)
    if name is not None:
        raise SqlRefused(f"{name} is not answered through the broker (it describes the database server)", _FACTS_HINT)


def check_type(node: Any) -> None:
    """Refuse a type name of the object identifier kind (a catalog lookup in disguise)."""
    if not isinstance(node, ast.TypeName):
        return
    names = node.names or ()
    last = names[-1] if names else None
    if isinstance(last, ast.String) and str(last.sval).lower() in OID_TYPES:
        raise SqlRefused(
            f"the broker does not run casts to {last.sval} (it looks names up in the database catalog)", _FACTS_HINT
        )
    if not isinstance(last, ast.String) or str(last.sval).lower() not in VALUE_TYPES:
        shown = ".".join(str(n.sval) for n in names if isinstance(n, ast.String)) or "this type"
        raise SqlRefused(
            f"the broker does not run casts to {shown[:60]}: only to plain value types",
            said("value_casts"),
        )
