"""Crash safety: SIGKILL a sync cycle at random points; the next cycle must repair everything.

Each round makes seeded Dynamics changes, runs one cycle in a child process (forked from a
warm runner, see crash_runner.py) and kills it with SIGKILL at a seeded point: while it signs
in and reads metadata, while it fetches pages, while it merges inside the DuckDB transaction,
or around the commit. Then a normal cycle runs on the same store, and a control store that
never crashed runs the same cycle; both must hold the same rows and the same activity rows,
none twice.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from dynsync_dagster.settings import SyncSettings
from dynsync_dagster.simulator import Simulator
from dynsync_dagster.store import open_store

from .support import (
    ACCOUNT_FIELDS,
    BOOKKEEPING,
    CONTACT_FIELDS,
    REPO,
    TINY,
    canonical,
    clean_env,
    cycle,
    sync_settings,
)

# (marker to wait for, longest extra delay after it): together they cover a whole cycle.
KILL_POINTS = (
    ("READY", 0.6),  # token, metadata, the first pages
    ("FETCH", 0.25),  # between and inside page writes to the stage
    ("WRITE", 0.25),  # the merge SQL inside the store transaction
    ("MERGED", 0.5),  # the paused open transaction, then COMMIT, checkpoint and cleanup
)
ROUNDS = 24


@dataclass
class Outcome:
    killed: bool
    markers: list[str]
    status: int | None


class Zygote:
    """The fork server of crash_runner.py, driven over its stdin/stdout."""

    def __init__(self, tmp: Path) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.crash_runner"],
            cwd=REPO,
            env=clean_env(tmp),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(tmp / "crash_runner.stderr", "w"),  # noqa: SIM115 - closed with the process
            text=True,
            bufsize=1,
        )
        self.stderr_path = tmp / "crash_runner.stderr"
        self._lines: queue.Queue[tuple[float, str]] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._expect(lambda line: line == "ZYGOTE READY", timeout=120)

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put((time.monotonic(), line.rstrip("\n")))

    def _expect(self, match, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"crash runner went quiet; stderr: {self.stderr()}")
            try:
                _, line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if match(line):
                return line

    def stderr(self) -> str:
        return self.stderr_path.read_text()[-3000:]

    def run(self, job: dict, marker: str, delay_s: float, nth: int = 1) -> Outcome:
        """Run `job` in a child; SIGKILL it `delay_s` after it prints `marker` the `nth` time."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(job) + "\n")
        self._proc.stdin.flush()
        pid = int(self._expect(lambda line: line.startswith("STARTED "), timeout=60).split()[1])
        markers: list[str] = []
        kill_at: float | None = None
        killed = False
        seen = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            wait = 0.5 if kill_at is None else max(0.0, kill_at - time.monotonic())
            try:
                _, line = self._lines.get(timeout=wait)
            except queue.Empty:
                line = None
            if kill_at is not None and time.monotonic() >= kill_at and not killed:
                os.kill(pid, signal.SIGKILL)  # our own grandchild, by its id
                killed = True
            if line is None:
                continue
            if line.startswith(f"EXIT {pid} "):
                return Outcome(killed, markers, int(line.split()[2]))
            if line.startswith(f"{pid} "):
                text = line.split(" ", 1)[1]
                markers.append(text)
                if kill_at is None and text.split()[0] == marker:
                    seen += 1
                    if seen == nth:
                        kill_at = time.monotonic() + delay_s
        raise TimeoutError(f"child {pid} did not end; markers {markers}; {self.stderr()}")

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> Zygote:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _job(sim: Simulator, db: Path, settings: SyncSettings) -> dict:
    return {
        "env": sim.env(),
        "db": str(db),
        "account_fields": list(settings.account_fields),
        "contact_fields": list(settings.contact_fields),
        "limit": settings.activity_log_contact_limit,
        "page_pause_s": 0.03,
        "write_pause_s": 0.3,
    }


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
            outcome = zygote.run(_job(sim, store, settings), marker, delay)
            where = f"round {round_no}: kill {delay:.3f}s after {marker}, saw {outcome.markers}"
            assert outcome.killed or outcome.status == 0, f"{where}; {zygote.stderr()}"
            if outcome.killed:
                kills.append(f"{marker}+{delay:.2f}s ({outcome.markers[-1:]})")

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
            outcome = zygote.run(_job(sim, store, settings), "FETCH", 0.01, nth=4)
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
