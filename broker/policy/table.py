"""The table map (`policies/tables.toml`): which database tables hold which records.

It is policy, not protocol: it says what a table *means* (the resource it holds, the
column naming each row's branch, which columns are personal data). The PostgreSQL door
resolves every table a statement names against it; a table not in the map is not open.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from broker.policy.problem import PolicyProblem
from broker.policy.toml_lines import array_table_lines, table_line

_SETTINGS_KEYS = frozenset({"schema", "functions"})
_TABLE_KEYS = frozenset({"name", "resource", "branch_column", "pii_columns"})
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_$]*\Z")
"""Unquoted PostgreSQL identifiers as the parser hands them over (folded to lower case).

Quoted, mixed-case names are deliberately not accepted: a platform engineer writing
`Waybills` would expect it to match `waybills`, and it would not."""
_MAX_IDENTIFIER = 63  # NAMEDATALEN - 1: PostgreSQL truncates longer names

NEVER_FUNCTIONS = frozenset({
    # run SQL of their own on the server, outside the broker's scoping
    "query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "table_to_xml",
    "table_to_xmlschema", "table_to_xml_and_xmlschema", "cursor_to_xml", "cursor_to_xmlschema",
    "schema_to_xml", "schema_to_xmlschema", "schema_to_xml_and_xmlschema", "database_to_xml",
    "database_to_xmlschema", "database_to_xml_and_xmlschema", "dblink", "dblink_exec",
    "dblink_open", "dblink_fetch", "dblink_send_query", "dblink_get_result", "ts_stat",
    # server settings, files, sessions and identity
    "current_setting", "set_config", "version", "inet_server_addr", "inet_server_port",
    "inet_client_addr", "inet_client_port", "current_database", "current_schema", "current_schemas",
    "current_user", "session_user", "current_role", "txid_current", "txid_current_snapshot",
    "txid_status", "pg_current_xact_id", "pg_backend_pid", "pg_sleep", "pg_sleep_for", "pg_sleep_until",
    "lo_import", "lo_export", "lo_get", "lo_put", "lo_open", "lo_from_bytea", "lo_create", "lo_unlink",
    "loread", "lowrite",
    # fold many records into one value, hand a row another row's value, or return sets
    "string_agg", "array_agg", "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg",
    "xmlagg", "row_to_json", "to_json", "to_jsonb", "lead", "lag", "first_value", "last_value",
    "nth_value", "unnest", "generate_series", "json_populate_recordset", "jsonb_to_recordset",
})  # fmt: skip
"""Functions tables.toml may never allow, whatever the platform team writes; every name
beginning `pg_` or `lo_` is refused too (catalog, file, session and large-object access)."""
_NEVER_PREFIXES = ("pg_", "lo_", "dblink")


@dataclass(frozen=True, slots=True)
class TableRule:
    name: str
    resource: str
    branch_column: str | None
    """The column naming each row's branch; None: the table is not branch-scoped."""
    pii_columns: frozenset[str]


@dataclass(frozen=True, slots=True)
class TableMap:
    schema: str
    """The one schema clients see; unqualified names resolve here."""
    tables: Mapping[str, TableRule]
    functions: frozenset[str]
    """SQL functions allowed beyond the broker's built-in safe list."""
    file: str

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Picklable (the PostgreSQL door sends it to its analysis worker): the read-only
        view of the tables goes as a plain dict and comes back read-only."""
        return _table_map, (self.schema, dict(self.tables), self.functions, self.file)

    @classmethod
    def empty(cls) -> TableMap:
        """No table map: no table is open, so only table-less statements pass."""
        return cls("public", MappingProxyType({}), frozenset(), "")

    def rule(self, schema: str | None, name: str) -> TableRule | None:
        """The rule for `schema.name` as the parser spelled it; None: not open."""
        if schema is not None and schema != self.schema:
            return None
        return self.tables.get(name)


def _table_map(schema: str, tables: dict[str, TableRule], functions: frozenset[str], file: str) -> TableMap:
    return TableMap(schema, MappingProxyType(tables), functions, file)


def parse_tables(name: str, raw: bytes) -> tuple[TableMap | None, list[PolicyProblem]]:
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        line = int(m[1]) if (m := re.search(r"line (\d+)", str(exc))) else 1
        return None, [PolicyProblem(name, line, f"not valid TOML: {exc}")]
    problems = [PolicyProblem(name, 1, f"unknown top-level key {key!r}", "use [settings] and [[table]]")
                for key in sorted(set(doc) - {"settings", "table"})]  # fmt: skip
    schema, functions = _settings(doc.get("settings", {}), name, raw, problems)
    tables = _tables(doc.get("table", []), name, raw, problems)
    if problems:
        return None, problems
    return TableMap(schema, MappingProxyType(tables), functions, name), []


def _settings(settings: Any, name: str, raw: bytes, problems: list[PolicyProblem]) -> tuple[str, frozenset[str]]:
    line = table_line(raw, "settings")
    try:
        if not isinstance(settings, dict):
            raise ValueError("settings must be a [settings] table")
        unknown = set(settings) - _SETTINGS_KEYS
        if unknown:
            raise ValueError(f"[settings] has unknown keys: {', '.join(sorted(unknown))}")
        schema = _identifier(settings, "schema", "public")
        functions = _identifiers(settings, "functions")
        never = sorted(name for name in functions if name in NEVER_FUNCTIONS or name.startswith(_NEVER_PREFIXES))
        if never:
            raise ValueError(
                f"functions may not allow {', '.join(never)}: they run SQL outside the broker's scoping, read "
                "server facts or files, or pack many records into one row"
            )
    except ValueError as exc:
        problems.append(PolicyProblem(name, line, str(exc), "known keys: schema, functions"))
        return "public", frozenset()
    return schema, functions


def _tables(entries: Any, name: str, raw: bytes, problems: list[PolicyProblem]) -> dict[str, TableRule]:
    if not isinstance(entries, list):
        problems.append(PolicyProblem(name, 1, "table must be an array of [[table]] entries"))
        return {}
    lines = array_table_lines(raw, "table")
    tables: dict[str, TableRule] = {}
    for position, entry in enumerate(entries):
        line = lines[position] if position < len(lines) else 0
        label = _label(entry, position)
        try:
            rule = _table(entry)
        except ValueError as exc:
            problems.append(PolicyProblem(name, line, f"{label}: {exc}"))
            continue
        if rule.name in tables:
            problems.append(PolicyProblem(name, line, f"{label}: listed twice", "one [[table]] per table"))
        tables[rule.name] = rule
    return tables


def _label(entry: Any, position: int) -> str:
    table = entry.get("name") if isinstance(entry, dict) else None
    return f"table {table!r}" if isinstance(table, str) and table else f"table #{position + 1}"


def _table(entry: Any) -> TableRule:
    if not isinstance(entry, dict):
        raise ValueError("must be a table")
    unknown = set(entry) - _TABLE_KEYS
    if unknown:
        raise ValueError(f"unknown keys {', '.join(sorted(unknown))}; known: {', '.join(sorted(_TABLE_KEYS))}")
    resource = entry.get("resource")
    if not isinstance(resource, str) or not resource:
        raise ValueError("resource is required and must be a non-empty string (a resource of roles.csv)")
    branch_column = _identifier(entry, "branch_column", None) if "branch_column" in entry else None
    return TableRule(_identifier(entry, "name", None), resource, branch_column, _identifiers(entry, "pii_columns"))


def _identifier(table: dict[str, Any], key: str, default: str | None) -> str:
    value = table.get(key, default)
    if value is None:
        raise ValueError(f"{key} is required")
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    if not _IDENTIFIER.match(value) or len(value) > _MAX_IDENTIFIER:
        raise ValueError(f"{key} = {value!r} is not a lower-case SQL identifier (letters, digits, _)")
    return value


def _identifiers(table: dict[str, Any], key: str) -> frozenset[str]:
    values = table.get(key, [])
    if not isinstance(values, list):
        raise ValueError(f"{key} must be a list of strings")
    return frozenset(_identifier({key: value}, key, None) for value in values)
