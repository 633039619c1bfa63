"""The DuckDB file: connections, the fixed tables, and the field columns that follow the selection."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb

from dynsync_dagster.dynamics.fields import FieldPlan, FieldSpec

# Columns dynsync maintains itself; every other column of accounts/contacts is a synced field.
ACCOUNT_BASE = {
    "accountid": "UUID",
    "modifiedon": "TIMESTAMPTZ",
    "versionnumber": "BIGINT",
    "is_deleted": "BOOLEAN NOT NULL DEFAULT false",
    "deleted_at": "TIMESTAMPTZ",
    "first_synced_at": "TIMESTAMPTZ",
    "last_synced_at": "TIMESTAMPTZ",
    "last_run_id": "VARCHAR",
}
CONTACT_BASE = {
    "contactid": "UUID",
    "accountid": "UUID",
    "parentcustomerid": "UUID",
    "parentcustomerid_type": "VARCHAR",
    "modifiedon": "TIMESTAMPTZ",
    "versionnumber": "BIGINT",
    "is_deleted": "BOOLEAN NOT NULL DEFAULT false",
    "deleted_at": "TIMESTAMPTZ",
    "first_synced_at": "TIMESTAMPTZ",
    "last_synced_at": "TIMESTAMPTZ",
    "last_run_id": "VARCHAR",
}
BASE_COLUMNS = {"accounts": ACCOUNT_BASE, "contacts": CONTACT_BASE}

FIXED_TABLES = """
CREATE SEQUENCE IF NOT EXISTS activity_id_seq;
CREATE TABLE IF NOT EXISTS activity_log (
    activity_id BIGINT DEFAULT nextval('activity_id_seq'),
    activity_type VARCHAR NOT NULL,
    contactid UUID NOT NULL,
    accountid UUID,
    attribute VARCHAR NOT NULL,
    old_value VARCHAR,
    new_value VARCHAR,
    source VARCHAR NOT NULL,
    reason VARCHAR NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    run_id VARCHAR,
    logged_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS activity_suppressions (
    run_id VARCHAR,
    accountid UUID NOT NULL,
    contact_count BIGINT NOT NULL,
    contact_limit BIGINT NOT NULL,
    attributes VARCHAR[] NOT NULL,
    rows_suppressed BIGINT NOT NULL,
    occurred_at TIMESTAMPTZ,
    logged_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS local_edits (
    accountid UUID NOT NULL,
    field VARCHAR NOT NULL,
    value VARCHAR,
    via_contactid UUID,
    account_versionnumber BIGINT,
    edited_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS sync_fields (
    entity VARCHAR NOT NULL,
    field VARCHAR NOT NULL,
    selected BOOLEAN NOT NULL,
    "exists" BOOLEAN NOT NULL,
    readable BOOLEAN NOT NULL,
    synced BOOLEAN NOT NULL,
    reason VARCHAR NOT NULL,
    attribute_type VARCHAR,
    is_secured BOOLEAN,
    duckdb_type VARCHAR,
    columns VARCHAR[],
    run_id VARCHAR,
    updated_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS choice_labels (
    entity VARCHAR NOT NULL,
    field VARCHAR NOT NULL,
    value INTEGER NOT NULL,
    label VARCHAR
);
CREATE TABLE IF NOT EXISTS sync_state (
    entity VARCHAR NOT NULL,
    mode VARCHAR NOT NULL,
    delta_link VARCHAR,
    select_list VARCHAR,
    cursor_modifiedon TIMESTAMPTZ,
    run_id VARCHAR,
    updated_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS sync_runs (
    run_id VARCHAR NOT NULL,
    trigger VARCHAR,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    outcome VARCHAR NOT NULL,
    account_mode VARCHAR,
    contact_mode VARCHAR,
    window_start TIMESTAMPTZ,
    window_end TIMESTAMPTZ,
    accounts_read BIGINT,
    contacts_read BIGINT,
    accounts_upserted BIGINT,
    contacts_upserted BIGINT,
    accounts_deleted BIGINT,
    contacts_deleted BIGINT,
    contacts_repropagated BIGINT,
    activities_logged BIGINT,
    activities_suppressed BIGINT,
    requests BIGINT,
    retries BIGINT,
    throttle_wait_s DOUBLE,
    record_errors BIGINT,
    error VARCHAR
);
CREATE TABLE IF NOT EXISTS column_lineage (
    table_name VARCHAR NOT NULL,
    column_name VARCHAR NOT NULL,
    source_table VARCHAR NOT NULL,
    source_column VARCHAR NOT NULL,
    description VARCHAR,
    updated_at TIMESTAMPTZ
);
CREATE TABLE IF NOT EXISTS sync_errors (
    run_id VARCHAR,
    entity VARCHAR NOT NULL,
    record_id VARCHAR NOT NULL,
    code VARCHAR NOT NULL,
    message VARCHAR NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL
);
"""


class StoreBusyError(RuntimeError):
    """Another dynsync process is writing the store (a cycle or a local edit). Retry later."""


class StoreNotReadyError(RuntimeError):
    """No cycle has published the store yet."""


def working_path(published: Path) -> Path:
    """The file cycles and local edits write; readers open `published` (publish.py)."""
    published = Path(published)
    return published.with_name(published.name + ".work")


def stage_path(published: Path) -> Path:
    published = Path(published)
    return published.with_name(published.name + ".stage")


def is_lock_conflict(exc: BaseException) -> bool:
    return "lock" in str(exc).lower()


def describe_process(pid: int | None) -> str:
    """`process 123 (dynsync sync)`: who holds a lock, for messages that say what to do."""
    if not pid:
        return "another process"
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"process {pid}"
    args = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
    names = [Path(a).name for a in args[:3]]
    return f"process {pid} ({' '.join(names)})" if names else f"process {pid}"


def _holder_of(path: Path) -> str:
    """What the lock file says about its holder (written when taken)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return "another process"
    pid, _, since = text.partition(" ")
    who = describe_process(int(pid)) if pid.isdigit() else "another process"
    return f"{who}, since {since}" if since else who


@contextlib.contextmanager
def _exclusive(lock: Path, wait_s: float, busy: str) -> Iterator[None]:
    """An advisory flock on `lock`, recording who holds it. The OS releases it when the process
    dies, so a killed holder never leaves it held. flock, not fcntl: an fcntl lock is dropped
    when the process closes *any* descriptor of the file, which the publish copy does."""
    lock.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreBusyError(busy.format(holder=_holder_of(lock))) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def cycle_lock(db_path: Path, wait_s: float) -> contextlib.AbstractContextManager[None]:
    """One sync cycle at a time per store, from its first look at the store to its stage's end.

    DuckDB's own file locks cover each open file, not a cycle: between the fetch and the
    commit, a second cycle could take over the first one's stage file.
    """
    path = Path(db_path)
    return _exclusive(
        path.with_name(path.name + ".lock"),
        wait_s,
        f"another sync cycle is running on {path} ({{holder}}); this one waited {wait_s:.0f}s. "
        "Let it finish (the next cycle catches up), or stop that process if it hangs.",
    )


def writer_lock(published: Path, wait_s: float) -> contextlib.AbstractContextManager[None]:
    """One writer of the working store at a time (a cycle's commit, a local edit), held until
    its publish is done, so that nothing changes the file while it is copied."""
    working = working_path(published)
    return _exclusive(
        working.with_name(working.name + ".lock"),
        wait_s,
        f"the store {published} is being written ({{holder}}); this waited {wait_s:.0f}s. "
        "A cycle's commit or a local edit takes seconds: retry, or stop that process if it hangs.",
    )


def literal(text: str) -> str:
    """A constant SQL string, for names the store itself chose (bound values everywhere else)."""
    return "'" + text.replace("'", "''") + "'"


def quote(identifier: str) -> str:
    """Quote an identifier for SQL. Names reaching here were validated against Dynamics metadata."""
    return '"' + identifier.replace('"', '""') + '"'


def connect(
    path: Path, *, read_only: bool = False, wait_s: float = 0.0
) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB file, creating it readable by its owner only; UTC for every timestamp."""
    path = Path(path)
    if not read_only:
        # A directory we create is ours alone: the WAL DuckDB writes beside the file is then
        # unreachable for other users from the moment it exists.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as exc:
            if not is_lock_conflict(exc):
                raise
            if time.monotonic() >= deadline:
                raise StoreBusyError(_busy_message(path, exc, wait_s)) from None
            time.sleep(0.2)
    if not read_only:
        owner_only(path)
    configure(con)
    return con


def _busy_message(path: Path, exc: BaseException, wait_s: float) -> str:
    found = re.search(r"\(PID (\d+)\)", str(exc))
    holder = describe_process(int(found.group(1)) if found else None)
    return (
        f"{path} is held by {holder}; waited {wait_s:.0f}s. Only dynsync's cycles and local "
        "edits open this working file (readers open the published file beside it): wait for "
        "that one to finish, or stop it if it hangs."
    )


def memory_limit() -> str:
    """DuckDB's memory budget per connection. DuckDB spills to disk beyond it, so a cycle's
    peak memory is bounded by this and the page size, not by the size of the org."""
    return os.environ.get("DYNSYNC_DUCKDB_MEMORY_LIMIT") or "256MB"


def configure(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{memory_limit()}'")
    # Row order of INSERT ... SELECT is irrelevant here; keeping it costs memory.
    con.execute("SET preserve_insertion_order = false")


def owner_only(path: Path) -> None:
    """Make a DuckDB file (and its WAL) readable and writable by its owner only."""
    for p in (path, path.with_name(path.name + ".wal")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(p, 0o600)


@contextlib.contextmanager
def private_files() -> Iterator[None]:
    """Files created meanwhile (the store, its WAL, the stage) are readable by the owner only.

    DuckDB creates the WAL at the first write, long after we could chmod it; the umask is the
    one way to have it private from the moment it exists. Process-wide, so held only for the
    span of a cycle or an edit.
    """
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


@contextlib.contextmanager
def open_store(
    path: Path, *, read_only: bool = False, wait_s: float = 0.0
) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(path, read_only=read_only, wait_s=wait_s)
    try:
        yield con
    finally:
        con.close()
        if not read_only:
            owner_only(path)


@contextlib.contextmanager
def open_working(published: Path, *, wait_s: float = 0.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """The working store of the store published at `published`, read-write. Writers go through
    publish.writing(), which holds writer_lock() around this and publishes afterwards.

    A store made before the published/working split (or whose working file was removed) is
    adopted: the published file is copied to the working path first, never moved, because a
    reader may hold it.
    """
    working = working_path(published)
    if not working.exists() and Path(published).exists():
        _adopt(Path(published), working)
    with open_store(working, wait_s=wait_s) as con:
        yield con


def _adopt(published: Path, working: Path) -> None:
    tmp = working.with_name(working.name + ".adopting")
    with open(tmp, "wb") as dst:
        os.fchmod(dst.fileno(), 0o600)
        copy_into(published, dst.fileno())
        os.fsync(dst.fileno())
    os.replace(tmp, working)


def copy_into(source: Path, fd: int) -> int:
    """Copy `source` into the open file `fd` inside the kernel (copy_file_range: no trip through
    Python's memory, and a reflink where the file system has them). Returns the bytes copied."""
    with open(source, "rb") as src:  # the open file pins the inode a rename may replace
        size = os.fstat(src.fileno()).st_size
        # Allocating every block up front is cheaper than one allocation per page written
        # (measured on ext4: 0.08 s against 0.10 s for 300 MB, and fewer slow outliers).
        with contextlib.suppress(OSError):
            os.posix_fallocate(fd, 0, size)
        copied = 0
        while copied < size:
            n = os.copy_file_range(src.fileno(), fd, size - copied, offset_dst=copied)
            if n == 0:
                break
            copied += n
    return copied


COMPARE_CHUNK = 4 << 20
COMPARE_BLOCK = 256 << 10  # DuckDB's block size: a cycle rewrites whole blocks


def refresh_into(source: Path, fd: int) -> tuple[int, int]:
    """Make the open file `fd` a byte-for-byte copy of `source`, writing only the blocks that
    differ. Cheap when `fd` holds an older copy: a cycle at 1,000,000 contacts rewrites
    ~25 MB of a ~330 MB file, and the rest is only read (from the page cache). Returns
    (bytes in the file, bytes written)."""
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(src).st_size
        new, old = bytearray(COMPARE_CHUNK), bytearray(COMPARE_CHUNK)
        written = offset = 0
        while offset < size:
            n = os.preadv(src, [new], offset)
            if n == 0:
                break
            m = os.preadv(fd, [old], offset)
            if n < COMPARE_CHUNK or m != n or new != old:  # bytearray == is one memcmp
                written += _write_changed_blocks(fd, new, old, n, m, offset)
            offset += n
        os.ftruncate(fd, size)
    finally:
        os.close(src)
    return size, written


def _write_changed_blocks(
    fd: int, new: bytearray, old: bytearray, n: int, m: int, offset: int
) -> int:
    written = 0
    for start in range(0, n, COMPARE_BLOCK):
        end = min(start + COMPARE_BLOCK, n)
        if m < end or new[start:end] != old[start:end]:
            os.pwrite(fd, memoryview(new)[start:end], offset + start)
            written += end - start
    return written


def insert_values(con: duckdb.DuckDBPyConnection, table: str, rows: list[tuple]) -> None:
    """Insert rows with one statement: executemany runs one statement per row (~0.3 ms each)."""
    if not rows:
        return
    one = "(" + ", ".join("?" * len(rows[0])) + ")"
    con.execute(
        f"INSERT INTO {table} VALUES {', '.join([one] * len(rows))}",
        [v for row in rows for v in row],
    )


def ensure_fixed_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(FIXED_TABLES)
    for table, base in BASE_COLUMNS.items():
        cols = ", ".join(f"{quote(c)} {t}" for c, t in base.items())
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} ({cols})")


def table_columns(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """Column -> type of a table in the store (pragma_table_info: information_schema scans the
    whole catalog and costs ~50 ms a call)."""
    rows = con.execute("SELECT name, type FROM pragma_table_info(?)", [table]).fetchall()
    return {name: dtype for name, dtype in rows}


def desired_field_columns(plan: FieldPlan) -> dict[str, dict[str, tuple[str, FieldSpec]]]:
    """Per table: field column -> (DuckDB type, the field it holds)."""
    accounts = {c: (t, f) for f in plan.synced("account") for c, t in f.columns()}
    contacts = {c: (t, f) for f in plan.synced("contact") for c, t in f.columns()}
    contacts.update({f"account_{c}": (t, f) for c, (t, f) in accounts.items()})
    return {"accounts": accounts, "contacts": contacts}


@dataclass
class SchemaChange:
    added: dict[str, list[str]]  # table -> columns added this cycle (filled without activity)
    dropped: dict[str, list[str]]

    def refill(self, entity: str) -> bool:
        """A field column was added to this entity's table: its records must all be re-read."""
        table = {"account": "accounts", "contact": "contacts"}[entity]
        cols = [c for c in self.added.get(table, []) if not c.startswith("account_")]
        return bool(cols)

    def new_account_fields(self) -> set[str]:
        return {
            c[len("account_") :] for c in self.added.get("contacts", []) if c.startswith("account_")
        }


def existing_columns(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, str]]:
    return {table: table_columns(con, table) for table in BASE_COLUMNS}


def plan_schema_change(existing: dict[str, dict[str, str]], plan: FieldPlan) -> SchemaChange:
    """What apply_schema_change will do, worked out before the fetch so that an entity that
    gains a field column is re-read in full (Marketo's "Quick Sync" fill)."""
    desired = desired_field_columns(plan)
    added: dict[str, list[str]] = {}
    dropped: dict[str, list[str]] = {}
    for table, base in BASE_COLUMNS.items():
        have = {c: t for c, t in existing[table].items() if c not in base}
        want = desired[table]
        for col, (dtype, _f) in want.items():
            if col not in have or not _same_type(have[col], dtype):
                added.setdefault(table, []).append(col)
        for col, dtype in have.items():
            if col not in want or not _same_type(dtype, want[col][0]):
                dropped.setdefault(table, []).append(col)
    return SchemaChange(added, dropped)


def apply_schema_change(
    con: duckdb.DuckDBPyConnection, plan: FieldPlan, change: SchemaChange
) -> None:
    desired = desired_field_columns(plan)
    for table, cols in change.dropped.items():
        for col in cols:
            con.execute(f"ALTER TABLE {table} DROP COLUMN {quote(col)}")
    for table, cols in change.added.items():
        for col in cols:
            # Propagated account values are rewritten in place by every cycle that changes an
            # account: DuckDB updates an uncompressed column without re-encoding its blocks.
            storage = " USING COMPRESSION uncompressed" if _propagated(table, col) else ""
            con.execute(
                f"ALTER TABLE {table} ADD COLUMN {quote(col)} {desired[table][col][0]}{storage}"
            )


def _propagated(table: str, col: str) -> bool:
    return table == "contacts" and col.startswith("account_")


def _same_type(have: str, want: str) -> bool:
    norm = {"TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE"}
    return norm.get(have.upper(), have.upper()) == norm.get(want.upper(), want.upper())


def rewrite_rows(
    con: duckdb.DuckDBPyConnection,
    table: str,
    key: str,
    replace: dict[str, str],
    source: str | None,
    where: str = "",
    params: dict | None = None,
    current: str | None = None,
) -> None:
    """UPDATE `table` rows matching `source` (aliased v) on `key`, as a delete and an append.

    A DuckDB UPDATE of text columns rewrites every 2,048-row block it touches, and an
    account's contacts are scattered over the whole table: updating 5,000 of them cost 40x
    more than deleting them and appending the new versions. `replace` maps a column to its
    new value (an expression over t, the old row, and v); `where` filters the joined rows.
    `current` names a copy of the rows as they are now, when the caller already made one.
    Without `source`, `where` alone picks the rows (one scan instead of a join).
    """
    new_values = ", ".join(f"{expr} AS {quote(col)}" for col, expr in replace.items())
    join = f"JOIN {source} v ON t.{key} = v.{key}" if source else ""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _rewritten AS SELECT t.* REPLACE ({new_values}) "
        f"FROM {current or table} t {join} {where}",
        params or {},
    )
    con.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM _rewritten)")
    con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _rewritten")
    con.execute("DROP TABLE _rewritten")
