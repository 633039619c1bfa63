"""The `dynsync` command: sync, local edits, the simulator and the demo."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from dynsync_dagster.commands.admin import add_commands as add_admin_commands
from dynsync_dagster.commands.runs import CommandError, run_sync_job
from dynsync_dagster.settings import ConnectionSettings, SettingsError, SyncSettings, duckdb_path

log = logging.getLogger("dynsync")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    # The simulator's options are its own (`dynsync simulator --help` lists them): everything
    # after `simulator` passes through untouched; any other command takes only its own.
    args, extra = parser.parse_known_args(argv)
    if args.command == "simulator":
        args.simulator_args = extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (CommandError, SettingsError) as exc:
        print(f"dynsync {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynsync",
        description="Keep a DuckDB copy of a Dynamics 365 org's accounts and contacts.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("sync", help="run one sync cycle now (the job the schedule runs)")
    p.set_defaults(func=cmd_sync)

    p = sub.add_parser(
        "set-account-field",
        help="edit an account field locally, on every contact of the contact's account "
        "(DuckDB only; never sent to Dynamics)",
    )
    p.add_argument("--contact-id", required=True)
    p.add_argument("--field", required=True)
    p.add_argument("--value", required=True, help="the new value; the word NULL clears it")
    p.set_defaults(func=cmd_set_account_field)

    p = sub.add_parser(
        "validate",
        help="check the setup: URL, credentials, sync user, read privileges, change tracking, fields",
    )
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(
        "lineage", help="where a stored column comes from, back to its Dynamics attribute"
    )
    p.add_argument("column", help="TABLE.COLUMN, e.g. contacts.account_industrycode")
    p.set_defaults(func=cmd_lineage)

    p = sub.add_parser(
        "publish",
        help="copy the store to PostgreSQL now (DYNSYNC_POSTGRES_URL); cycles do it themselves",
    )
    p.add_argument(
        "--full", action="store_true", help="rebuild the PostgreSQL tables whole from the store"
    )
    p.set_defaults(func=cmd_publish)

    # No options of its own here: `--help`, `--port`, ... are the simulator's (see main()).
    p = sub.add_parser(
        "simulator",
        help="run the built-in Dynamics simulator (`dynsync simulator --help` for its options)",
        add_help=False,
    )
    p.set_defaults(func=cmd_simulator)

    p = sub.add_parser("demo", help="end to end on the built-in simulator")
    p.add_argument("--dir", default="data/demo", help="where the demo keeps its files")
    p.add_argument("--accounts", type=int, default=300)
    p.add_argument("--contacts", type=int, default=9000)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "dev",
        help="start the simulator and `dagster dev` together: the UI with the schedule ticking "
        "on simulated Dynamics changes",
    )
    p.add_argument("--dir", default="data/dev", help="where the simulator and store keep files")
    p.add_argument("--port", type=int, default=3000, help="the Dagster UI port (127.0.0.1)")
    p.add_argument("--accounts", type=int, default=500)
    p.add_argument("--contacts", type=int, default=10000)
    p.add_argument(
        "--trickle-per-minute",
        type=int,
        default=20,
        help="random Dynamics changes the simulator makes per minute",
    )
    p.add_argument(
        "--postgres",
        action="store_true",
        help="keep Dagster's runs, events and schedules in a throwaway PostgreSQL server "
        "(Debian's, `bash scripts/install-postgres.sh`; 127.0.0.1, a generated password) "
        "with its own DAGSTER_HOME under --dir, as a team's instance is configured; the "
        "server stops and its data is removed on exit",
    )
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser(
        "instance",
        help="print a dagster.yaml for this project's Dagster instance (--postgres: on "
        'PostgreSQL, for a team; README "Running it for a team")',
    )
    p.add_argument(
        "--postgres", action="store_true", help="storage in PostgreSQL, from DAGSTER_PG_* variables"
    )
    p.set_defaults(func=cmd_instance)
    add_admin_commands(sub)  # status, errors, purge
    return parser


# -- sync ------------------------------------------------------------------------------------


def cmd_sync(args: argparse.Namespace) -> int:
    ConnectionSettings.from_env()  # fail fast, in one line, on a missing or bad variable
    SyncSettings.load()
    result = run_sync_job("cli")
    print(_summary(_cycle_figures(result), duckdb_path()))
    return 0


def _cycle_figures(result) -> dict[str, dict]:
    """This run's figures per table, from its materializations. (The published file is not
    rewritten when a cycle changed nothing, so it may still hold the previous cycle's row.)"""
    return {
        m.asset_key.to_user_string(): {k: v.value for k, v in m.metadata.items()}
        for m in result.asset_materializations_for_node("dynamics_sync")
    }


def _summary(figures: dict[str, dict], db: Path) -> str:
    from dynsync_dagster.store.publish import open_published

    with open_published(db) as con:
        accounts, contacts = con.execute(
            "SELECT (SELECT count(*) FROM accounts WHERE NOT is_deleted), "
            "(SELECT count(*) FROM contacts WHERE NOT is_deleted)"
        ).fetchone()
    account, contact, activity = (figures[t] for t in ("accounts", "contacts", "activity_log"))
    modes = account["dynsync/modes"]
    return (
        f"cycle {account['dynsync/run_id'][:8]}: accounts {modes['account']} "
        f"({account['records_read']} read), contacts {modes['contact']} "
        f"({contact['records_read']} read); {activity['activities_logged']} activities "
        f"logged, {activity['activities_suppressed']} suppressed\n"
        f"store {db}: {accounts} accounts, {contacts} contacts"
    )


def cmd_validate(args: argparse.Namespace) -> int:
    from dynsync_dagster.commands.validate import render, validate

    checks = validate()
    print(render(checks))
    return 0 if all(c.ok for c in checks) else 1


def cmd_lineage(args: argparse.Namespace) -> int:
    from dynsync_dagster.store.connection import StoreNotReadyError
    from dynsync_dagster.store.lineage import render_lineage, trace
    from dynsync_dagster.store.publish import open_published

    table, _, column = args.column.partition(".")
    if not table or not column:
        raise CommandError(f"{args.column!r}: give TABLE.COLUMN, e.g. contacts.account_name")
    try:
        with open_published(duckdb_path()) as con:
            chain = trace(con, table, column)
    except StoreNotReadyError as exc:
        raise CommandError(str(exc)) from None
    if not chain:
        raise CommandError(
            f"{args.column} has no recorded lineage (not a synced column? see the sync_fields table)"
        )
    print(render_lineage(args.column, chain))
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from dynsync_dagster.store.connection import StoreBusyError
    from dynsync_dagster.store.postgres import PostgresPublishError, publish_store

    try:
        done = publish_store(duckdb_path(), full=args.full)
    except (PostgresPublishError, StoreBusyError) as exc:
        raise CommandError(str(exc)) from None
    shipped = ", ".join(f"{t} {n}" for t, n in sorted(done.shipped.items())) or "nothing"
    print(f"published to PostgreSQL ({done.mode}) in {done.seconds:.2f}s: rows copied: {shipped}")
    for note in done.deferred:
        print(f"put off until readers finish: {note}")
    return 0


# -- local edit ------------------------------------------------------------------------------


def cmd_set_account_field(args: argparse.Namespace) -> int:
    from dynsync_dagster.store.connection import StoreBusyError
    from dynsync_dagster.sync.local_edit import LocalEditError, confirmation, set_account_field

    value = None if args.value == "NULL" else args.value
    try:
        result = set_account_field(
            duckdb_path(), args.contact_id, args.field, value, sync=SyncSettings.load()
        )
    except (LocalEditError, StoreBusyError, SettingsError) as exc:
        raise CommandError(str(exc)) from None
    print(confirmation(result))
    return 0


# -- simulator and demo ----------------------------------------------------------------------


def cmd_simulator(args: argparse.Namespace) -> int:
    from dynsync_dagster.simulator.__main__ import main as simulator_main

    return simulator_main(list(args.simulator_args), prog="dynsync simulator")


def cmd_demo(args: argparse.Namespace) -> int:
    from dynsync_dagster.commands.demo import run_demo

    print(run_demo(Path(args.dir), accounts=args.accounts, contacts=args.contacts))
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from dynsync_dagster.commands.dev import run_dev

    return run_dev(args)


def cmd_instance(args: argparse.Namespace) -> int:
    from dynsync_dagster.commands.instance import instance_yaml

    print(instance_yaml(postgres=args.postgres), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
