"""`dynsync errors`: Marketo's Sync Errors tab: the records a cycle set aside, and why."""

from __future__ import annotations

import csv
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from dynsync_dagster.commands.runs import CommandError
from dynsync_dagster.store.connection import StoreNotReadyError
from dynsync_dagster.store.publish import open_published
from dynsync_dagster.store.sync_status import ERROR_COLUMNS, SyncErrors, sync_errors

_SHOWN = 40  # characters of a value in the table (the CSV has all of it)


def read_errors(db: Path) -> SyncErrors:
    try:
        with open_published(db) as con:
            return sync_errors(con)
    except StoreNotReadyError as exc:
        raise CommandError(str(exc)) from None


def write_csv(errors: SyncErrors, out: TextIO) -> None:
    """Every row, every character, timestamps in ISO 8601 UTC: for a spreadsheet or a script."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(ERROR_COLUMNS)
    for row in errors.rows:
        writer.writerow([_csv_value(v) for v in row])


def _csv_value(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


def render(errors: SyncErrors) -> str:
    """A table for the terminal, latest first, with a line that says what it means."""
    if not errors.rows:
        return "no record has been set aside: every record read so far has synced"
    header = ("entity", "record", "field", "value", "first seen", "last seen", "cycles", "now")
    body = [
        (
            entity,
            record,
            field or "",
            _short(value),
            f"{first:%Y-%m-%d %H:%M}",
            f"{last:%Y-%m-%d %H:%M}",
            str(cycles),
            "set aside" if aside else "synced since",
        )
        for entity, record, field, value, _reason, first, last, cycles, aside in errors.rows
    ]
    widths = [max(len(r[i]) for r in (header, *body)) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in (header, *body)
    ]
    reasons = sorted({r[4] for r in errors.rows})
    summary = (
        f"{errors.set_aside} record(s) set aside now, {len(errors.rows)} row(s) in all "
        "(times UTC; `dynsync errors --csv` exports every row with its reason)"
    )
    return "\n".join([*lines, "", *(f"reason: {r}" for r in reasons), summary])


def _short(value: str | None) -> str:
    if value is None:
        return ""
    return value if len(value) <= _SHOWN else value[: _SHOWN - 1] + "…"
