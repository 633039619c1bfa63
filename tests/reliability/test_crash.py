"""Crash safety: SIGKILL a sync cycle at random points; the next cycle must repair everything.

Each round makes seeded Dynamics changes, runs one cycle in a child process (forked from a
warm runner, see crash_runner.py) and kills it with SIGKILL at a seeded point: while it signs
in and reads metadata, while it fetches pages, while it merges inside the DuckDB transaction,
or around the commit. Then a normal cycle runs on the same store, and a control store that
never crashed runs the same cycle; both must hold the same rows and the same activity rows,
none twice.

The parallel first copy (DYNSYNC_PARALLEL_READ=1) is killed the same way at its own points:
while its ranges are staged, after one entity's copy, after the whole copy before the commit,
during the commit, and in the cycle that finishes the key read a copy left for later.
"""

from __future__ import annotations

import random
from pathlib import Path

from dynsync_dagster.settings import SyncSettings
from dynsync_dagster.simulator import Simulator
from dynsync_dagster.store.connection import open_store
from dynsync_dagster.sync.parallel_read import TRACKING, ParallelRead
from tests.support import (
    ACCOUNT_FIELDS,
    BOOKKEEPING,
    CONTACT_FIELDS,
    TINY,
    Zygote,
    canonical,
    crash_job,
    cycle,
    sync_settings,
)

# (marker to wait for, longest extra delay after it): together they cover a whole cycle.
KILL_POINTS = (
    ("READY", 0.6),  # token, metadata, the first pages
    ("FETCH", 0.25),  # between and inside page writes to the stage
    ("WRITE", 0.25),  # the merge SQL inside the store transaction
    ("MERGED", 0.45),  # the paused open transaction, then COMMIT, checkpoint and cleanup
    ("PUBLISH", 0.3),  # copying the store for readers, before and around the rename
)
ROUNDS = 30


def _dynamics_changes(sim: Simulator, rng: random.Random) -> list[str]:
    org = sim.org
    done = org.random_changes(rng.randint(1, 6), rng)
    accounts = org.account_ids()
    if rng.random() < 0.5:
        account = rng.choice(accounts)
        org.update_account(account, name=f"Renamed {rng.randrange(10**6)} 'Ltd'")
        done.append(f"renamed {account}")
    if rng.random() < 0.15 and len(accounts) > 4:
        target, sub = rng.sample(accounts, 2)
        org.merge_accounts(target, sub)
        done.append(f"merged {sub} into {target}")
    return done


def _settings_for(rng: random.Random, current: SyncSettings) -> SyncSettings:
    """Now and then the selection changes, which forces full re-reads (and their checkpoints)."""
    if rng.random() >= 0.15:
        return current
    optional = ("accountnumber", "description")
    fields = [f for f in ACCOUNT_FIELDS if f not in optional or rng.random() < 0.5]
    return sync_settings(tuple(fields), CONTACT_FIELDS, current.activity_log_contact_limit)


def test_sigkill_at_random_points_never_loses_or_duplicates_anything(tmp_path: Path) -> None:
    store, control = tmp_path / "store" / "dynsync.duckdb", tmp_path / "control" / "dynsync.duckdb"
    settings = sync_settings(limit=8)
    kills: list[str] = []
    with (
        Simulator(TINY, state_dir=tmp_path / "sim", max_page_size=8) as sim,
        Zygote(tmp_path) as zygote,
    ):
        for round_no in range(ROUNDS):
            rng = random.Random(9000 + round_no)
            changes: list[str] = []
            if round_no:
                changes = _dynamics_changes(sim, rng)
                settings = _settings_for(rng, settings)
                if rng.random() < 0.15:
                    sim.org.expire_delta_tokens()  # the next read is a full one
                    changes.append("expired delta tokens")
            marker, longest = KILL_POINTS[round_no % len(KILL_POINTS)]
            delay = rng.uniform(0, longest)
            outcome = zygote.run(crash_job(sim, store, settings), marker, delay)
            where = f"round {round_no}: kill {delay:.3f}s after {marker}, saw {outcome.markers}"
            assert outcome.killed or outcome.status == 0, f"{where}; {zygote.stderr()}"
            if outcome.killed:
                kills.append(f"{marker}+{delay:.2f}s ({outcome.markers[-1:]})")
                if store.exists():  # readers open the last published state, whole
                    assert canonical(store, wait_s=0)["accounts"], where

            cycle(sim, store, settings)  # the next cycle after the crash
            cycle(sim, control, settings)  # the uninterrupted reference
            got, want = canonical(store), canonical(control)
            for table in want:
                assert got[table] == want[table], f"{where}; changes {changes}; table {table}"
            assert len(set(got["activity_log"])) == len(got["activity_log"]), where
    assert len(kills) >= 20, kills
    phases = {k.split("+")[0] for k in kills}
    assert phases == {p for p, _ in KILL_POINTS}, kills


def _alive(rows: list[tuple], db: Path, table: str) -> list[tuple]:
    """The rows of records that still exist in Dynamics (is_deleted false)."""
    with open_store(db, read_only=True) as con:
        cols = [
            c for c in con.sql(f"SELECT * FROM {table} LIMIT 0").columns if c not in BOOKKEEPING
        ]
    flag = cols.index("is_deleted")
    return [r for r in rows if r[flag] == "false"]


def test_changes_while_a_killed_full_read_waits_to_resume_are_not_lost(tmp_path: Path) -> None:
    """A full read killed mid-way resumes from its checkpoint; what changed in Dynamics
    meanwhile (in pages already staged, or not yet read) must still arrive."""
    store, control = tmp_path / "store" / "dynsync.duckdb", tmp_path / "control" / "dynsync.duckdb"
    settings = sync_settings(limit=8)
    with (
        Simulator(TINY, state_dir=tmp_path / "sim", max_page_size=8) as sim,
        Zygote(tmp_path) as zygote,
    ):
        org = sim.org
        for first in (True, False):
            if not first:
                org.expire_delta_tokens()  # a full re-read of a store that has data
            outcome = zygote.run(crash_job(sim, store, settings), "FETCH", 0.01, nth=4)
            assert outcome.killed, outcome.markers
            contacts, accounts = org.contact_ids(), org.account_ids()
            early, late = contacts[:3], contacts[-2:]  # staged before the kill / not yet read
            org.update_contact(early[0], lastname="Changed after the kill")
            org.reparent_contact(early[1], accounts[-1], "account")
            org.delete_contact(early[2])
            org.update_contact(late[0], firstname="Late change")
            org.reparent_contact(late[1], None)
            org.create_contact(accounts[0], "account", lastname="Created after the kill")
            org.update_account(accounts[0], name="Account renamed after the kill")
            cycle(sim, store, settings)  # resumes the checkpointed read
            cycle(sim, store, settings)  # and the delta from its snapshot brings the rest
            cycle(sim, control, settings)
            got, want = canonical(store), canonical(control)
            for table in ("accounts", "contacts"):
                assert _alive(got[table], store, table) == _alive(want[table], control, table)
            assert len(set(got["activity_log"])) == len(got["activity_log"])


# A parallel first copy killed at one point each round: (how the round needs a full read, the
# marker to wait for, which time it is seen, the longest extra delay after it).
PARALLEL_KILLS = (
    ("new store", "FETCH", 2, 0.03),  # the first ranges' pages of a first copy
    ("expired", "FETCH", 9, 0.03),  # mid-ranges, around the stage's first checkpoint commit
    ("selection", "FETCH", 3, 0.03),  # a field taken out: mid-way through the accounts' ranges
    ("expired", "COPIED", 1, 0.03),  # contacts copied, accounts not begun
    ("new store", "STAGED", 1, 0.15),  # the copy whole and staged, before the commit
    ("expired", "MERGED", 1, 0.25),  # the open transaction, COMMIT, checkpoint
    # The copy committed without its key read (state "tracking"); the next cycle, which
    # finishes that read and polls its delta link, is killed.
    ("tracking", "KEYPAGE", 2, 0.05),
    ("tracking", "MERGED", 1, 0.25),
)
RANGES = 4  # ranges of ~18 contacts: 2 or 3 pages of 8 each


def test_sigkill_during_a_parallel_first_copy_leaves_the_store_whole(tmp_path: Path) -> None:
    """Each kill leaves the store as it was or fully updated (a reader never sees half a
    copy), and the next cycle, parallel again, reaches Dynamics' state exactly: that of a
    control store that only ever read one page at a time."""
    settings, generation = sync_settings(limit=8), 0
    store, control = _stores(tmp_path, generation)
    with (
        Simulator(TINY, state_dir=tmp_path / "sim", max_page_size=8) as sim,
        Zygote(tmp_path) as zygote,
    ):
        job = _parallel_job(sim, store, settings)
        for round_no, (need, marker, nth, longest) in enumerate(PARALLEL_KILLS):
            rng = random.Random(7000 + round_no)
            changes = _dynamics_changes(sim, rng) if round_no else []
            if need == "new store":
                generation += 1
                store, control = _stores(tmp_path, generation)
            elif need == "expired":
                sim.org.expire_delta_tokens()
            elif need == "selection":
                settings = _other_selection(settings)
            elif need == "tracking":
                _commit_without_the_key_read(sim, zygote, store, settings)
                cycle(sim, control, settings, parallel=None)
                changes += _dynamics_changes(sim, rng)
            job = _parallel_job(sim, store, settings, token_pause_s=0.03)
            before = canonical(store) if store.exists() else None
            requests = len(sim.requests)
            delay = rng.uniform(0, longest)
            outcome = zygote.run(job, marker, delay, nth=nth)
            where = f"round {round_no} ({need}): kill {delay:.3f}s after {marker} #{nth}"
            assert outcome.killed, f"{where}: not killed, saw {outcome.markers}; {zygote.stderr()}"
            if need != "tracking":  # the killed cycle read in key ranges, not page by page
                assert _range_requests(sim, requests), where

            cycle(sim, control, settings, parallel=None)
            want = canonical(control)
            after_kill = canonical(store) if store.exists() else None
            assert after_kill in (before, want), f"{where}: half a cycle; {outcome.markers}"
            result = cycle(sim, store, settings, parallel=ParallelRead(ranges=RANGES))
            got = canonical(store)
            for table in want:
                assert got[table] == want[table], f"{where}; changes {changes}; table {table}"
            assert len(set(got["activity_log"])) == len(got["activity_log"]), where
            assert result.reader_states["contact"].mode in ("delta", TRACKING), where


def _stores(tmp_path: Path, generation: int) -> tuple[Path, Path]:
    return (
        tmp_path / f"store{generation}" / "dynsync.duckdb",
        tmp_path / f"control{generation}" / "dynsync.duckdb",
    )


def _parallel_job(sim: Simulator, store: Path, settings: SyncSettings, **extra: float) -> dict:
    job = crash_job(sim, store, settings, page_pause_s=0.02, write_pause_s=0.3)
    return {**job, "parallel": True, "ranges": RANGES, **extra}


def _other_selection(settings: SyncSettings) -> SyncSettings:
    """Take an optional account field out, or put it back: a full read of accounts."""
    fields = settings.account_fields
    if "description" in fields:
        fields = tuple(f for f in fields if f != "description")
    else:
        fields = (*fields, "description")
    return sync_settings(fields, settings.contact_fields, settings.activity_log_contact_limit)


def _commit_without_the_key_read(
    sim: Simulator, zygote: Zygote, store: Path, settings: SyncSettings
) -> None:
    """A parallel re-read whose key read (for the delta link) is slow: the copy commits
    without it, in state "tracking", and the next cycle finishes it."""
    sim.org.expire_delta_tokens()
    job = _parallel_job(sim, store, settings, token_pause_s=0.15)
    outcome = zygote.run(job, None)
    assert outcome.status == 0 and "DONE" in outcome.markers, zygote.stderr()
    with open_store(store, read_only=True) as con:
        mode = con.execute("SELECT mode FROM sync_state WHERE entity = 'contact'").fetchone()
    assert mode == (TRACKING,), mode


def _range_requests(sim: Simulator, since: int) -> int:
    """Requests for key ranges of contacts or accounts after the first `since` of the log."""
    paths = [r.path for r in list(sim.requests)[since:]]
    return sum("$orderby=contactid" in p or "$orderby=accountid" in p for p in paths)
