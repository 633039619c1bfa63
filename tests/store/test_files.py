"""Rewriting a publish target block by block (store/files.py), at every worker count."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from pathlib import Path

import pytest

from dynsync_dagster.store import files

CHUNK, BLOCK = 64 << 10, 16 << 10


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # Many chunks and blocks from a file of a few hundred kB.
    monkeypatch.setattr(files, "COMPARE_CHUNK", CHUNK)
    monkeypatch.setattr(files, "COMPARE_BLOCK", BLOCK)


def _refresh(source: Path, target: Path) -> tuple[int, int]:
    fd = os.open(target, os.O_RDWR)
    try:
        return files.refresh_into(source, fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("old_size", [0, 5 * CHUNK + 123, 9 * CHUNK, 12 * CHUNK + 7])
def test_the_target_becomes_the_source_and_only_changed_blocks_are_written(
    tmp_path: Path,
    small_chunks: None,
    monkeypatch: pytest.MonkeyPatch,
    workers: int,
    old_size: int,
) -> None:
    monkeypatch.setattr(files, "compare_workers", lambda: workers)
    rng = random.Random(old_size * 10 + workers)
    new = bytearray(rng.randbytes(9 * CHUNK + 4321))
    old = bytearray(new[:old_size]) + bytearray(rng.randbytes(max(0, old_size - len(new))))
    # Change one byte in a few blocks the old copy has, in different chunks.
    changed = sorted(
        rng.sample(range(min(len(old), len(new)) // BLOCK), k=min(4, len(old) // BLOCK))
    )
    for b in changed:
        old[b * BLOCK + rng.randrange(BLOCK)] ^= 0xFF
    source, target = tmp_path / "source", tmp_path / "target"
    source.write_bytes(new)
    target.write_bytes(old)

    size, written = _refresh(source, target)

    assert target.read_bytes() == bytes(new)
    assert size == len(new)
    # Written: the changed blocks, and whatever the old copy lacked (whole blocks past its end).
    missing = max(0, len(new) - len(old))
    assert written >= len(changed) * BLOCK + missing
    assert written <= len(changed) * BLOCK + missing + 2 * BLOCK


def test_an_identical_copy_writes_nothing(tmp_path: Path, small_chunks: None) -> None:
    data = random.Random(1).randbytes(7 * CHUNK + 99)
    source, target = tmp_path / "source", tmp_path / "target"
    source.write_bytes(data)
    target.write_bytes(data)
    assert _refresh(source, target) == (len(data), 0)
    assert target.read_bytes() == data


@pytest.mark.parametrize(
    ("cores", "load", "workers"),
    [(2, 0.0, 2), (2, 1.5, 2), (2, 2.0, 1), (2, 6.0, 1), (1, 0.0, 1), (8, 0.2, 4), (8, 6.0, 3)],
)
def test_a_second_thread_compares_only_where_a_core_is_free(
    monkeypatch: pytest.MonkeyPatch, cores: int, load: float, workers: int
) -> None:
    # The load counts this process: on 2 cores at a load of 1.5, one core is still free.
    monkeypatch.setattr(files.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(files.os, "getloadavg", lambda: (load, load, load))
    assert files.compare_workers() == workers


def test_background_writeback_starts_writes_while_open_and_stops_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(files, "_sync_file_range", lambda: calls.append)
    path = tmp_path / "store.duckdb"
    path.write_bytes(b"x" * 4096)
    with files.background_writeback(path, every_s=0.01):
        deadline = time.monotonic() + 5
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
    assert calls, "no writeback was started"
    after = len(calls)
    time.sleep(0.05)
    assert len(calls) == after  # the thread ended with the block
    assert not [t for t in threading.enumerate() if t.name == "dynsync-writeback"]


def test_background_writeback_is_a_no_op_without_the_file_or_the_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with files.background_writeback(tmp_path / "missing"):
        pass
    monkeypatch.setattr(files, "_sync_file_range", lambda: None)
    path = tmp_path / "store.duckdb"
    path.write_bytes(b"x")
    with files.background_writeback(path):
        pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sync_file_range is Linux's")
def test_sync_file_range_is_found_and_accepts_a_read_only_descriptor(tmp_path: Path) -> None:
    start = files._sync_file_range()
    assert start is not None
    path = tmp_path / "store.duckdb"
    path.write_bytes(b"x" * 4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert start(fd) == 0
    finally:
        os.close(fd)


def test_copy_into_copies_in_chunks_each_handed_to_the_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[tuple[int, int]] = []
    monkeypatch.setattr(files, "COPY_CHUNK_WRITTEN", CHUNK)
    monkeypatch.setattr(
        files,
        "_sync_file_range",
        lambda: lambda fd, offset, length: started.append((offset, length)),
    )
    source, target = tmp_path / "source", tmp_path / "target"
    source.write_bytes(random.Random(3).randbytes(5 * CHUNK + 123))
    fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert files.copy_into(source, fd) == 5 * CHUNK + 123
    finally:
        os.close(fd)
    assert target.read_bytes() == source.read_bytes()
    assert started == [(i * CHUNK, CHUNK) for i in range(5)] + [(5 * CHUNK, 123)]
