"""Marketo's Sync Status and Sync Errors tabs, read from the store's status tables.

Status reads the working store (under the writer lock, for milliseconds) when it can: a cycle
that changed nothing commits its sync_runs row and reader state there without republishing,
so the published file may be a cycle behind. Errors read the published file: every cycle that
sets a record aside publishes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from dynsync_dagster.dynamics.backlog import Pending, pending_changes
from dynsync_dagster.dynamics.errors import DynamicsError
from dynsync_dagster.settings import ConnectionSettings, SettingsError
from dynsync_dagster.store.connection import (
    StoreBusyError,
    configure,
    is_lock_conflict,
    working_path,
    writer_lock,
)
from dynsync_dagster.store.integrity import Finding
from dynsync_dagster.store.publish import open_published
from dynsync_dagster.store.state import ReaderState, read_reader_states

ENTITY_TABLE = {"account": ("accounts", "accountid"), "contact": ("contacts", "contactid")}
_BEFORE_ANY = datetime(1900, 1, 1, tzinfo=UTC)  # an empty table: every record is waiting
FIRST_CYCLE_HINT = (
    "no cycle has committed yet: run `dynsync sync` for the first (full) cycle, or start "
    "the schedule (`dynsync dev`, or `dagster dev` with the daemon)"
)


@dataclass(frozen=True)
class Cycle:
    """One sync_runs row, as much of it as Sync Status shows."""

    run_id: str
    trigger: str | None
    finished_at: datetime | None
    outcome: str
    account_mode: str | None
    contact_mode: str | None
    error: str | None


@dataclass(frozen=True)
class StoreStatus:
    last_cycle: Cycle | None  # the latest cycle, whatever its outcome
    last_committed: Cycle | None  # the latest successful one
    readers: dict[str, ReaderState]
    synced_last_hour: dict[str, int]  # entity -> records upserted by cycles of the last hour
    cycles_last_hour: int
    records_set_aside: int
    # entity -> the newest modifiedon stored: Dynamics' own clock, so what Dynamics stamps
    # later is what no committed cycle has read (our clock may differ from the org's)
    newest_modifiedon: dict[str, datetime | None] = field(default_factory=dict)


@contextlib.contextmanager
def _latest_store(published: Path, wait_s: float) -> Iterator[duckdb.DuckDBPyConnection | None]:
    """A read-only connection to the working store, else (no working store, or a commit
    holding it longer than `wait_s`) the published file, else None (no cycle has run)."""
    published = Path(published)
    with contextlib.ExitStack() as stack:
        con = _working_read_only(stack, published, wait_s)
        if con is not None:
            yield con
            return
    if not published.exists():
        yield None
        return
    with open_published(published) as con:
        yield con


def _working_read_only(
    stack: contextlib.ExitStack, published: Path, wait_s: float
) -> duckdb.DuckDBPyConnection | None:
    """Under the writer lock, so that no commit is half-way; None if that cannot be had."""
    working = working_path(published)
    if not working.exists():
        return None
    try:
        stack.enter_context(writer_lock(published, wait_s))
        con = duckdb.connect(str(working), read_only=True)
    except StoreBusyError:
        return None
    except duckdb.IOException as exc:
        if not is_lock_conflict(exc):
            raise
        return None  # held outside dynsync's locks
    stack.callback(con.close)
    configure(con)
    return con


def read_store_status(
    published: Path, now: datetime | None = None, wait_s: float = 5.0
) -> StoreStatus | None:
    """What the store says about the sync; None when there is no store yet."""
    now = now or datetime.now(UTC)
    with _latest_store(published, wait_s) as con:
        if con is None or not _has_table(con, "sync_runs"):
            return None
        latest = _cycle(con, "")
        committed = _cycle(con, "WHERE outcome = 'success'")
        accounts, contacts, cycles = con.execute(
            "SELECT coalesce(sum(accounts_upserted), 0), coalesce(sum(contacts_upserted), 0), "
            "count(*) FROM sync_runs WHERE outcome = 'success' AND finished_at >= ?",
            [now - timedelta(hours=1)],
        ).fetchone()
        return StoreStatus(
            last_cycle=latest,
            last_committed=committed,
            readers=read_reader_states(con),
            synced_last_hour={"account": int(accounts), "contact": int(contacts)},
            cycles_last_hour=int(cycles),
            records_set_aside=len(set_aside_ids(con)),
            newest_modifiedon={
                entity: con.execute(f"SELECT max(modifiedon) FROM {table}").fetchone()[0]
                for entity, (table, _key) in ENTITY_TABLE.items()
            },
        )


def _has_table(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    return bool(
        con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]
        ).fetchone()[0]
    )


def _cycle(con: duckdb.DuckDBPyConnection, where: str) -> Cycle | None:
    row = con.execute(
        "SELECT run_id, trigger, finished_at, outcome, account_mode, contact_mode, error "
        f"FROM sync_runs {where} ORDER BY started_at DESC, finished_at DESC LIMIT 1"
    ).fetchone()
    return Cycle(*row) if row else None


# -- Sync Errors ------------------------------------------------------------------------------

ERROR_COLUMNS = (
    "entity",
    "record_id",
    "field",
    "value",
    "reason",
    "first_seen",
    "last_seen",
    "cycles",
    "set_aside",
)
# The text record_sync_errors (state.py) puts before a record's "<column> = <value>" list.
_PROBLEMS_PREFIX = "skipped: a value does not fit its column type: "

# One row per record and field: the problems of value_not_convertible rows split into their
# column and value; the latest value seen wins. `set_aside`: the record has not synced since.
_ERRORS_SQL = f"""
WITH problems AS (
    SELECT entity, record_id, code, message, run_id, occurred_at,
           unnest(CASE WHEN starts_with(message, '{_PROBLEMS_PREFIX}')
                       THEN string_split(message[{len(_PROBLEMS_PREFIX) + 1}:], '; ')
                       ELSE [NULL] END) AS problem
    FROM sync_errors
), parsed AS (
    SELECT *, CASE WHEN contains(problem, ' = ') THEN split_part(problem, ' = ', 1) END AS field,
           CASE WHEN contains(problem, ' = ')
                THEN problem[length(split_part(problem, ' = ', 1)) + 4:] END AS value
    FROM problems
), grouped AS (
    SELECT entity, record_id, field, arg_max(value, occurred_at) AS value,
           arg_max(CASE WHEN field IS NULL THEN message END, occurred_at) AS other,
           min(occurred_at) AS first_seen, max(occurred_at) AS last_seen,
           count(DISTINCT run_id) AS cycles
    FROM parsed GROUP BY entity, record_id, field
), synced AS (
    SELECT 'account' AS entity, CAST(accountid AS VARCHAR) AS record_id, last_synced_at
    FROM accounts
    UNION ALL
    SELECT 'contact', CAST(contactid AS VARCHAR), last_synced_at FROM contacts
)
SELECT g.entity, g.record_id, g.field, g.value,
       coalesce(g.other, 'the value does not fit the column type '
                || coalesce((SELECT any_value(f.duckdb_type) FROM sync_fields f
                             WHERE f.entity = g.entity AND list_contains(f.columns, g.field)),
                            'of its field')
                || CASE WHEN s.last_synced_at IS NULL
                        THEN '; the record is not stored until Dynamics holds a value that fits'
                        ELSE '; the record keeps its last synced values' END) AS reason,
       g.first_seen, g.last_seen, g.cycles,
       coalesce(s.last_synced_at < g.last_seen, true) AS set_aside
FROM grouped g LEFT JOIN synced s ON s.entity = g.entity AND s.record_id = lower(g.record_id)
ORDER BY g.last_seen DESC, g.entity, g.record_id, g.field
"""


@dataclass(frozen=True)
class SyncErrors:
    rows: list[tuple] = field(default_factory=list)  # in ERROR_COLUMNS order, latest first

    @property
    def set_aside(self) -> int:
        """Records that have not synced since they were set aside."""
        return len({(r[0], r[1]) for r in self.rows if r[-1]})


def sync_errors(con: duckdb.DuckDBPyConnection) -> SyncErrors:
    if not _has_table(con, "sync_errors"):
        return SyncErrors()
    return SyncErrors(con.execute(_ERRORS_SQL).fetchall())


def set_aside_ids(con: duckdb.DuckDBPyConnection) -> set[tuple[str, str]]:
    """(entity, record id) of every record still set aside."""
    return {(r[0], r[1]) for r in sync_errors(con).rows if r[-1]}


def latest_errors(errors: SyncErrors, limit: int = 10) -> list[dict[str, object]]:
    """The latest rows as plain values, for the Dagster UI (JSON)."""
    return [
        {c: _plain(v) for c, v in zip(ERROR_COLUMNS, row, strict=True)}
        for row in errors.rows[:limit]
    ]


def _plain(value: object) -> object:
    if isinstance(value, datetime):
        return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"
    return value


def records_set_aside(con: duckdb.DuckDBPyConnection) -> Finding:
    """The Sync Errors check: passes while no record is set aside (its severity is WARN)."""
    errors = sync_errors(con)
    n = errors.set_aside
    return Finding(
        n == 0,
        "no record is set aside"
        if n == 0
        else f"{n} record(s) set aside: a value does not fit its column (`dynsync errors` "
        "lists them and why)",
        {
            "records_set_aside": n,
            "error_rows": len(errors.rows),
            "latest": latest_errors(errors),
        },
    )


# -- Sync Status as text and figures ----------------------------------------------------------


@dataclass(frozen=True)
class SyncStatus:
    """Everything the Sync Status tab shows. `pending` None: Dynamics was not asked (no cycle
    yet) or could not answer (`pending_error`)."""

    now: datetime
    store: StoreStatus | None
    pending: dict[str, Pending] | None
    pending_error: str | None
    schedule: str

    def lines(self) -> list[str]:
        if self.store is None or self.store.last_committed is None:
            out = [FIRST_CYCLE_HINT]
            if self.store is not None and self.store.last_cycle is not None:
                out.append(_last_failure(self.store.last_cycle, self.now))
            return [*out, f"schedule: {self.schedule}"]
        s = self.store
        out = [f"last committed cycle: {_cycle_text(s.last_committed, self.now)}"]
        if s.last_cycle is not None and s.last_cycle.outcome != "success":
            out.append(_last_failure(s.last_cycle, self.now))
        out.append(f"waiting in Dynamics: {self._pending_text()}")
        total = sum(s.synced_last_hour.values())
        out.append(
            f"synced in the last hour: {total} record(s) (accounts "
            f"{s.synced_last_hour['account']}, contacts {s.synced_last_hour['contact']}) in "
            f"{s.cycles_last_hour} cycle(s)"
        )
        out.append(f"delta tokens: {self._tokens_text()}")
        out.append(f"schedule: {self.schedule}")
        if s.records_set_aside:
            out.append(
                f"records set aside: {s.records_set_aside} (`dynsync errors` lists them and why)"
            )
        return out

    def _pending_text(self) -> str:
        if self.pending is None:
            return f"unknown ({self.pending_error})"
        counts = ", ".join(f"{e}s {p.shown}" for e, p in self.pending.items())
        since = min(p.since for p in self.pending.values())
        oldest = [p.oldest_modifiedon for p in self.pending.values() if p.oldest_modifiedon]
        tail = f"; oldest pending modifiedon {_time(min(oldest))}" if oldest else ""
        return f"{counts} modified after the newest change stored ({_time(since)}){tail}"

    def _tokens_text(self) -> str:
        parts = []
        for entity, state in sorted(self.store.readers.items()):  # type: ignore[union-attr]
            if state.mode == "delta" and state.updated_at is not None:
                parts.append(f"{entity}s {_age(self.now - state.updated_at)} old")
            elif state.mode == "tracking":  # a parallel first copy (sync/parallel_read.py)
                parts.append(f"{entity}s not yet (the first copy's token read ends next cycle)")
            else:
                parts.append(f"{entity}s none (no change tracking: a modifiedon cursor)")
        return ", ".join(parts) or "none yet"

    def metadata(self) -> dict[str, object]:
        """The same facts as plain values, for the Dagster UI."""
        meta: dict[str, object] = {"status": "\n".join(self.lines()), "schedule": self.schedule}
        s = self.store
        if s is None or s.last_committed is None:
            return meta
        c = s.last_committed
        meta.update(
            {
                "last_committed_at": _time(c.finished_at),
                "last_committed_modes": f"accounts {c.account_mode}, contacts {c.contact_mode}",
                "last_cycle_outcome": s.last_cycle.outcome if s.last_cycle else "",
                "synced_last_hour": sum(s.synced_last_hour.values()),
                "records_set_aside": s.records_set_aside,
            }
        )
        for entity, p in (self.pending or {}).items():
            meta[f"pending_{entity}s"] = p.shown
        oldest = [p.oldest_modifiedon for p in (self.pending or {}).values() if p.oldest_modifiedon]
        meta["oldest_pending_modifiedon"] = _time(min(oldest)) if oldest else ""
        for entity, state in s.readers.items():
            if state.mode == "delta" and state.updated_at is not None:
                meta[f"delta_token_age_s_{entity}"] = round(
                    (self.now - state.updated_at).total_seconds(), 1
                )
        return meta


def collect_status(
    published: Path,
    connection: Callable[[], ConnectionSettings],
    schedule: str,
    now: datetime | None = None,
) -> SyncStatus:
    """Sync Status now: the store's side, then (after a first cycle) one capped count query
    per entity. Dynamics being unreachable leaves the backlog unknown, not the status."""
    now = now or datetime.now(UTC)
    store = read_store_status(published, now)
    pending, problem = None, None
    if store is not None and store.last_committed is not None:
        try:
            pending = pending_changes(connection(), pending_since(store))
        except (DynamicsError, SettingsError) as exc:
            problem = str(exc).splitlines()[0] if str(exc) else "Dynamics did not answer"
    return SyncStatus(now, store, pending, problem, schedule)


def pending_since(store: StoreStatus) -> dict[str, datetime]:
    """Per entity, the newest change the store holds: what Dynamics stamped later is waiting."""
    return {
        entity: newest or _BEFORE_ANY for entity, newest in sorted(store.newest_modifiedon.items())
    }


def _cycle_text(c: Cycle, now: datetime) -> str:
    when = f"{_time(c.finished_at)} ({_age(now - c.finished_at)} ago)" if c.finished_at else "?"
    return (
        f"{when}, {c.outcome}, accounts {c.account_mode}, contacts {c.contact_mode} "
        f"(run {c.run_id[:8]}, {c.trigger or 'manual'})"
    )


def _last_failure(c: Cycle, now: datetime) -> str:
    when = f"{_time(c.finished_at)} ({_age(now - c.finished_at)} ago)" if c.finished_at else ""
    return f"last cycle failed at {when}: {c.error or 'see the Dagster run log'}"


def _time(value: datetime | None) -> str:
    return f"{value.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" if value else ""


def _age(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"
