"""The admin commands beside the sync (Marketo's admin features): status, errors, purge."""

from __future__ import annotations

import argparse
import sys

from dynsync_dagster.commands.runs import CommandError
from dynsync_dagster.settings import SyncSettings, duckdb_path


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "status",
        help="Sync Status: the last cycle, changes waiting in Dynamics, records synced in the "
        "last hour, the delta tokens' age, the schedule",
    )
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("errors", help="Sync Errors: the records a cycle set aside, and why")
    p.add_argument(
        "--csv", action="store_true", help="every row as CSV on stdout (redirect it to a file)"
    )
    p.set_defaults(func=cmd_errors)

    p = sub.add_parser(
        "purge",
        help="delete activity_log rows older than activity_log_retention_days (the daily "
        "activity_retention_job does the same)",
    )
    p.set_defaults(func=cmd_purge)


def cmd_status(args: argparse.Namespace) -> int:
    from dynsync_dagster.commands.status import status_report

    print(status_report())
    return 0


def cmd_errors(args: argparse.Namespace) -> int:
    from dynsync_dagster.commands.sync_errors import read_errors, render, write_csv

    errors = read_errors(duckdb_path())
    if args.csv:
        write_csv(errors, sys.stdout)
    else:
        print(render(errors))
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    from dynsync_dagster.store.connection import StoreBusyError, StoreNotReadyError
    from dynsync_dagster.store.retention import purge_activity

    days = SyncSettings.load().activity_log_retention_days
    try:
        result = purge_activity(duckdb_path(), days, trigger="cli")
    except (StoreBusyError, StoreNotReadyError) as exc:
        raise CommandError(str(exc)) from None
    print(result.summary())
    return 0
