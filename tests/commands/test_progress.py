"""A full read's progress: drawn on a terminal, absent from pipes, files and Dagster's runs."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

from dynsync_dagster.simulator import Simulator
from dynsync_dagster.store.publish import open_published
from dynsync_dagster.sync.progress import TerminalProgress
from tests.support import REPO, clean_env, run_cli

FINAL = re.compile(r"(\w+)s \(full read\): ([\d,]+) of ~([\d,]+) \(100%\), (\d+) pages?")


def test_the_line_shows_rows_of_the_total_pages_rate_and_eta() -> None:
    now = [0.0]
    out = io.StringIO()
    shown = TerminalProgress(out, clock=lambda: now[0])
    shown.start("contact", "full", 1_000_000)
    for _ in range(10):
        now[0] += 1.0
        shown.page("contact", 5000)
    assert shown.line() == (
        "contacts (full read): 50,000 of ~1,000,000 (5%), 10 pages, 5,000 rows/s, ETA 3m10s"
    )
    # The total is a day-old snapshot: more rows than it said is not 100%+ or a negative ETA.
    shown.page("contact", 2_000_000)
    assert "of ~2,050,000 (100%)" in shown.line() and "ETA" not in shown.line()
    shown.done("contact")
    drawn = out.getvalue()
    assert drawn.endswith("\x1b[K\n") and drawn.count("\r") == 12  # start, 10 redraws, done


def test_a_resumed_read_counts_what_was_staged_but_not_in_its_rate() -> None:
    now = [0.0]
    shown = TerminalProgress(io.StringIO(), clock=lambda: now[0])
    shown.start("account", "full", 100_000, already=40_000)
    now[0] += 2.0
    shown.page("account", 5000)
    assert shown.line() == (
        "accounts (full read): 45,000 of ~100,000 (45%), 1 page, 2,500 rows/s, ETA 22s"
    )


def _sync_on_a_terminal(env: dict[str, str], cwd: Path) -> tuple[int, str]:
    """`dynsync sync` with stdout and stderr on a pseudo-terminal; what the terminal showed."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynsync_dagster.commands.cli", "sync"],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=follower,
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    return proc.wait(timeout=300), shown.decode()


def test_sync_on_a_terminal_shows_each_full_read_and_a_pipe_shows_none(
    sim: Simulator, tmp_path: Path
) -> None:
    env = {**clean_env(tmp_path), **sim.env(flow="client_credentials")}
    db = tmp_path / "data" / "dynsync.duckdb"
    env.update(DYNSYNC_DUCKDB_PATH=str(db), DYNSYNC_CONFIG=str(REPO / "dynsync.yaml"), TERM="xterm")
    code, shown = _sync_on_a_terminal(env, tmp_path)
    assert code == 0, shown
    finals = {m[0]: (m[1], m[2]) for m in FINAL.findall(shown)}
    with open_published(db) as con:
        stored = {
            e: f"{con.execute(f'SELECT count(*) FROM {e}s').fetchone()[0]:,}"
            for e in ("account", "contact")
        }
    # Each entity's last line: every row read, and the total corrected to what was read.
    assert finals == {e: (n, n) for e, n in stored.items()}, shown

    # The next cycle reads deltas: nothing to draw. Off a terminal, never anything.
    code, shown = _sync_on_a_terminal(env, tmp_path)
    assert code == 0 and "full read" not in shown, shown
    fresh = tmp_path / "fresh.duckdb"
    piped = run_cli(["sync"], {**env, "DYNSYNC_DUCKDB_PATH": str(fresh)}, tmp_path)
    assert piped.returncode == 0, piped.stderr
    assert "full read" not in piped.stdout + piped.stderr
    assert "\x1b[K" not in piped.stdout + piped.stderr
