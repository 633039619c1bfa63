"""One sync cycle: resolve fields, fetch what changed into a stage, apply it in one transaction.

Contacts are fetched before accounts: a contact can only point at an account that existed
before it, so every account a fetched contact names is in the (later) account read.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import duckdb

from dynsync_dagster.dynamics.budget import Budget
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
from dynsync_dagster.store.outbox import record_run
from dynsync_dagster.store.publish import (
    Published,
    PublishError,
    bump_generation,
    store_files,
    writing,
)
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
    SyncRun,
    decisions_fingerprint,
    previously_synced_fields,
    read_reader_states,
    record_sync_errors,
    write_field_decisions,
    write_reader_state,
    write_sync_run,
)
from dynsync_dagster.sync import parallel_read, progress
from dynsync_dagster.sync.parallel_read import ParallelRead
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
    # Full reads in parallel key ranges within a share of the budget (parallel_read.py);
    # None: one page at a time. Off unless DYNSYNC_PARALLEL_READ=1.
    parallel: ParallelRead | None = field(default_factory=parallel_read.from_env)


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


@dataclass
class _Fetched:
    """What the fetch step hands to the commit step: the finished stage and how it was read."""

    stage: Stage
    plan: FieldPlan
    stats: ClientStats
    modes: dict[str, str] = field(default_factory=dict)  # entity -> full, resync, delta, cursor
    next_states: dict[str, ReaderState] = field(default_factory=dict)  # absent: unchanged
    fetch_s: float = 0.0

    @property
    def reconcile(self) -> dict[str, bool]:
        """Entities read whole: an id the read did not see was deleted in Dynamics."""
        return {entity: mode in ("full", "resync") for entity, mode in self.modes.items()}


@dataclass(frozen=True)
class _Applied:
    """What the commit step's transaction did."""

    counts: MergeCounts
    record_errors: int


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
            fetched = _fetch(conn, sync, Path(db_path), options, client)
            return _commit(sync, Path(db_path), options, fetched, run_id, started)
        except PublishError:
            raise  # the cycle itself committed: its sync_runs row says so
        except StoreOfAnotherOrg:
            raise  # another org's store stays exactly as it was, its sync_runs included
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
            failed = SyncRun(
                run_id=run_id,
                trigger=options.trigger,
                started_at=started,
                finished_at=now,
                outcome="failed",
                # What a user reads in sync_runs and the UI: the message, which names the
                # problem and the fix, not the exception's class.
                error=(str(exc) or f"unexpected {type(exc).__name__}; see the run log")[:2000],
            )
            write_sync_run(con, failed)
            record_run(con, run_id)  # for PostgreSQL's copy (store/outbox.py)
            # Readers should see that the last cycle failed, not only the one before it.
            bump_generation(con, run_id, now)
            con.execute("COMMIT")
    except Exception as record_exc:  # the original error matters more than the status row
        log.warning("could not record the failed cycle in sync_runs: %s", record_exc)


# -- fetch: read what changed in Dynamics into the stage, without holding the store ----------


def _fetch(
    conn: ConnectionSettings,
    sync: SyncSettings,
    db_path: Path,
    options: CycleOptions,
    client: DynamicsClient | None,
) -> _Fetched:
    """Resolve the fields, then read contacts and accounts into a stage next to the store."""
    states, synced_before, columns = _look_at_store(db_path, options)
    _refuse_another_org(states, conn, db_path)
    stage: Stage | None = None
    with _client(conn, options, client) as client:
        try:
            t0 = time.perf_counter()
            plan = resolve_fields(
                client,
                sync.account_fields,
                sync.contact_fields,
                synced_before,
                sync_filter_field=sync.sync_filter_field,
            )
            for warning in plan.warnings:
                log.warning(warning)
            schema = plan_schema_change(columns, plan)
            stage = Stage(stage_path(db_path), plan)
            fetched = _Fetched(stage, plan, client.stats)
            watcher = _Watcher(progress.current(), client)
            budget = Budget(options.parallel.budget) if options.parallel else None
            for entity in ("contact", "account"):
                read = _EntityRead(
                    client,
                    stage,
                    plan,
                    entity,
                    datetime.now(UTC),
                    watcher,
                    options.parallel,
                    budget,
                )
                next_state, mode = _fetch_entity(read, schema, states.get(entity))
                fetched.modes[entity] = mode
                if next_state is not None:
                    fetched.next_states[entity] = next_state
                if options.window is not None:
                    # A backfill is a scheduled cycle plus a re-read of its window, read last so
                    # its sightings win. Catching up first matters: a window read alone cannot
                    # see deletions, so it would propagate an account change onto a contact
                    # Dynamics had already deleted, and the store would depend on which of the
                    # backfill and the scheduled run came first.
                    read.drain(read.modified(*options.window))
            stage.finish()
            fetched.fetch_s = time.perf_counter() - t0
            return fetched
        except BaseException:
            if stage is not None:
                _keep_or_discard(stage)
            raise


def _look_at_store(
    db_path: Path, options: CycleOptions
) -> tuple[dict[str, ReaderState], set[tuple[str, str]], dict[str, dict[str, str]]]:
    """Where the readers stand, which fields synced before, and the store's columns."""
    with writing(db_path, wait_s=options.store_wait_s, publish=False) as session:
        con = session.con
        ensure_fixed_tables(con)
        return read_reader_states(con), previously_synced_fields(con), existing_columns(con)


class StoreOfAnotherOrg(RuntimeError):
    """The store was synced from another org than DYNAMICS_URL names."""


def _refuse_another_org(
    states: dict[str, ReaderState], conn: ConnectionSettings, db_path: Path
) -> None:
    """A store follows one org: its delta links name the org it was synced from. Mixing two
    orgs' records in one file would be silent corruption, so refuse before reading anything."""
    for state in states.values():
        origin = urlsplit(state.delta_link or "").netloc
        if origin and origin != urlsplit(conn.url).netloc:
            files = " ".join(str(p) for p in store_files(db_path))
            raise StoreOfAnotherOrg(
                f"the store {db_path} holds the org https://{origin}, not DYNAMICS_URL="
                f"{conn.url}; nothing was read or changed. To sync {conn.url}, set "
                "DYNSYNC_DUCKDB_PATH to a new file; to start this store over for it, move "
                f"these files aside first: {files}"
            )


@contextlib.contextmanager
def _client(
    conn: ConnectionSettings, options: CycleOptions, given: DynamicsClient | None
) -> Iterator[DynamicsClient]:
    """The caller's client, or one of our own that is closed when the fetch ends."""
    if given is not None:
        yield given
        return
    with contextlib.closing(DynamicsClient(conn, page_size=options.page_size)) as own:
        yield own


def _keep_or_discard(stage: Stage) -> None:
    """After a failed fetch: keep a checkpointed full read for the next cycle to resume."""
    if stage.has_checkpoint():
        stage.close()
    else:
        stage.discard()


class _Watcher:
    """Progress of the full reads, with totals fetched once and only when someone watches."""

    def __init__(self, shown: progress.ReadProgress, client: DynamicsClient) -> None:
        self.shown = shown
        self._client = client
        self._totals: dict[str, int] | None = None

    def total(self, entity: str) -> int | None:
        if not isinstance(self.shown, progress.TerminalProgress):
            return None  # nobody watches: not even one request for it
        if self._totals is None:
            try:
                self._totals = self._client.record_counts(["contact", "account"])
            except DynamicsError as exc:
                # Optional: without the count, progress shows rows and rate but no total.
                log.info("no record counts for progress (%s)", exc)
                self._totals = {}
        return self._totals.get(entity)


@dataclass(frozen=True)
class _EntityRead:
    """One entity's read this cycle: where its pages come from and where they go."""

    client: DynamicsClient
    stage: Stage
    plan: FieldPlan
    entity: str
    started: datetime
    watcher: _Watcher | None = None
    parallel: ParallelRead | None = None
    budget: Budget | None = None  # the cycle's share of the user's budget, if parallel

    @property
    def select_list(self) -> str:
        return ",".join(self.plan.select(self.entity))

    @property
    def tracking(self) -> bool:
        return self.plan.change_tracking[self.entity]

    @functools.cached_property
    def arrow(self) -> ArrowDecoder:
        return self.stage.decoder(self.entity)

    def modified(self, since: datetime, until: datetime | None = None) -> Iterator[Page]:
        """Records modified in [since, until), oldest first (a cursor or a backfill window)."""
        window = f"modifiedon ge {odata_time(since)}"
        if until is not None:
            window += f" and modifiedon lt {odata_time(until)}"
        return self.client.iter_pages(
            ENTITY_SET[self.entity],
            select=self.plan.select(self.entity),
            filter=window,
            orderby=f"modifiedon asc,{PRIMARY_KEY[self.entity]} asc",
            annotations=ANNOTATIONS,
            arrow=self.arrow,
        )

    def link(self, link: str, *, track_changes: bool = True) -> Iterator[Page]:
        """The pages from a saved link: a delta link, or the next page of a full read."""
        return self.client.iter_link(
            link, track_changes=track_changes, annotations=ANNOTATIONS, arrow=self.arrow
        )

    def everything(self) -> Iterator[Page]:
        """Every record: with change tracking (ends with a delta link), else in key order."""
        select, entity_set = self.plan.select(self.entity), ENTITY_SET[self.entity]
        if self.tracking:
            return self.client.iter_pages(
                entity_set,
                select=select,
                track_changes=True,
                annotations=ANNOTATIONS,
                arrow=self.arrow,
            )
        return self.client.iter_pages(
            entity_set,
            select=select,
            orderby=f"{PRIMARY_KEY[self.entity]} asc",
            annotations=ANNOTATIONS,
            arrow=self.arrow,
        )

    def drain(
        self, pages: Iterator[Page], checkpoint: tuple[str, datetime] | None = None
    ) -> str | None:
        """Stream pages into the stage; return the delta link of the last page, if any.

        With `checkpoint` (mode, start of the read), each page's next link is saved with its
        rows, so a failed full read resumes where it stopped.
        """
        link = None
        shown = self.watcher.shown if self.watcher and checkpoint else progress.ReadProgress()
        if checkpoint is not None:
            total = self.watcher.total(self.entity) if self.watcher else None
            # A resumed read counts the rows the failed cycle staged.
            shown.start(self.entity, checkpoint[0], total, self.stage.rows.get(self.entity, 0))
        for page in _prefetched(pages):
            self.stage.add_page(self.entity, page)
            link = page.delta_link or link
            shown.page(self.entity, len(page))
            if checkpoint is not None:
                mode, started_at = checkpoint
                saved = Progress(
                    mode,
                    self.select_list,
                    page.next_link,
                    page.delta_link,
                    page.next_link is None,
                    started_at,
                )
                self.stage.checkpoint(self.entity, saved)
        shown.done(self.entity)
        return link

    def state(self, mode: str, delta_link: str | None, cursor: datetime | None) -> ReaderState:
        """Where this entity's reader stands once the cycle commits."""
        return ReaderState(self.entity, mode, delta_link, self.select_list, cursor, self.started)


def _fetch_entity(
    read: _EntityRead, schema: SchemaChange, state: ReaderState | None
) -> tuple[ReaderState | None, str]:
    """Read one entity into the stage; returns its next reader state (None: unchanged) and mode."""
    resumed = _resume_full_read(read)
    if resumed is not None:
        return resumed
    read.stage.reset(read.entity)

    # A changed $select (field added or removed) needs every record again, not a delta.
    fresh = state is None or state.select_list != read.select_list or schema.refill(read.entity)
    mode = "full"
    if read.tracking and not fresh and state is not None and state.mode == parallel_read.TRACKING:
        finished = parallel_read.finish_token(read, state)  # a parallel first copy's token
        if finished is not None:
            return finished, "delta"
        mode = "resync"
    elif read.tracking and not fresh and state is not None and state.delta_link:
        try:
            link = read.drain(read.link(state.delta_link)) or state.delta_link
            return read.state("delta", link, None), "delta"
        except ExpiredDeltaToken:
            log.warning("%s: the delta token expired; re-reading the whole table", read.entity)
            read.stage.reset(read.entity)
            mode = "resync"
    if (
        not read.tracking
        and not fresh
        and state is not None
        and state.cursor_modifiedon is not None
    ):
        read.drain(read.modified(state.cursor_modifiedon - CURSOR_OVERLAP))
        return read.state("cursor", None, state.cursor_modifiedon), "cursor"
    if read.parallel is not None:
        return parallel_read.read_all(read, read.parallel, mode), mode
    link = read.drain(read.everything(), checkpoint=(mode, read.started))
    return _after_full(read, link if read.tracking else None), mode


def _resume_full_read(read: _EntityRead) -> tuple[ReaderState, str] | None:
    """Finish a full read a failed cycle left half done; None if there is none to finish."""
    resumed = read.stage.progress(read.entity)
    if resumed is None or resumed.select_list != read.select_list:
        return None
    read.stage.count(read.entity)
    log.info(
        "%s: resuming a full read from its checkpoint (%d rows staged)",
        read.entity,
        read.stage.rows[read.entity],
    )
    if not (resumed.complete or _read_after_checkpoint(read, resumed)):
        return None
    progress = read.stage.progress(read.entity)
    link = progress.delta_link if progress else None
    # Pages staged by the failed cycle may be stale: bring in what changed since that read
    # began, in this same cycle (a delta poll, or a cursor read from its start).
    if link:
        try:
            link = read.drain(read.link(link)) or link
        except ExpiredDeltaToken:
            # The read is too old to catch up on (deletions included): read it again.
            log.warning("%s: the resumed read's delta token expired; starting over", read.entity)
            return None
    else:
        read.drain(read.modified(resumed.started_at - CURSOR_OVERLAP))
    return _after_full(read, link), resumed.mode


def _read_after_checkpoint(read: _EntityRead, resumed: Progress) -> bool:
    """Read the pages after the checkpoint; False if Dynamics refused the saved link."""
    if not resumed.resume_link:  # a parallel read's parts, if it was one
        return parallel_read.resume(read, resumed, read.parallel)
    try:
        pages = read.link(resumed.resume_link, track_changes=read.tracking)
        read.drain(pages, checkpoint=(resumed.mode, resumed.started_at))
    except DynamicsError as exc:
        if exc.status != 400:
            raise
        log.warning("%s: the saved page link was refused (%s); starting over", read.entity, exc)
        return False
    return True


def _after_full(read: _EntityRead, delta_link: str | None) -> ReaderState:
    if delta_link:
        return read.state("delta", delta_link, None)
    # No change tracking (or the server gave no delta link): a modifiedon cursor from here on.
    return read.state("cursor", None, None)


# -- commit: apply the stage to the store in one transaction, then publish it for readers ----


def _commit(
    sync: SyncSettings,
    db_path: Path,
    options: CycleOptions,
    fetched: _Fetched,
    run_id: str,
    started: datetime,
) -> CycleResult:
    """Apply the stage, record where the readers stand and the run, and publish the store."""
    t1 = time.perf_counter()
    now = datetime.now(UTC)
    committed = False
    try:
        with writing(db_path, wait_s=options.store_wait_s, run_id=run_id) as session:
            con = session.con
            with _attached_stage(con, fetched.stage.path):
                with _transaction(con):
                    applied = _apply(con, sync, options, fetched, run_id, started, now)
                committed = True
            table_rows, table_schemas = _table_facts(con)
            states_now = read_reader_states(con)
        # The session closed the store (its checkpoint) and then published it for readers.
        write_s = time.perf_counter() - t1 - session.publish_s
    finally:
        # A full read that could not be written is kept for the next cycle to reuse.
        if committed or not any(fetched.reconcile.values()):
            fetched.stage.discard()
    return CycleResult(
        run_id=run_id,
        started_at=started,
        finished_at=datetime.now(UTC),
        modes=fetched.modes,
        rows_read=dict(fetched.stage.rows),
        deletions_read=dict(fetched.stage.deleted),
        counts=applied.counts,
        plan=fetched.plan,
        stats=fetched.stats,
        reader_states=states_now,
        table_rows=table_rows,
        table_schemas=table_schemas,
        record_errors=applied.record_errors,
        fetch_s=fetched.fetch_s,
        write_s=write_s,
        published=session.published,
        publish_s=session.publish_s,
    )


@contextlib.contextmanager
def _attached_stage(con: duckdb.DuckDBPyConnection, path: Path) -> Iterator[None]:
    con.execute(f"ATTACH '{_sql_path(path)}' AS {STAGE} (READ_ONLY)")
    try:
        yield
    finally:
        con.execute(f"DETACH {STAGE}")


@contextlib.contextmanager
def _transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _apply(
    con: duckdb.DuckDBPyConnection,
    sync: SyncSettings,
    options: CycleOptions,
    fetched: _Fetched,
    run_id: str,
    started: datetime,
    now: datetime,
) -> _Applied:
    """The cycle's transaction: the rules, the status tables, and a new generation if a reader
    would see a difference."""
    plan = fetched.plan
    decisions_before = decisions_fingerprint(con)
    # The columns may have changed since the first look (another cycle ran).
    schema = plan_schema_change(existing_columns(con), plan)
    apply_schema_change(con, plan, schema)
    blocked = frozenset(f for f in sync.block_field_updates if sync.blocked(f, "dynamics_sync"))
    ctx = MergeContext(
        plan, schema, fetched.reconcile, run_id, now, sync.activity_log_contact_limit, blocked
    )
    counts = apply_cycle(con, ctx)
    rejects = {e: attached(rejects_table(e)) for e in ENTITIES}
    applied = _Applied(counts, record_sync_errors(con, rejects, run_id, now))
    for state in fetched.next_states.values():
        write_reader_state(con, _with_cursor(con, state), run_id)
    write_field_decisions(con, plan, run_id, now)
    write_lineage(con, plan, now)
    if _changed_data(applied, schema) or decisions_fingerprint(con) != decisions_before:
        bump_generation(con, run_id, now)
    write_sync_run(con, _success_row(options, fetched, applied, run_id, started))
    record_run(con, run_id)  # for PostgreSQL's copy (store/outbox.py)
    return applied


def _success_row(
    options: CycleOptions, fetched: _Fetched, applied: _Applied, run_id: str, started: datetime
) -> SyncRun:
    counts, stats, stage = applied.counts, fetched.stats, fetched.stage
    window_start, window_end = options.window or (None, None)
    return SyncRun(
        run_id=run_id,
        trigger=options.trigger,
        started_at=started,
        finished_at=datetime.now(UTC),
        outcome="success",
        account_mode=fetched.modes["account"],
        contact_mode=fetched.modes["contact"],
        window_start=window_start,
        window_end=window_end,
        accounts_read=stage.rows["account"],
        contacts_read=stage.rows["contact"],
        accounts_upserted=counts.accounts_upserted,
        contacts_upserted=counts.contacts_upserted,
        accounts_deleted=counts.accounts_deleted,
        contacts_deleted=counts.contacts_deleted,
        contacts_repropagated=counts.contacts_repropagated,
        activities_logged=counts.activities_logged,
        activities_suppressed=counts.activities_suppressed,
        requests=stats.requests,
        retries=stats.retries,
        throttle_wait_s=stats.throttle_wait_s,
        record_errors=applied.record_errors,
        accounts_filtered=counts.accounts_filtered,
        contacts_filtered=counts.contacts_filtered,
        updates_blocked=counts.updates_blocked,
    )


REPORTED_TABLES = ("sync_fields", "accounts", "contacts", "activity_log", "sync_runs")


def _table_facts(
    con: duckdb.DuckDBPyConnection,
) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    """Row counts and columns of the reported tables, read on the cycle's own connection so
    that the run's metadata needs no second look at the store."""
    rows = {t: int(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]) for t in REPORTED_TABLES}
    return rows, {t: table_columns(con, t) for t in REPORTED_TABLES}


def _changed_data(applied: _Applied, schema: SchemaChange) -> bool:
    """Did the transaction change what a reader sees, beyond the cycle's own bookkeeping
    (sync_runs, sync_state)? A cycle that did not leaves the published file as it is."""
    counts = applied.counts
    moved = (
        counts.accounts_upserted,
        counts.accounts_deleted,
        counts.contacts_upserted,
        counts.contacts_deleted,
        counts.contacts_repropagated,
        counts.local_edits_overwritten,
        counts.activities_logged,
        counts.activities_suppressed,
        counts.filter_changes,  # records gone stale, filtered_records changed
        counts.updates_blocked,
        applied.record_errors,
    )
    return any(moved) or bool(schema.added) or bool(schema.dropped)


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


def _with_cursor(con: duckdb.DuckDBPyConnection, state: ReaderState) -> ReaderState:
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
