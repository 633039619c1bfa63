"""Concurrency: one store, several writers and readers at once.

A scheduled run, a backfill and `dynsync sync` started together: one works, the others wait
for the store (its connect waits) or fail with a clear "busy" message; never a lock traceback,
never a lost or doubled update. A reader opening the store while a cycle writes gets the old
state, the new state, or StoreBusyError, and nothing else.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from dynsync_dagster.simulator import Simulator
from dynsync_dagster.store.connection import StoreBusyError, cycle_lock, open_store
from dynsync_dagster.sync.local_edit import set_account_field
from tests.support import (
    REPO,
    TINY,
    Zygote,
    activity_rows,
    canonical,
    clean_env,
    crash_job,
    cycle,
    data_rows,
    pick_sized,
    sync_settings,
)

BUSY = re.compile(r"in use|busy|retry in a moment", re.IGNORECASE)
# A lock crash, whatever the wrapping: DuckDB's own errors reaching the user.
LOCK_CRASH = re.compile(
    r"IOException|Could not set lock|TransactionException|Conflict|UNCAUGHT|Catalog Error|"
    r"database file",
    re.IGNORECASE,
)
FIELDS = ("name", "industrycode", "revenue", "numberofemployees", "address1_city")


def _changes(sim: Simulator) -> None:
    org = sim.org
    big, other = pick_sized(sim, 9), pick_sized(sim, 7)
    org.update_account(big, name="Concurrent Ltd", numberofemployees=77)
    org.update_account(other, address1_city="Rotterdam")
    org.reparent_contact(org.contacts_of(other)[0], big, "account")
    org.create_contact(big, "account", firstname="New", lastname="Person")
    org.delete_contact(org.contacts_of(other)[-1])


def test_schedule_backfill_and_cli_started_together(tmp_path: Path) -> None:
    store, control = tmp_path / "store.duckdb", tmp_path / "control.duckdb"
    config = tmp_path / "dynsync.yaml"
    config.write_text(f"account_fields: [{', '.join(FIELDS)}]\ncontact_fields: [firstname]\n")
    settings = sync_settings(FIELDS, ("firstname",))
    # Pages of 2 make each cycle's fetch long enough for the three to overlap.
    with Simulator(TINY, state_dir=tmp_path / "sim", max_page_size=2) as sim:
        cycle(sim, store, settings)
        cycle(sim, control, settings)
        _changes(sim)
        env = clean_env(tmp_path) | sim.env()
        env |= {"DYNSYNC_CONFIG": str(config), "DYNSYNC_DUCKDB_PATH": str(store)}
        go = tmp_path / "go"
        procs = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.reliability.contender", mode, str(go)],
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for mode in ("schedule", "backfill", "cli")
        ]
        time.sleep(0.5)
        go.touch()  # each contender starts its cycle as soon as its imports are done
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]) | {"stderr": err})
        for r in results:
            # (The CLI also prints Dagster's stack trace on any failure: see test_bad_settings.)
            text = r["error"] + r["stderr"]
            assert not LOCK_CRASH.search(text), f"{r['mode']}: {text[-3000:]}"
            assert "Traceback" not in r["error"], r["error"]
            assert r["ok"] or BUSY.search(r["error"]), f"{r['mode']}: {r['error']}"
        assert any(r["ok"] for r in results), results

        # Whatever order they committed in, one more cycle leaves exactly the fault-free state.
        cycle(sim, store, settings)
        cycle(sim, control, settings)
    assert canonical(store) == canonical(control)
    rows = activity_rows(store)
    assert rows and len(rows) == len(set(rows))


def test_reader_sees_the_old_state_or_the_new_state_and_never_waits(tmp_path: Path) -> None:
    store = tmp_path / "store.duckdb"
    settings = sync_settings(FIELDS, ("firstname",))
    seen: list[tuple[str, object]] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(("state", canonical(store, wait_s=0)))
            except StoreBusyError as exc:
                seen.append(("busy", str(exc)))
            except Exception as exc:  # the finding this test looks for
                seen.append(("error", repr(exc)))
            time.sleep(0.01)

    with (
        Simulator(TINY, state_dir=tmp_path / "sim", max_page_size=4) as sim,
        Zygote(tmp_path) as zygote,
    ):
        cycle(sim, store, settings)
        old = canonical(store)
        _changes(sim)
        reader = threading.Thread(target=read)
        reader.start()
        try:
            job = crash_job(sim, store, settings, page_pause_s=0.05, write_pause_s=1.0)
            outcome = zygote.run(job, marker=None)
            time.sleep(0.3)  # and a moment after the publish
        finally:
            stop.set()
            reader.join()
        assert outcome.status == 0, zygote.stderr()
    new = canonical(store)
    assert new != old
    kinds = Counter(kind for kind, _ in seen)
    assert kinds["error"] == 0, [v for k, v in seen if k == "error"][:3]
    assert kinds["busy"] == 0, [v for k, v in seen if k == "busy"][
        :3
    ]  # it opens the published file
    states = [value for kind, value in seen if kind == "state"]
    assert all(value in (old, new) for value in states), "a reader saw a state between two commits"
    # It read all through the cycle's open write transaction, then the published result.
    assert old in states and new in states


def test_local_edit_during_a_cycle_waits_and_loses_nothing(tmp_path: Path) -> None:
    store, control = tmp_path / "store.duckdb", tmp_path / "control.duckdb"
    settings = sync_settings(FIELDS, ("firstname",))
    errors: list[BaseException] = []
    edits: list[threading.Thread] = []
    with (
        Simulator(TINY, state_dir=tmp_path / "sim", max_page_size=4) as sim,
        Zygote(tmp_path) as zygote,
    ):
        cycle(sim, store, settings)
        cycle(sim, control, settings)
        quiet = next(
            a for a in sim.org.account_ids() if len(sim.org.contacts_of(a)) not in (0, 9, 7)
        )
        contact = sim.org.contacts_of(quiet)[0]
        _changes(sim)

        def edit() -> None:
            try:
                set_account_field(store, contact, "address1_city", "Edited meanwhile")
            except BaseException as exc:
                errors.append(exc)

        def on_marker(text: str) -> None:
            if text == "WRITE" and not edits:  # the cycle holds the store: the edit must wait
                edits.append(threading.Thread(target=edit))
                edits[0].start()

        job = crash_job(sim, store, settings, write_pause_s=1.0)
        outcome = zygote.run(job, marker=None, on_marker=on_marker)
        assert outcome.status == 0, zygote.stderr()
        edits[0].join(timeout=120)
        assert errors == []
        cycle(sim, control, settings)
        set_account_field(control, contact, "address1_city", "Edited meanwhile")
        cycle(sim, store, settings)
        cycle(sim, control, settings)
    got, want = canonical(store), canonical(control)
    for table in ("accounts", "contacts"):
        assert got[table] == want[table]
    assert sorted(activity_rows(store)) == sorted(activity_rows(control))


def test_a_cycle_waits_for_the_running_one_then_says_busy(tmp_path: Path) -> None:
    """Between its fetch and its commit a cycle holds no DuckDB file, only its cycle lock:
    a second cycle must not take over its stage (it did, as a lock crash, before the lock)."""
    store = tmp_path / "store.duckdb"
    settings = sync_settings(FIELDS, ("firstname",))
    with Simulator(TINY, state_dir=tmp_path / "sim") as sim:
        cycle(sim, store, settings)
        runs_before = data_rows(store)
        with cycle_lock(store, wait_s=0):  # what a running cycle holds
            started = time.monotonic()
            with pytest.raises(StoreBusyError, match="another sync cycle is running"):
                cycle(sim, store, settings, store_wait_s=0.5)
            assert time.monotonic() - started >= 0.5  # it waited before giving up
        assert data_rows(store) == runs_before
        with open_store(store, read_only=True) as con:
            # Waiting is not a failed cycle: no sync_runs row says so.
            assert (
                con.execute("SELECT count(*) FROM sync_runs WHERE outcome = 'failed'").fetchone()[0]
                == 0
            )
        assert cycle(sim, store, settings).modes == {"account": "delta", "contact": "delta"}
