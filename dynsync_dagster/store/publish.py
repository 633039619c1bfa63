"""The file readers open: a consistent copy of the working store, swapped in by an atomic rename.

DuckDB locks a database file for its whole life in a process: one read-write holder (DuckDB's
default `duckdb.connect(path)`) shuts everyone else out, and a read-only holder shuts out every
writer. So the file at DYNSYNC_DUCKDB_PATH (the *published* file, what the README tells
analysts to open) is never the file a cycle writes. Cycles and local edits write the *working*
store beside it (`<published>.work`), and after their commit copy it to another file and
rename that over the published path. The other file is the *spare* (the file published
before the current one) rewritten block by block when nobody has it open, else a new file. A reader that holds the old file keeps its inode
(and its view) until it reconnects; a new connection gets the new file; nobody waits for
anybody. The measured costs are in README.md ("Query the data") and benchmarks/RESULTS.md.

The working store carries a generation number (`store_version`) that every transaction
changing the data bumps; `<published>.published` records the generation the published file
holds. A cycle that changed nothing does not copy, unless the published file is behind (a
crash between the commit and the rename, or the file was removed): then any cycle publishes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from glob import escape as glob_escape
from pathlib import Path

import duckdb

from dynsync_dagster.store.connection import (
    StoreNotReadyError,
    configure,
    is_lock_conflict,
    open_working,
    working_path,
    writer_lock,
)
from dynsync_dagster.store.files import copy_into, refresh_into
from dynsync_dagster.store.postgres import PostgresPublished, publish_after_commit

log = logging.getLogger("dynsync.publish")

STORE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS store_version (
    generation BIGINT NOT NULL,
    changed_at TIMESTAMPTZ,
    run_id VARCHAR
)
"""


class PublishError(RuntimeError):
    """The working store committed, but its copy could not be published for readers."""

    def __init__(self, published: Path, cause: OSError):
        super().__init__(
            f"the changes are committed, but publishing them to {published} failed "
            f"({cause.strerror or cause}); readers still see the previous state. Free disk "
            "space or fix the folder's permissions: the next cycle publishes again."
        )


@dataclass(frozen=True)
class Published:
    """One publish: which generation the published file now holds, and what it cost."""

    generation: int
    run_id: str | None
    published_at: str
    bytes: int
    copy_s: float  # the kernel copy of the working file
    total_s: float
    # The last cycle that found the published file current (it published, or changed nothing):
    # what the freshness check goes by, since a cycle that changed nothing does not republish.
    confirmed_at: str | None = None
    confirmed_run_id: str | None = None
    # Where the rest of total_s went: making the copy durable, and swapping it in (the rename
    # also frees the replaced file's blocks when no reader holds it).
    sync_s: float = 0.0
    swap_s: float = 0.0
    # Whether the spare was rewritten in place (only changed blocks written) or a new file made.
    reused_spare: bool = False
    written_bytes: int = 0


def record_path(published: Path) -> Path:
    return published.with_name(published.name + ".published")


def _temp_prefix(published: Path) -> str:
    return f".{published.name}.publish-"


def _spare_path(published: Path) -> Path:
    return published.with_name(f".{published.name}.spare")


def store_files(published: Path) -> list[Path]:
    """Every file that makes up the store at `published`: the file readers open, the working
    store, the stage, their WALs and locks, and the spare. Moving all of them aside resets it."""
    published = Path(published)
    found = sorted(published.parent.glob(glob_escape(published.name) + "*"))
    return [*found, *(p for p in [_spare_path(published)] if p.exists())]


def _retiring_path(published: Path) -> Path:
    return published.with_name(f".{published.name}.retiring")


def bump_generation(con: duckdb.DuckDBPyConnection, run_id: str | None, now: datetime) -> int:
    """Mark the working store changed, inside the caller's transaction; returns the new number."""
    con.execute(STORE_VERSION_TABLE)
    con.execute(
        "INSERT INTO store_version SELECT coalesce(max(generation), 0) + 1, ?, ? FROM store_version",
        [now, run_id],
    )
    con.execute(
        "DELETE FROM store_version WHERE generation < (SELECT max(generation) FROM store_version)"
    )
    return current_generation(con)


def current_generation(con: duckdb.DuckDBPyConnection) -> int:
    con.execute(STORE_VERSION_TABLE)
    return int(con.execute("SELECT coalesce(max(generation), 0) FROM store_version").fetchone()[0])


def read_record(published: Path) -> Published | None:
    """What the last publish recorded, or None when the published file is missing or unknown."""
    if not Path(published).exists():
        return None
    try:
        return Published(**json.loads(record_path(published).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def confirmed_at(published: Path) -> datetime | None:
    """When a cycle last found the published file current."""
    record = read_record(published)
    if record is None or record.confirmed_at is None:
        return None
    return datetime.fromisoformat(record.confirmed_at)


@dataclass
class Writing:
    """A write session on the working store: the connection, and afterwards what was published."""

    con: duckdb.DuckDBPyConnection
    published: Published | None = None
    publish_s: float = 0.0
    # The PostgreSQL copy (store/postgres.py), when DYNSYNC_POSTGRES_URL is set.
    postgres: PostgresPublished | None = None
    postgres_error: str | None = None


@contextlib.contextmanager
def writing(
    published: Path, *, wait_s: float, run_id: str | None = None, publish: bool = True
) -> Iterator[Writing]:
    """Write the working store of `published`, then publish it for readers if it changed.

    The writer lock is held from the open to the end of the publish, so nothing changes the
    working file while it is copied. The copy is made after the connection is closed: DuckDB
    has then checkpointed every commit into the file, and holds no lock we could disturb.
    A body that raises publishes nothing (its transaction rolled back).
    """
    published = Path(published)
    with writer_lock(published, wait_s):
        with open_working(published, wait_s=wait_s) as con:
            session = Writing(con)
            yield session
            generation = current_generation(con)
            if publish:  # a PostgreSQL failure is reported, never undoes the commit
                session.postgres, session.postgres_error = publish_after_commit(
                    con, published.parent, run_id
                )
                if session.postgres_error:
                    log.warning(session.postgres_error)
        if publish:
            t0 = time.perf_counter()
            try:
                session.published = publish_if_behind(published, generation, run_id)
            except OSError as exc:
                raise PublishError(published, exc) from exc
            session.publish_s = time.perf_counter() - t0


def publish_if_behind(published: Path, generation: int, run_id: str | None) -> Published | None:
    """Publish the (closed) working store unless the published file already holds
    `generation`; then only note that this run found it current."""
    record = read_record(published)
    if record is not None and record.generation == generation:
        now = datetime.now(UTC).isoformat()
        _write_record(published, replace(record, confirmed_at=now, confirmed_run_id=run_id))
        return None
    return publish(published, generation, run_id)


def publish(published: Path, generation: int, run_id: str | None) -> Published:
    t0 = time.perf_counter()
    working = working_path(published)
    if working.with_name(working.name + ".wal").exists():
        raise OSError(f"{working} still has a WAL after its connection closed")
    _remove_leftovers(published)
    target, fd, reused = _open_target(published)
    try:
        t1 = time.perf_counter()
        size, written = fill(working, fd, reused)
        t2 = time.perf_counter()
        os.fsync(fd)  # the rename must never expose a file whose bytes are not on disk
        t3 = time.perf_counter()
        _same_access_as(published, fd)
    finally:
        os.close(fd)
    _swap_in(target, published)
    t4 = time.perf_counter()
    now = datetime.now(UTC).isoformat()
    done = Published(
        generation=generation,
        run_id=run_id,
        published_at=now,
        bytes=size,
        copy_s=round(t2 - t1, 4),
        total_s=round(t4 - t0, 4),
        confirmed_at=now,
        confirmed_run_id=run_id,
        sync_s=round(t3 - t2, 4),
        swap_s=round(t4 - t3, 4),
        reused_spare=reused,
        written_bytes=written,
    )
    _write_record(published, done)
    log.info("published generation %d to %s in %.2fs", generation, published, done.total_s)
    return done


def fill(working: Path, fd: int, reused: bool) -> tuple[int, int]:
    """Copy the working store into the publish target: block by block over a reused spare (it
    holds an older copy), whole into a new file. Returns (bytes in the file, bytes written)."""
    if reused:
        return refresh_into(working, fd)
    size = copy_into(working, fd)
    return size, size


def _open_target(published: Path) -> tuple[Path, int, bool]:
    """The file the next published state is written into: the spare (the file published
    before the current one) when nobody has it open, else a new temporary file."""
    spare = _spare_path(published)
    fd = _open_unused(spare)
    if fd is not None:
        return spare, fd, True
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(published), dir=published.parent)
    return Path(name), fd, False


def _open_unused(spare: Path) -> int | None:
    """Open the spare for rewriting, but only if no process has it open. A reader that opened
    the published path before it was replaced still reads this inode: rewriting it would
    change the data under that reader. Such a spare is dropped instead (its blocks are freed
    when the reader closes it)."""
    try:
        fd = os.open(spare, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    # A second name (the published path itself after a crash, or a user's hard link) is a
    # way to open it that the lease cannot foresee.
    if os.fstat(fd).st_nlink == 1 and _nobody_else_has_open(fd):
        return fd
    os.close(fd)
    spare.unlink(missing_ok=True)
    return None


def _nobody_else_has_open(fd: int) -> bool:
    """Linux grants a write lease only while no other open file description refers to the
    file, in any process, whatever its locks: exactly "is anybody reading this?". The
    lease is released at once; nobody opens the spare by name. Where leases are not
    available (another OS, a network file system, leases disabled) the answer is no."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)  # a lease break must not kill us
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    except (OSError, AttributeError):
        return False
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return True


def _swap_in(target: Path, published: Path) -> None:
    """Rename the new file over the published path, and keep the replaced file as the next
    spare (a second name taken before the rename, so the rename frees nothing). At rest
    this leaves two published copies: the current one and the spare."""
    retiring = _retiring_path(published)
    try:
        os.link(published, retiring)
        keep = True
    except FileNotFoundError:
        keep = False  # the first publish
    # A WAL left beside the old file by a reader that wrote to it would not match the new
    # file, and DuckDB would then refuse to open it ("WAL does not match database file").
    with contextlib.suppress(FileNotFoundError):
        os.unlink(published.with_name(published.name + ".wal"))
    os.replace(target, published)
    if keep:
        os.replace(retiring, _spare_path(published))
    _fsync_dir(published.parent)


def _same_access_as(published: Path, fd: int) -> None:
    """The new file keeps the mode and group an admin gave the published file (say, 0640 to an
    analysts' group); a first publish is private to its owner, like the working store."""
    try:
        old = published.stat()
    except FileNotFoundError:
        os.fchmod(fd, 0o600)
        return
    os.fchmod(fd, old.st_mode & 0o777)
    with contextlib.suppress(PermissionError):
        os.fchown(fd, -1, old.st_gid)


def _remove_leftovers(published: Path) -> None:
    """Files a killed publish left behind. Only the holder of the writer lock publishes, so
    no other publish can be running now. (A half-rewritten spare is no leftover: the next
    rewrite compares every block.)"""
    leftovers = [*published.parent.glob(_temp_prefix(published) + "*"), _retiring_path(published)]
    for leftover in leftovers:
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()


def _write_record(published: Path, done: Published) -> None:
    record = record_path(published)
    tmp = record.with_name(record.name + ".tmp")
    tmp.write_text(json.dumps(asdict(done)))
    os.chmod(tmp, 0o600)
    os.replace(tmp, record)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def open_published(published: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    """A read-only connection to the published file, for dynsync's own readers (asset checks,
    the CLI's summaries, lineage). Never the working store, so they never make a cycle wait.

    When somebody holds the published file read-write, DuckDB refuses every other connection
    to it: then this reads a private copy of the same file, taken without any lock.
    """
    published = Path(published)
    if not published.exists():
        raise StoreNotReadyError(
            f"{published} does not exist yet: run `dynsync sync` (or the Dagster job) first"
        )
    snapshot: Path | None = None
    try:
        con = duckdb.connect(str(published), read_only=True)
    except duckdb.IOException as exc:
        if not is_lock_conflict(exc):
            raise
        snapshot = _snapshot(published)
        con = duckdb.connect(str(snapshot), read_only=True)
    try:
        configure(con)
        yield con
    finally:
        con.close()
        if snapshot is not None:
            snapshot.unlink(missing_ok=True)


def _snapshot(published: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{published.name}.snapshot-", dir=published.parent)
    try:
        os.fchmod(fd, 0o600)
        copy_into(published, fd)
    finally:
        os.close(fd)
    return Path(name)
