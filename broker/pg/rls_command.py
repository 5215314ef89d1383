"""`broker pg rls`: print the row-level-security policies that back the door's branch
scoping inside the database (see broker.pg.row_security)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from broker.config import load_settings
from broker.pg.row_security import SETTING, policy_sql
from broker.policy.snapshot import TABLES_FILE
from broker.policy.table import parse_tables

EXIT_BAD_POLICY = 1
EXIT_BAD_CONFIG = 2

DESCRIPTION = f"""\
Print SQL that puts every branch-scoped table of {TABLES_FILE} under PostgreSQL row-level
security for the broker's database role: ENABLE and FORCE ROW LEVEL SECURITY, and two
policies per table (broker_rows lets the role's rows in, the restrictive broker_branches
keeps only rows whose branch column is in the session's {SETTING} setting). The door
passes that setting when it logs in for an employee (their branches, or * with an HQ
role), and clients cannot set, reset or read it through the door, so the database itself
never returns another branch's rows to the broker, even if the door had a bug. A session
of the role without the setting sees no rows.

Review the output, then apply it as the tables' owner:
  broker pg rls -c broker.toml > rls.sql && psql -d logistics -f rls.sql
It is idempotent (policies are dropped and created again): run it after changing
{TABLES_FILE}."""

EPILOG = """\
exit codes:
  0  printed
  1  tables.toml is missing or invalid, or maps no branch-scoped table
  2  configuration or usage error (a bad broker.toml, an empty role name)"""


def add_pg_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    config_option: Callable[[argparse.ArgumentParser], None],
) -> None:
    pg = commands.add_parser("pg", help="the PostgreSQL door's database side")
    pg_commands = pg.add_subparsers(title="pg commands", required=True, metavar="PG_COMMAND")
    rls = pg_commands.add_parser(
        "rls",
        help=f"print row-level-security policies for the branch-scoped tables of {TABLES_FILE} (a second layer)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_option(rls)
    rls.add_argument(
        "--policy",
        "--policies",
        dest="policies",
        type=Path,
        metavar="DIR",
        help=f"the policy directory whose {TABLES_FILE} to read (default: [policy] directory of the config)",
    )
    rls.add_argument(
        "--role",
        help="the database role the policies apply to (default: [postgres] server_user of the config)",
    )
    rls.set_defaults(func=run_rls)


def run_rls(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    role = settings.postgres.server_user if args.role is None else args.role
    if not role or "\0" in role:
        print("broker pg rls: the role must be a non-empty name without NUL characters", file=sys.stderr)
        return EXIT_BAD_CONFIG
    directory: Path = args.policies or settings.policy.directory
    path = directory / TABLES_FILE
    try:
        raw = path.read_bytes()
    except OSError as exc:
        print(f"broker pg rls: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_POLICY
    tables, problems = parse_tables(TABLES_FILE, raw)
    if tables is None:
        for problem in problems:
            print(f"{directory}/{problem}", file=sys.stderr)
        print(f"broker pg rls: {len(problems)} problem(s) in {path}", file=sys.stderr)
        return EXIT_BAD_POLICY
    if not any(rule.branch_column for rule in tables.tables.values()):
        print(f"broker pg rls: {path} maps no table with a branch_column: nothing to secure", file=sys.stderr)
        return EXIT_BAD_POLICY
    sys.stdout.write(policy_sql(tables, role, str(path)))
    return 0
