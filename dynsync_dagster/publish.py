"""The file readers open: a consistent copy of the working store, swapped in by an atomic rename.

DuckDB locks a database file for its whole life in a process: one read-write holder (DuckDB's
default `duckdb.connect(path)`) shuts everyone else out, and a read-only holder shuts out every
writer. So the file at DYNSYNC_DUCKDB_PATH (the *published* file, what the README tells
analysts to open) is never the file a cycle writes. Cycles and local edits write the *working*
store beside it (`<published>.work`), and after their commit copy it to a temporary name and
rename the copy over the published path. A reader that holds the old file keeps its inode
(and its view) until it reconnects; a new connection gets the new file; nobody waits for
anybody. The measured costs are in README.md ("Query the data") and benchmarks/RESULTS.md.

The working store carries a generation number (`store_version`) that every transaction
changing the data bumps; `<published>.published` records the generation the published file
holds. A cycle that changed nothing does not copy, unless the published file is behind (a
crash between the commit and the rename, or the file was removed): then any cycle publishes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from .store import (
    StoreNotReadyError,
    configure,
    copy_into,
    is_lock_conflict,
    open_working,
    working_path,
    writer_lock,
)

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
    copy_s: float
    total_s: float
    # The last cycle that found the published file current (it published, or changed nothing):
    # what the freshness check goes by, since a cycle that changed nothing does not republish.
    confirmed_at: str | None = None
    confirmed_run_id: str | None = None


def record_path(published: Path) -> Path:
    return published.with_name(published.name + ".published")


def _temp_prefix(published: Path) -> str:
    return f".{published.name}.publish-"


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
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(published), dir=published.parent)
    tmp = Path(tmp_name)
    try:
        t1 = time.perf_counter()
        size = copy_into(working, fd)
        os.fsync(fd)  # the rename must never expose a file whose bytes are not on disk
        copy_s = time.perf_counter() - t1
        _same_access_as(published, fd)
    finally:
        os.close(fd)
    # A WAL left beside the old file by a reader that wrote to it would not match the new
    # file, and DuckDB would then refuse to open it ("WAL does not match database file").
    with contextlib.suppress(FileNotFoundError):
        os.unlink(published.with_name(published.name + ".wal"))
    os.replace(tmp, published)
    _fsync_dir(published.parent)
    now = datetime.now(UTC).isoformat()
    done = Published(
        generation=generation,
        run_id=run_id,
        published_at=now,
        bytes=size,
        copy_s=round(copy_s, 4),
        total_s=round(time.perf_counter() - t0, 4),
        confirmed_at=now,
        confirmed_run_id=run_id,
    )
    _write_record(published, done)
    log.info("published generation %d to %s in %.2fs", generation, published, done.total_s)
    return done


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
    """Copies a killed publish left behind. Only the holder of the writer lock publishes, so
    no other publish can be running now."""
    for leftover in published.parent.glob(_temp_prefix(published) + "*"):
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
