"""What publishing to PostgreSQL costs: an incremental cycle's publish at 100k and 1M contacts
(it should follow the changes, not the store) and the first full publish at 1M (COPY).

    uv run python benchmarks/postgres_publish.py [--repeat 3] [--changed-accounts 1000]

For each size: a simulator of that size in its own process, a first full cycle into a new
store, `publish_store(full=True)` into a throwaway PostgreSQL server (timed: the first full
publish), then `repeat` cycles that each change `changed-accounts` accounts of 8-12 contacts
(name and telephone1, as benchmarks/run.py's incremental figure does) with publishing on; the
publish inside each cycle is timed. Prints the figures and writes them to its own section of
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import dynsync_dagster.store.publish as publish_module  # noqa: E402
from dynsync_dagster.commands.postgres import ThrowawayPostgres  # noqa: E402
from dynsync_dagster.settings import ConnectionSettings, SyncSettings  # noqa: E402
from dynsync_dagster.simulator import SimulatorAdmin  # noqa: E402
from dynsync_dagster.simulator.process import SimulatorProcess  # noqa: E402
from dynsync_dagster.store.connection import open_store, working_path  # noqa: E402
from dynsync_dagster.store.postgres import PostgresPublished, Target, publish_store  # noqa: E402
from dynsync_dagster.sync.cycle import CycleOptions, run_cycle  # noqa: E402

RESULTS = REPO / "benchmarks" / "RESULTS.md"
START, END = "<!-- postgres_publish:start -->", "<!-- postgres_publish:end -->"
CONFIG = REPO / "dynsync.yaml"
SIZES = {"100k": (10_000, 100_000), "1M": (100_000, 1_000_000)}


@contextlib.contextmanager
def simulator(work: Path, accounts: int, contacts: int) -> Iterator[SimulatorProcess]:
    args = ["--accounts", str(accounts), "--contacts", str(contacts), "--seed", "15"]
    sim = SimulatorProcess(work / f"sim-{contacts}", args, cwd=REPO)
    sim.start(timeout_s=1800)
    try:
        yield sim
    finally:
        sim.stop()


@contextlib.contextmanager
def timed_publishes() -> Iterator[list[PostgresPublished]]:
    """Every PostgreSQL publish a cycle makes (its own timing, `seconds`), collected."""
    seen: list[PostgresPublished] = []
    original = publish_module.publish_after_commit

    def recording(con, workdir, run_id):
        done, error = original(con, workdir, run_id)
        if error:
            raise RuntimeError(error)
        if done is not None:
            seen.append(done)
        return done, error

    publish_module.publish_after_commit = recording
    try:
        yield seen
    finally:
        publish_module.publish_after_commit = original


def accounts_to_change(db: Path) -> list[str]:
    with open_store(working_path(db), read_only=True) as con:
        rows = con.execute(
            "SELECT CAST(accountid AS VARCHAR) FROM contacts WHERE NOT is_deleted "
            "AND accountid IS NOT NULL GROUP BY accountid HAVING count(*) BETWEEN 8 AND 12 "
            "ORDER BY hash(accountid)"
        ).fetchall()
    return [r[0] for r in rows]


def measure_size(label: str, pg: ThrowawayPostgres, work: Path, args) -> dict:
    accounts, contacts = SIZES[label]
    target = Target(pg.url(), f"bench_{label.lower()}")
    db = work / f"store-{label}" / "dynsync.duckdb"
    sync = SyncSettings.load(CONFIG)
    out: dict = {"label": label, "contacts": contacts}
    with simulator(work, accounts, contacts) as sim:
        conn = ConnectionSettings.from_env(sim.env)
        admin = SimulatorAdmin.from_state_dir(sim.state_dir)
        os.environ.pop("DYNSYNC_POSTGRES_URL", None)
        t0 = time.perf_counter()
        run_cycle(conn, sync, db, CycleOptions(trigger="benchmark"))
        out["full_cycle_s"] = time.perf_counter() - t0
        os.environ["DYNSYNC_POSTGRES_URL"] = target.url
        os.environ["DYNSYNC_POSTGRES_SCHEMA"] = target.schema
        full = publish_store(db, full=True, target=target)
        out["full"] = full
        print(f"{label}: first full publish {full.seconds:.2f}s, {full.shipped}", flush=True)
        pool = accounts_to_change(db)
        per_run = min(args.changed_accounts, len(pool) // args.repeat)
        out["changed_accounts"] = per_run
        out["incremental"] = []
        for i in range(args.repeat):
            for k, aid in enumerate(pool[i * per_run : (i + 1) * per_run]):
                admin.call(
                    "update_account", account_id=aid, name=f"Bench {i}-{k}",
                    telephone1=f"+31 20 555 {i:02d}{k % 100:02d}",
                )  # fmt: skip
            with timed_publishes() as seen:
                run_cycle(conn, sync, db, CycleOptions(trigger="benchmark"))
            (done,) = seen
            out["incremental"].append(done)
            print(
                f"{label}: incremental publish {done.seconds:.3f}s "
                f"(DuckDB {done.duckdb_s:.3f}s), {done.shipped}",
                flush=True,
            )
    return out


def report(results: list[dict], started: datetime, took_s: float, args) -> str:
    by = {r["label"]: r for r in results}
    lines = [
        START,
        "## Publishing to PostgreSQL",
        "",
        f"Generated by `uv run python benchmarks/postgres_publish.py --repeat {args.repeat} "
        f"--changed-accounts {args.changed_accounts}` on {started:%Y-%m-%d %H:%M} UTC (took "
        f"{took_s / 60:.1f} min), on {os.cpu_count()} cores, {platform.platform()}, with a "
        "throwaway PostgreSQL 15 server (fsync off) on the same machine. Timings were taken "
        "on a shared machine while other work ran (1-minute load average at the end: "
        f"{os.getloadavg()[0]:.1f}): read them as orders of magnitude.",
        "",
        "| store | publish | seconds (median) | of which DuckDB | rows copied | rows deleted |",
        "|---|---|---:|---:|---|---|",
    ]
    for label in SIZES:
        r = by.get(label)
        if r is None:
            continue
        full: PostgresPublished = r["full"]
        lines.append(
            f"| {r['contacts']:,} contacts | first full publish (COPY) | {full.seconds:.2f} | "
            f"{full.duckdb_s:.2f} | {_rows(full.shipped)} | - |"
        )
        inc = r["incremental"]
        median = statistics.median(d.seconds for d in inc)
        duck = statistics.median(d.duckdb_s for d in inc)
        last = inc[-1]
        lines.append(
            f"| {r['contacts']:,} contacts | incremental cycle, {r['changed_accounts']:,} "
            f"accounts changed | {median:.3f} | {duck:.3f} | {_rows(last.shipped)} | "
            f"{_rows(last.deleted)} |"
        )
    if {"100k", "1M"} <= set(by):
        small = statistics.median(d.seconds for d in by["100k"]["incremental"])
        big = statistics.median(d.seconds for d in by["1M"]["incremental"])
        lines += [
            "",
            f"- incremental publish, 1M / 100k contacts (same changes): {big / small:.2f}",
            f"- first full publish at 1M / incremental publish at 1M: "
            f"{by['1M']['full'].seconds / big:.0f}",
        ]
    lines += [
        "",
        "The incremental publish ships the changed accounts, the contacts whose account values "
        "changed, the new activity rows and the cycle's sync_runs row, and copies the small "
        "tables (sync_fields, choice_labels, local_edits, column_lineage) whole. PostgreSQL "
        "finds the rows to replace through the primary key; the part that still grows with "
        "the store is DuckDB reading the changed rows, which are scattered over the table's "
        "blocks (as the cycle's own re-propagation is).",
        END,
    ]
    return "\n".join(lines) + "\n"


def _rows(counts: dict[str, int]) -> str:
    return ", ".join(f"{t} {n:,}" for t, n in sorted(counts.items()) if n) or "-"


def write_section(section: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else ""
    if START in text and END in text:
        before, rest = text.split(START, 1)
        after = rest.split(END, 1)[1].lstrip("\n")
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--changed-accounts", type=int, default=1000)
    parser.add_argument("--sizes", default="100k,1M", help="comma-separated: 100k, 1M")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    started, t0 = datetime.now(UTC), time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="dynsync-pg-bench-") as tmp, ThrowawayPostgres() as pg:
        for label in args.sizes.split(","):
            results.append(measure_size(label.strip(), pg, Path(tmp), args))
    section = report(results, started, time.perf_counter() - t0, args)
    print(section)
    if not args.no_write:
        write_section(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
