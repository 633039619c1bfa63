"""Performance benchmarks for dynsync against the built-in simulator, written to RESULTS.md.

Usage (from the repository root; the dlt peer lives in the `bench` dependency group):

    uv sync --group bench
    uv run --group bench python benchmarks/run.py                      # 100k accounts, 1M contacts
    uv run --group bench python benchmarks/run.py --accounts 2000 --contacts 20000 --repeat 1
    uv run python benchmarks/run.py --accounts 200 --contacts 2000 --repeat 1 --no-peer \
        --results /tmp/RESULTS.md                                      # the CI smoke size

What it does: starts `python -m dynsync_dagster.simulator` in its own process (HTTPS, its own
test CA) with `--accounts` accounts and `--contacts` contacts, two of them "sized" (by default
100,000 and 5,000 contacts), and measures, each as the median of `--repeat` runs:

- ceiling: a bare requests loop (msal bearer token, follow @odata.nextLink, same $select and
  Prefer as dynsync) reading contacts and accounts: what the simulator can serve at most;
- full: dynsync's first full cycle (fetch, store, propagate) into an empty DuckDB file;
- peer: a plain dlt pipeline (resource following @odata.nextLink, merge on the primary key)
  loading the same two entity sets with the same $select into DuckDB, with dlt's defaults
  (the target's reference, `--peer-default-repeat` runs) and tuned to the parquet loader;
- incremental: a cycle after 1,000 accounts (about 10 contacts each) changed two fields, on
  the full store and on a second simulator + store ten times smaller;
- fan-out: the 100,000-contact account changes 5 fields (activity-log limit raised so all
  500,000 rows log, and again at the default limit, where they are suppressed); the
  5,000-contact account changes 10 fields (50,000 rows);
- local edit: one account field edited locally on the 100,000-contact account;
- dagster: a scheduled cycle with nothing to do, through the Dagster job (run launch to
  success), and the part of it that is the cycle itself;
- whole processes: `dynsync sync` as a user runs it (new store, new DAGSTER_HOME, partitions
  from 14 days ago) and the bare loop's own process, each from spawn to exit; once, on the
  small store, `dynsync sync` on a new instance with the default partition start.

Every measured operation runs in a child process (this script with `--child`); its peak RSS
comes from os.wait4's rusage. Wall seconds are measured inside the child around the operation
(imports excluded); the child's whole lifetime is kept in the per-run details, with the CPU
seconds the simulator used meanwhile (`sim_cpu_s`). Nothing here is asserted: the file reports
what was measured, met or not.

Order: the small store's figures first, then the full store's, and the dlt peers last, so that
no dynsync figure is measured in the wake of the multi-gigabyte plain dlt load.

The code: harness.py runs the child processes and the simulator, tasks.py is what each child
measures, scenarios.py decides what is measured in which order, report.py writes RESULTS.md.

Other options: --results PATH (default benchmarks/RESULTS.md; the sections other scripts
write between <!-- name:start/end --> markers are kept), --work-dir DIR (default a temp dir,
removed at the end unless --keep), --no-peer, --no-new-instance, --big-account N /
--mid-account N (sizes of the two sized accounts; default 100,000 and 5,000, capped for small
runs), --changed-accounts N, --child-timeout S.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

DEFAULT_RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--accounts", type=int, default=100_000)
    p.add_argument("--contacts", type=int, default=1_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument(
        "--peer-repeat",
        type=int,
        default=None,
        help="runs of the parquet dlt peer (default: --repeat)",
    )
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS)
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the work dir (stores, logs)")
    p.add_argument(
        "--peer-default-repeat",
        type=int,
        default=1,
        help="runs of the plain dlt peer, dlt's defaults (default 1: minutes and gigabytes each)",
    )
    p.add_argument("--no-peer", action="store_true", help="skip the dlt peer")
    p.add_argument(
        "--no-new-instance",
        action="store_true",
        help="skip the first `dynsync sync` on a new Dagster instance with the default "
        "partitions (a minute or more of Dagster bookkeeping whatever the size)",
    )
    p.add_argument(
        "--big-account",
        type=int,
        default=None,
        help="contacts of the big account (default min(100000, contacts/10))",
    )
    p.add_argument(
        "--mid-account",
        type=int,
        default=None,
        help="contacts of the mid account (default min(5000, contacts/200))",
    )
    p.add_argument("--changed-accounts", type=int, default=1000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--child-timeout", type=float, default=3600)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--payload", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = argv
    if args.big_account is None:
        args.big_account = min(100_000, args.contacts // 10)
    if args.mid_account is None:
        args.mid_account = min(5_000, args.contacts // 200)
    if args.peer_repeat is None:
        args.peer_repeat = args.repeat
    if min(args.repeat, args.peer_repeat, args.peer_default_repeat) < 1:
        p.error("--repeat, --peer-repeat and --peer-default-repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # A measured child imports only what its task needs: its peak RSS is a figure.
    if args.child:
        from tasks import run_child

        return run_child(args.child, args.payload, args.out)
    from report import keep_other_sections, render
    from scenarios import run_all

    started = datetime.now(UTC)
    t0 = time.perf_counter()
    own_work = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="dynsync-bench-")) if own_work else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}", flush=True)
    try:
        out = run_all(args, work)
        text = render(args, out, started, time.perf_counter() - t0)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        # Other scripts' sections (between their <!-- name:start/end --> markers) stay.
        previous = args.results.read_text() if args.results.exists() else None
        args.results.write_text(keep_other_sections(previous, text))
        print(f"wrote {args.results}", flush=True)
    finally:
        if own_work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
