"""One sync cycle: resolve fields, fetch what changed into a stage, apply it in one transaction.

Contacts are fetched before accounts: a contact can only point at an account that existed
before it, so every account a fetched contact names is in the (later) account read.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from dynsync_dagster.dynamics.client import ClientStats, DynamicsClient, Page
from dynsync_dagster.dynamics.errors import DynamicsError, ExpiredDeltaToken
from dynsync_dagster.dynamics.fields import (
    ENTITIES,
    ENTITY_SET,
    PRIMARY_KEY,
    FieldPlan,
    resolve_fields,
)
from dynsync_dagster.dynamics.pages import ArrowDecoder
from dynsync_dagster.settings import ConnectionSettings, SyncSettings
from dynsync_dagster.store.connection import cycle_lock, private_files, stage_path
from dynsync_dagster.store.lineage import write_lineage
from dynsync_dagster.store.publish import Published, PublishError, bump_generation, writing
from dynsync_dagster.store.schema import (
    SchemaChange,
    apply_schema_change,
    ensure_fixed_tables,
    existing_columns,
    plan_schema_change,
    table_columns,
)
from dynsync_dagster.store.state import (
    ReaderState,
    decisions_fingerprint,
    previously_synced_fields,
    read_reader_states,
    record_sync_errors,
    write_field_decisions,
    write_reader_state,
    write_sync_run,
)
from dynsync_dagster.sync.rules import MergeContext, MergeCounts, apply_cycle
from dynsync_dagster.sync.stage import (
    ANNOTATIONS,
    STAGE,
    Progress,
    Stage,
    attached,
    rejects_table,
    typed_view,
)

log = logging.getLogger("dynsync.cycle")

# Without change tracking, re-read this far behind the cursor: modifiedon is stamped when a
# write starts, so a long transaction can surface after later rows were read.
CURSOR_OVERLAP = timedelta(minutes=10)


@dataclass(frozen=True)
class CycleOptions:
    window: tuple[datetime, datetime] | None = None  # re-read records modified in [start, end)
    trigger: str = "manual"
    run_id: str | None = None
    page_size: int = 5000
    store_wait_s: float = 60.0


@dataclass
class CycleResult:
    run_id: str
    started_at: datetime
    finished_at: datetime
    modes: dict[str, str]
    rows_read: dict[str, int]
    deletions_read: dict[str, int]
    counts: MergeCounts
    plan: FieldPlan
    stats: ClientStats
    reader_states: dict[str, ReaderState]
    table_rows: dict[str, int] = field(default_factory=dict)
    table_schemas: dict[str, dict[str, str]] = field(default_factory=dict)
    record_errors: int = 0
    fetch_s: float = 0.0
    write_s: float = 0.0
    published: Published | None = None  # None: the published file already held this state
    publish_s: float = 0.0


class _Fetch:
    """How one entity is read this cycle, and where its reader will stand afterwards."""

    def __init__(self, entity: str, mode: str, pages: Callable[[], Iterator[Page]]):
        self.entity = entity
        self.mode = mode
        self.pages = pages
        self.delta_link: str | None = None


def run_cycle(
    conn: ConnectionSettings,
    sync: SyncSettings,
    db_path: Path,
    options: CycleOptions = CycleOptions(),
    *,
    client: DynamicsClient | None = None,
) -> CycleResult:
    """Run one cycle. On failure the data tables are untouched; a `failed` sync_runs row says why."""
    run_id = options.run_id or uuid.uuid4().hex
    started = datetime.now(UTC)
    # Waiting for another cycle is not a failure of this one: nothing to record if it times out.
    with private_files(), cycle_lock(Path(db_path), options.store_wait_s):
        try:
            return _run_cycle(conn, sync, Path(db_path), options, client, run_id, started)
        except PublishError:
            raise  # the cycle itself committed: its sync_runs row says so
        except Exception as exc:
            _record_failure(Path(db_path), options, run_id, started, exc)
            raise


def _record_failure(
    db_path: Path, options: CycleOptions, run_id: str, started: datetime, exc: Exception
) -> None:
    try:
        with writing(db_path, wait_s=5, run_id=run_id) as session:
            con = session.con
            ensure_fixed_tables(con)
            now = datetime.now(UTC)
            con.execute("BEGIN TRANSACTION")
            write_sync_run(
                con,
                {
                    "run_id": run_id,
                    "trigger": options.trigger,
                    "started_at": started,
                    "finished_at": now,
                    "outcome": "failed",
                    "error": f"{type(exc).__name__}: {exc}"[:2000],
                },
            )
            # Readers should see that the last cycle failed, not only the one before it.
            bump_generation(con, run_id, now)
            con.execute("COMMIT")
    except Exception as record_exc:  # the original error matters more than the status row
        log.warning("could not record the failed cycle in sync_runs: %s", record_exc)


def _run_cycle(
    conn: ConnectionSettings,
    sync: SyncSettings,
    db_path: Path,
    options: CycleOptions,
    client: DynamicsClient | None,
    run_id: str,
    started: datetime,
) -> CycleResult:
    with writing(db_path, wait_s=options.store_wait_s, publish=False) as session:
        con = session.con
        ensure_fixed_tables(con)
        states = read_reader_states(con)
        before = previously_synced_fields(con)
        columns = existing_columns(con)

    own_client = client is None
    client = client or DynamicsClient(conn, page_size=options.page_size)
    stage: Stage | None = None
    try:
        t0 = time.perf_counter()
        plan = resolve_fields(client, sync.account_fields, sync.contact_fields, before)
        for warning in plan.warnings:
            log.warning(warning)
        schema = plan_schema_change(columns, plan)
        stage = Stage(stage_path(db_path), plan)
        modes: dict[str, str] = {}
        new_states: dict[str, ReaderState] = {}
        reconcile: dict[str, bool] = {}
        for entity in ("contact", "account"):
            state, mode = _fetch_entity(
                client, stage, plan, schema, entity, states.get(entity), options
            )
            if options.window is not None:
                # A backfill is a scheduled cycle plus a re-read of its window, read last so
                # its sightings win. Catching up first matters: a window read alone cannot
                # see deletions, so it would propagate an account change onto a contact
                # Dynamics had already deleted, and the store would depend on which of the
                # backfill and the scheduled run came first.
                window = _modified(
                    client, plan, entity, *options.window, arrow=stage.decoder(entity)
                )
                _drain(stage, entity, window)
            modes[entity] = mode
            reconcile[entity] = mode in ("full", "resync")
            if state is not None:
                new_states[entity] = state
        stage.finish()
        fetch_s = time.perf_counter() - t0
    except BaseException:
        if stage is not None:
            if stage.has_checkpoint():
                stage.close()  # keep it: the next cycle resumes the full read
            else:
                stage.discard()
        raise
    finally:
        if own_client:
            client.close()

    t1 = time.perf_counter()
    now = datetime.now(UTC)
    committed = False
    try:
        with writing(db_path, wait_s=options.store_wait_s, run_id=run_id) as session:
            con = session.con
            con.execute(f"ATTACH '{_sql_path(stage.path)}' AS {STAGE} (READ_ONLY)")
            con.execute("BEGIN TRANSACTION")
            try:
                decisions_before = decisions_fingerprint(con)
                # The columns may have changed since the first look (another cycle ran).
                schema = plan_schema_change(existing_columns(con), plan)
                apply_schema_change(con, plan, schema)
                ctx = MergeContext(
                    plan, schema, reconcile, run_id, now, sync.activity_log_contact_limit
                )
                counts = apply_cycle(con, ctx)
                rejects = {e: attached(rejects_table(e)) for e in ENTITIES}
                record_errors = record_sync_errors(con, rejects, run_id, now)
                for s in new_states.values():
                    write_reader_state(con, _with_cursor(con, s), run_id)
                write_field_decisions(con, plan, run_id, now)
                write_lineage(con, plan, now)
                if _changed_data(counts, schema, record_errors) or (
                    decisions_fingerprint(con) != decisions_before
                ):
                    bump_generation(con, run_id, now)
                stats = client.stats
                write_sync_run(
                    con,
                    {
                        "run_id": run_id,
                        "trigger": options.trigger,
                        "started_at": started,
                        "finished_at": datetime.now(UTC),
                        "outcome": "success",
                        "account_mode": modes["account"],
                        "contact_mode": modes["contact"],
                        "window_start": options.window[0] if options.window else None,
                        "window_end": options.window[1] if options.window else None,
                        "accounts_read": stage.rows["account"],
                        "contacts_read": stage.rows["contact"],
                        "accounts_upserted": counts.accounts_upserted,
                        "contacts_upserted": counts.contacts_upserted,
                        "accounts_deleted": counts.accounts_deleted,
                        "contacts_deleted": counts.contacts_deleted,
                        "contacts_repropagated": counts.contacts_repropagated,
                        "activities_logged": counts.activities_logged,
                        "activities_suppressed": counts.activities_suppressed,
                        "requests": stats.requests,
                        "retries": stats.retries,
                        "throttle_wait_s": stats.throttle_wait_s,
                        "record_errors": record_errors,
                    },
                )
                con.execute("COMMIT")
                committed = True
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                con.execute(f"DETACH {STAGE}")
            table_rows, table_schemas = _table_facts(con)
            states_now = read_reader_states(con)
        # The session closed the store (its checkpoint) and then published it for readers.
        write_s = time.perf_counter() - t1 - session.publish_s
    finally:
        # A full read that could not be written is kept for the next cycle to reuse.
        if committed or not any(m in ("full", "resync") for m in modes.values()):
            stage.discard()
    return CycleResult(
        run_id=run_id,
        started_at=started,
        finished_at=datetime.now(UTC),
        modes=modes,
        rows_read=dict(stage.rows),
        deletions_read=dict(stage.deleted),
        counts=counts,
        plan=plan,
        stats=client.stats,
        reader_states=states_now,
        table_rows=table_rows,
        table_schemas=table_schemas,
        record_errors=record_errors,
        fetch_s=fetch_s,
        write_s=write_s,
        published=session.published,
        publish_s=session.publish_s,
    )


REPORTED_TABLES = ("sync_fields", "accounts", "contacts", "activity_log", "sync_runs")


def _table_facts(
    con: duckdb.DuckDBPyConnection,
) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    """Row counts and columns of the reported tables, read on the cycle's own connection so
    that the run's metadata needs no second look at the store."""
    rows = {t: int(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in REPORTED_TABLES}
    return rows, {t: table_columns(con, t) for t in REPORTED_TABLES}


def _changed_data(counts: MergeCounts, schema: SchemaChange, record_errors: int) -> bool:
    """Did the transaction change what a reader sees, beyond the cycle's own bookkeeping
    (sync_runs, sync_state)? A cycle that did not leaves the published file as it is."""
    moved = (
        counts.accounts_upserted,
        counts.accounts_deleted,
        counts.contacts_upserted,
        counts.contacts_deleted,
        counts.contacts_repropagated,
        counts.local_edits_overwritten,
        counts.activities_logged,
        counts.activities_suppressed,
        record_errors,
    )
    return any(moved) or bool(schema.added) or bool(schema.dropped)


def _fetch_entity(
    client: DynamicsClient,
    stage: Stage,
    plan: FieldPlan,
    schema: SchemaChange,
    entity: str,
    state: ReaderState | None,
    options: CycleOptions,
) -> tuple[ReaderState | None, str]:
    """Read one entity into the stage; returns its next reader state (None: unchanged) and mode."""
    select = plan.select(entity)
    select_list = ",".join(select)
    entity_set, key = ENTITY_SET[entity], PRIMARY_KEY[entity]
    tracking = plan.change_tracking[entity]
    now = datetime.now(UTC)
    arrow = stage.decoder(entity)

    def modified(since: datetime) -> Iterator[Page]:
        return _modified(client, plan, entity, since, arrow=arrow)

    def delta(link: str) -> Iterator[Page]:
        return client.iter_link(link, track_changes=True, annotations=ANNOTATIONS, arrow=arrow)

    resumed = stage.progress(entity)
    if resumed is not None and resumed.select_list == select_list:
        # A full read a failed cycle left half done: go on from its last checkpoint.
        stage.count(entity)
        log.info(
            "%s: resuming a full read from its checkpoint (%d rows staged)",
            entity,
            stage.rows[entity],
        )
        done = resumed.complete
        if not done and resumed.resume_link:
            try:
                pages = client.iter_link(
                    resumed.resume_link,
                    track_changes=tracking,
                    annotations=ANNOTATIONS,
                    arrow=arrow,
                )
                _drain(stage, entity, pages, (resumed.mode, select_list, resumed.started_at))
                done = True
            except DynamicsError as exc:
                if exc.status != 400:
                    raise
                log.warning("%s: the saved page link was refused (%s); starting over", entity, exc)
        if done:
            progress = stage.progress(entity)
            link = progress.delta_link if progress else None
            # Pages staged by the failed cycle may be stale: bring in what changed since that
            # read began, in this same cycle (a delta poll, or a cursor read from its start).
            if link:
                link = _drain(stage, entity, delta(link)) or link
            else:
                _drain(stage, entity, modified(resumed.started_at - CURSOR_OVERLAP))
            return _after_full(entity, link, select_list, now), resumed.mode
    stage.reset(entity)

    # A changed $select (field added or removed) needs every record again, not a delta.
    fresh = state is None or state.select_list != select_list or schema.refill(entity)
    mode = "full"
    if tracking and not fresh and state is not None and state.delta_link:
        try:
            link = _drain(stage, entity, delta(state.delta_link)) or state.delta_link
            return ReaderState(entity, "delta", link, select_list, None, now), "delta"
        except ExpiredDeltaToken:
            log.warning("%s: the delta token expired; re-reading the whole table", entity)
            stage.reset(entity)
            mode = "resync"
    if not tracking and not fresh and state is not None and state.cursor_modifiedon is not None:
        _drain(stage, entity, modified(state.cursor_modifiedon - CURSOR_OVERLAP))
        cursor = ReaderState(entity, "cursor", None, select_list, state.cursor_modifiedon, now)
        return cursor, "cursor"
    pages = (
        client.iter_pages(
            entity_set, select=select, track_changes=True, annotations=ANNOTATIONS, arrow=arrow
        )
        if tracking
        else client.iter_pages(
            entity_set, select=select, orderby=f"{key} asc", annotations=ANNOTATIONS, arrow=arrow
        )
    )
    link = _drain(stage, entity, pages, checkpoint=(mode, select_list, now))
    return _after_full(entity, link if tracking else None, select_list, now), mode


def _modified(
    client: DynamicsClient,
    plan: FieldPlan,
    entity: str,
    since: datetime,
    until: datetime | None = None,
    *,
    arrow: ArrowDecoder | None = None,
) -> Iterator[Page]:
    """Records modified in [since, until), oldest first (a cursor or a backfill window)."""
    window = f"modifiedon ge {odata_time(since)}"
    if until is not None:
        window += f" and modifiedon lt {odata_time(until)}"
    return client.iter_pages(
        ENTITY_SET[entity],
        select=plan.select(entity),
        filter=window,
        orderby=f"modifiedon asc,{PRIMARY_KEY[entity]} asc",
        annotations=ANNOTATIONS,
        arrow=arrow,
    )


def _after_full(
    entity: str, delta_link: str | None, select_list: str, now: datetime
) -> ReaderState:
    if delta_link:
        return ReaderState(entity, "delta", delta_link, select_list, None, now)
    # No change tracking (or the server gave no delta link): a modifiedon cursor from here on.
    return ReaderState(entity, "cursor", None, select_list, None, now)


def _drain(
    stage: Stage,
    entity: str,
    pages: Iterator[Page],
    checkpoint: tuple[str, str, datetime] | None = None,
) -> str | None:
    """Stream pages into the stage; return the delta link of the last page, if any.

    With `checkpoint` (mode, select list, start of the read), each page's next link is saved
    with its rows, so a failed full read resumes where it stopped.
    """
    link = None
    for page in _prefetched(pages):
        stage.add_page(entity, page)
        link = page.delta_link or link
        if checkpoint is not None:
            mode, select_list, started_at = checkpoint
            stage.checkpoint(
                entity,
                Progress(
                    mode,
                    select_list,
                    page.next_link,
                    page.delta_link,
                    page.next_link is None,
                    started_at,
                ),
            )
    return link


def _prefetched(pages: Iterator[Page], depth: int = 2) -> Iterator[Page]:
    """Fetch the next page on a worker thread while the caller stages this one.

    The socket read and DuckDB's insert both release the GIL, so the network wait of one page
    overlaps the staging of the previous. At most `depth` pages are held; an error in the
    fetch is raised here, in order, after the pages before it.
    """
    done = object()
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def fetch() -> None:
        try:
            for page in pages:
                while not stop.is_set():
                    try:
                        handoff.put(page, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put(done)
        except BaseException as exc:  # handed over and re-raised in the caller's thread
            handoff.put(exc)

    worker = threading.Thread(target=fetch, name="dynsync-fetch", daemon=True)
    worker.start()
    try:
        while True:
            item = handoff.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        # Unblock a worker waiting to hand over a page or an error, then let it finish the
        # request it may be in (bounded; it is a daemon thread either way).
        deadline = time.monotonic() + 30
        while worker.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                handoff.get_nowait()
            worker.join(timeout=0.05)


def _with_cursor(con, state: ReaderState) -> ReaderState:
    """A cursor reader advances to the newest modifiedon it committed, never backwards."""
    if state.mode != "cursor":
        return state
    row = con.execute(
        f"SELECT max(modifiedon) FROM {attached(typed_view(state.entity))}"
    ).fetchone()
    newest = row[0] if row else None
    cursor = max((c for c in (state.cursor_modifiedon, newest) if c is not None), default=None)
    return ReaderState(state.entity, state.mode, None, state.select_list, cursor, state.updated_at)


def odata_time(value: datetime) -> str:
    """An OData DateTimeOffset literal: unquoted, UTC, second precision."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")
