"""Readers never stop the sync: the published file against real reader processes.

Analysts' tools hold DYNSYNC_DUCKDB_PATH open for hours, read-only or with DuckDB's default
read-write connection, or reconnect for every query. Cycles and local edits, started from the
CLI and through Dagster, must neither wait for them nor fail, and a reader must only ever see
whole committed states (publish.py).
"""

from __future__ import annotations

import contextlib
import filecmp
import hashlib
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from dynsync_dagster.simulator import Simulator
from dynsync_dagster.store.connection import StoreBusyError, open_store, working_path
from dynsync_dagster.store.publish import open_published, read_record
from tests.support import (
    REPO,
    Zygote,
    bound_now,
    canonical,
    clean_env,
    crash_job,
    cycle,
    pick_sized,
    run_cli,
    sync_settings,
)

FIELDS = ("name", "address1_city", "numberofemployees")


def _reader(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store.readers", *args],
        cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def _ask(holder: subprocess.Popen[str]) -> dict:
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.write("query\n")
    holder.stdin.flush()
    return json.loads(holder.stdout.readline())


def _generation(path: Path) -> int:
    with open_store(path, read_only=True) as con:
        return int(con.execute("SELECT max(generation) FROM store_version").fetchone()[0])


def _rename_some(sim: Simulator, tag: str) -> None:
    org = sim.org
    for account in (pick_sized(sim, 9), pick_sized(sim, 7), org.account_ids()[0]):
        org.update_account(account, name=f"{tag} {account[:8]}")


@pytest.fixture
def cli_env(tiny: Simulator, tmp_path: Path, store: Path) -> dict[str, str]:
    config = tmp_path / "dynsync.yaml"
    config.write_text(f"account_fields: {list(FIELDS)}\ncontact_fields: [firstname]\n")
    return (
        clean_env(tmp_path)
        | tiny.env()
        | {
            "DYNSYNC_DUCKDB_PATH": str(store),
            "DYNSYNC_CONFIG": str(config),
            "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        }
    )


@pytest.mark.parametrize("mode", ["read_only", "read_write"])
def test_a_reader_holding_the_file_never_stops_cycles_or_edits(
    mode: str,
    tiny: Simulator,
    store: Path,
    tmp_path: Path,
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    definitions: dg.Definitions,
) -> None:
    (tmp_path / "dagster_home").mkdir()
    first = run_cli(["sync"], cli_env, tmp_path)
    assert first.returncode == 0, first.stderr
    holder = _reader("hold", str(store), mode)
    assert holder.stdout is not None and json.loads(holder.stdout.readline()) == {"ready": True}
    try:
        held = _ask(holder)
        assert held["ok"], held
        contact = tiny.org.contacts_of(pick_sized(tiny, 7))[0]

        _rename_some(tiny, "CLI")
        for args in (["sync"], ["set-account-field", "--contact-id", contact,
                                "--field", "address1_city", "--value", "Held open"]):  # fmt: skip
            done = run_cli(args, cli_env, tmp_path)
            assert done.returncode == 0, done.stderr
            assert _ask(holder) == held  # the holder keeps its own view, and keeps working

        # The same through Dagster: a sync run (its asset checks included) and the edit job.
        for key, value in cli_env.items():
            monkeypatch.setenv(key, value)
        _rename_some(tiny, "Dagster")
        with dg.instance_for_test() as instance:
            located = bound_now(definitions)  # bound to the variables just set
            sync_run = located.resolve_job_def("dynamics_sync_job").execute_in_process(
                instance=instance, partition_key=datetime.now(UTC).strftime("%Y-%m-%d")
            )
            checks = sync_run.get_asset_check_evaluations()
            assert checks and all(c.passed for c in checks), [c.description for c in checks]
            edit = located.resolve_job_def("local_edit_job").execute_in_process(
                instance=instance,
                run_config={"contact_id": contact, "field": "numberofemployees", "value": "77"},
            )
        assert edit.success
        assert _ask(holder) == held

        # A new connection sees the last commit at once; the holder sees it after reconnecting.
        assert _generation(store) == _generation(working_path(store)) > held["generation"]
        with open_published(store) as con:
            assert con.execute(
                "SELECT DISTINCT account_numberofemployees FROM contacts WHERE contactid = ?",
                [contact],
            ).fetchall() == [(77,)]
    finally:
        assert holder.stdin is not None
        holder.stdin.write("exit\n")
        holder.stdin.close()
        holder.wait(timeout=30)
    assert holder.returncode == 0


def test_readers_reconnecting_during_cycles_see_only_whole_states(
    tiny: Simulator, store: Path, tmp_path: Path
) -> None:
    settings = sync_settings(FIELDS, ("firstname",))
    cycle(tiny, store, settings)
    stop = tmp_path / "stop"
    readers = [_reader("flicker", str(store), str(stop)) for _ in range(2)]
    try:
        for n in range(4):
            _rename_some(tiny, f"Round {n}")
            result = cycle(tiny, store, settings)
            assert result.published is not None
            # Published before the cycle returned: a new connection sees it now.
            assert _generation(store) == _generation(working_path(store))
    finally:
        stop.touch()
    summaries = [json.loads(r.communicate(timeout=60)[0]) for r in readers]
    for summary in summaries:
        assert summary["error_count"] == 0, summary["errors"]
        assert summary["mismatched_contacts"] == 0
        assert set(summary["signatures"].values()) == {1}, summary  # one state per generation
        assert summary["samples"] > 20
    seen = set().union(*(s["signatures"] for s in summaries))
    assert len(seen) >= 3, f"the readers met too few cycles to prove anything: {summaries}"
    # Disk stays bounded: the working store, the published copy and its spare, no leftovers.
    big = sorted(p.name for p in store.parent.iterdir() if p.stat().st_size > 100_000)
    assert big == [f".{store.name}.spare", store.name, working_path(store).name], big


def test_a_kill_while_publishing_leaves_the_old_state_and_the_next_cycle_publishes(
    tiny: Simulator, store: Path, control: Path, tmp_path: Path
) -> None:
    settings = sync_settings(FIELDS, ("firstname",))
    cycle(tiny, store, settings)
    cycle(tiny, control, settings)
    before = canonical(store)
    _rename_some(tiny, "Killed")
    with Zygote(tmp_path) as zygote:
        outcome = zygote.run(crash_job(tiny, store, settings), "PUBLISH", 0.05)
    assert outcome.killed, outcome.markers
    assert canonical(store, wait_s=0) == before  # whole, and the state before the cycle
    leftovers = list(store.parent.glob(f".{store.name}.publish-*"))
    assert leftovers, "the kill landed after the rename: the test proves nothing"

    result = cycle(tiny, store, settings)  # nothing new in Dynamics, but the file is behind
    assert result.counts.accounts_upserted == 0 and result.published is not None
    cycle(tiny, control, settings)
    assert canonical(store) == canonical(control)
    assert not list(store.parent.glob(f".{store.name}.publish-*"))
    assert read_record(store).generation == _generation(working_path(store))


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _held_file(pid: int, inode: int) -> Path:
    """The file a reader process holds, by inode, through /proc (it may have no name left)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            if fd.stat().st_ino == inode:
                return fd
    raise AssertionError(f"process {pid} no longer holds inode {inode}")


def test_a_replaced_file_is_rewritten_only_when_nobody_has_it_open(
    tiny: Simulator, store: Path
) -> None:
    """Publishing rewrites the spare (the file published before the current one) block by
    block, but never while a reader still has it open: that reader's bytes must not move."""
    settings = sync_settings(FIELDS, ("firstname",))
    cycle(tiny, store, settings)
    _rename_some(tiny, "Second")
    cycle(tiny, store, settings)
    holder = _reader("hold", str(store), "read_only")
    try:
        assert holder.stdout is not None and json.loads(holder.stdout.readline())["ready"]
        held, inode, digest = _ask(holder), store.stat().st_ino, _sha(store)
        reused = []
        for tag in ("Third", "Fourth", "Fifth"):
            _rename_some(tiny, tag)
            cycle(tiny, store, settings)
            assert filecmp.cmp(store, working_path(store), shallow=False)  # byte for byte
            record = read_record(store)
            reused.append(record.reused_spare)
            if record.reused_spare:
                assert 0 < record.written_bytes < record.bytes, record
        # Third rewrites the free spare; Fourth finds the spare held and makes a new file;
        # Fifth rewrites the file Third published, free again.
        assert reused == [True, False, True]
        assert _sha(_held_file(holder.pid, inode)) == digest
        assert _ask(holder) == held
    finally:
        holder.kill()
        holder.wait()


def test_a_kill_while_rewriting_the_spare_leaves_the_old_state(
    tiny: Simulator, store: Path, control: Path, tmp_path: Path
) -> None:
    settings = sync_settings(FIELDS, ("firstname",))
    for tag in ("First", "Second"):
        _rename_some(tiny, tag)
        cycle(tiny, store, settings)
        cycle(tiny, control, settings)
    before = canonical(store)
    _rename_some(tiny, "Killed")
    with Zygote(tmp_path) as zygote:
        outcome = zygote.run(crash_job(tiny, store, settings), "PUBLISH", 0.05)
    assert outcome.killed, outcome.markers
    assert canonical(store, wait_s=0) == before
    assert not list(store.parent.glob(f".{store.name}.publish-*")), "no spare was rewritten"

    result = cycle(tiny, store, settings)
    assert result.published is not None and result.published.reused_spare
    cycle(tiny, control, settings)
    assert canonical(store) == canonical(control)
    assert filecmp.cmp(store, working_path(store), shallow=False)


def test_a_writer_that_has_to_wait_is_told_who_holds_the_store(
    tiny: Simulator, store: Path
) -> None:
    cycle(tiny, store, sync_settings(FIELDS, ("firstname",)))
    holder = _reader("hold", str(working_path(store)), "read_write")  # a stray open, say
    try:
        assert holder.stdout is not None and json.loads(holder.stdout.readline())["ready"]
        from dynsync_dagster.sync.local_edit import set_account_field

        contact = tiny.org.contacts_of(pick_sized(tiny, 7))[0]
        with pytest.raises(StoreBusyError) as err:
            set_account_field(store, contact, "address1_city", "x", wait_s=0.5)
        assert f"process {holder.pid} (" in str(err.value)
        assert "readers open the published file" in str(err.value)
    finally:
        holder.kill()
        holder.wait()


def test_a_store_made_before_the_split_is_adopted(tiny: Simulator, store: Path) -> None:
    """Stores from before publishing had only the file at DYNSYNC_DUCKDB_PATH: the first cycle
    copies it to the working path and goes on incrementally, losing nothing."""
    settings = sync_settings(FIELDS, ("firstname",))
    cycle(tiny, store, settings)
    os.unlink(working_path(store))
    before = canonical(store)
    result = cycle(tiny, store, settings)
    assert result.modes == {"account": "delta", "contact": "delta"}
    assert canonical(store) == before and working_path(store).exists()
