"""Opening the store: its paths, its locks (and who holds them), DuckDB connections."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb

from dynsync_dagster.store.files import background_writeback, copy_into


class StoreBusyError(RuntimeError):
    """Another dynsync process is writing the store (a cycle or a local edit). Retry later."""


class StoreNotReadyError(RuntimeError):
    """No cycle has published the store yet."""


def working_path(published: Path) -> Path:
    """The file cycles and local edits write; readers open `published` (publish.py)."""
    published = Path(published)
    return published.with_name(published.name + ".work")


def not_yet_synced(published: Path) -> str | None:
    """Why a command that needs the store cannot run yet, or None when a cycle has made it
    (the published file, or the working store a cycle is about to publish)."""
    published = Path(published)
    if published.exists() or working_path(published).exists():
        return None
    return f"{published} does not exist yet: run `dynsync sync` first"


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
    peak memory is bounded by this and the page size, not by the size of the org.

    160MB: the budget fills during a full read (the stage's blocks) and its merge, and the
    `dynsync sync` process around it holds Dagster too. A first sync of 1M contacts peaked at
    516 MB for the whole process with 256MB and 386 MB with 128MB; at 128MB the contacts'
    insert of a first sync spills ~110 MB to DuckDB's temp files, and 160MB saves ~0.3 s of
    it: 8.85 s -> 8.55 s for the cycle, 385 MB -> 416 MB for the whole process
    (benchmarks/RESULTS.md)."""
    return os.environ.get("DYNSYNC_DUCKDB_MEMORY_LIMIT") or "160MB"


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
    with open_store(working, wait_s=wait_s) as con, background_writeback(working):
        yield con


def _adopt(published: Path, working: Path) -> None:
    tmp = working.with_name(working.name + ".adopting")
    with open(tmp, "wb") as dst:
        os.fchmod(dst.fileno(), 0o600)
        copy_into(published, dst.fileno())
        os.fsync(dst.fileno())
    os.replace(tmp, working)
