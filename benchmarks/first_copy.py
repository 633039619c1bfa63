"""First copy under realistic service protection: parallel key ranges vs a sequential pager.

Usage (from the repository root):

    uv run python benchmarks/first_copy.py                      # 1,000,000 contacts, clock x4
    uv run python benchmarks/first_copy.py --server-time-scale 12 --clock-speed 8  # steady
    uv run python benchmarks/first_copy.py --contacts 200000 --clock-speed 4 --no-write

What it does: starts the simulator in its own process in its realistic mode
(`--realistic-limits`: each request costs modelled server time by the rows and columns it
returns, and the user's 300 s window allows 6,000 requests, 1,200 s of execution time and 52
at once) on a clock `--clock-speed` times real time, with `--contacts` contacts and a tenth as
many accounts, and measures, in simulated seconds (real seconds x clock speed):

- first copy: dynsync's first cycle with parallel reads (DYNSYNC_PARALLEL_READ=1, the
  default 80% share of the budget) into an empty DuckDB file, the store write included;
- next cycle: the cycle after it, which finishes the change-tracking key read if the copy
  committed before it ended, and polls the delta link;
- sequential: a pager that asks for one page at a time and follows @odata.nextLink, with the
  same $select, annotations and change tracking as dynsync (what every peer does), one
  window after the copy so that it meets no 429;
- ceilings: the records per second the execution-time budget allows in steady state,
  1,200 s per 300 s = 4 server-seconds per second, divided by the modelled server time per
  record of full pages (simulator/realism.py), at 100% and at the read's share; and the best
  case when the first window's share is spent at once and the rest at the steady pace.

Two regimes, two sections of RESULTS.md:
- `--server-time-scale 1` (the default cost, section `first-copy`): 1M contacts cost about a
  fifth of one window's 1,200 s, so the whole copy is one burst that the limits allow at
  once; an unmeasured sequential read first warms the simulator's cache of serialised
  records, then one window passes so the copy starts with the budget unused.
- `--server-time-scale F` (section `first-copy-steady`): every request costs F times as
  much (an org with wide rows, plugins or a busy server), so the same rows cost several
  windows and the budget's steady state, and the client's adaptation to the ratelimit
  headers, set the pace. A page's hold then dwarfs its serialisation: no warm-up. The pager
  is timed on `--pager-prefix` of each table (default 10%) and extrapolated: its pace is
  one page's modelled time, the same for every full page.

Every 429 is checked: no request may start after a 429 answer and before its Retry-After
has passed (100 ms of slack for a request already past the gate).

The simulator and the client share this machine's cores, so the clock speed must stay low
enough for both to keep up (simulator/clock.py); timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dynsync_dagster.dynamics import client as client_module  # noqa: E402
from dynsync_dagster.dynamics.budget import EXECUTION_LIMIT_S, TIME_LEFT, Budget  # noqa: E402
from dynsync_dagster.dynamics.client import DynamicsClient  # noqa: E402
from dynsync_dagster.dynamics.fields import ENTITY_SET, resolve_fields  # noqa: E402
from dynsync_dagster.settings import ConnectionSettings, SyncSettings  # noqa: E402
from dynsync_dagster.simulator.limits import WINDOW_S  # noqa: E402
from dynsync_dagster.simulator.process import SimulatorProcess  # noqa: E402
from dynsync_dagster.simulator.realism import ServerTime  # noqa: E402
from dynsync_dagster.sync import cycle as cycle_module  # noqa: E402
from dynsync_dagster.sync import parallel_read  # noqa: E402
from dynsync_dagster.sync.cycle import CycleOptions, run_cycle  # noqa: E402
from dynsync_dagster.sync.parallel_read import ParallelRead  # noqa: E402
from dynsync_dagster.sync.stage import ANNOTATIONS  # noqa: E402

CONFIG = REPO / "dynsync.yaml"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
# The default cost's copy fits in one window (a burst); a scaled org's costs several.
SECTIONS = {"burst": "first-copy", "steady": "first-copy-steady"}


def markers(args: argparse.Namespace) -> tuple[str, str]:
    name = SECTIONS["burst" if args.server_time_scale == 1 else "steady"]
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


@dataclass
class Sent:
    started: float
    answered: float
    status: int
    retry_after: float | None
    window_used: float | None  # the user's execution-time window in use, from the headers
    thread: str = ""  # dynsync-token: the key read; dynsync-range-N: the ranges


@dataclass
class Watch:
    """Every Web API answer the clients get, and the budgets of the parallel reads."""

    sent: list[Sent] = field(default_factory=list)
    budgets: list[Budget] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self) -> None:
        build = client_module.build_session
        watch = self

        def logged(conn: ConnectionSettings):
            session = build(conn)
            send = session.request

            def request(method: str, url: str, **kwargs: Any):
                started = time.monotonic()
                response = send(method, url, **kwargs)
                retry = response.headers.get("Retry-After")
                left = _float(response.headers.get(TIME_LEFT, "").replace(",", "") or None)
                used = None if left is None else 1 - left / 1000 / EXECUTION_LIMIT_S
                answered = time.monotonic()
                with watch.lock:
                    watch.sent.append(
                        Sent(
                            started,
                            answered,
                            response.status_code,
                            _float(retry),
                            used,
                            threading.current_thread().name,
                        )
                    )
                return response

            session.request = request
            return session

        class Recorded(Budget):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                super().__init__(*args, **kwargs)
                watch.budgets.append(self)

        client_module.build_session = logged
        # The cycle makes one budget for its reads; a resumed read may make its own.
        cycle_module.Budget = Recorded  # type: ignore[misc]
        parallel_read.Budget = Recorded  # type: ignore[misc]

    def since(self, t0: float) -> list[Sent]:
        with self.lock:
            return [s for s in self.sent if s.started >= t0]


def write_requests_log(path: Path, sent: list[Sent], t0: float, speed: float) -> None:
    """Every answer of the first copy, in simulated seconds from its start (a CSV)."""
    lines = ["started_s,answered_s,status,window_used,thread"]
    for s in sorted(sent, key=lambda s: s.started):
        used = "" if s.window_used is None else f"{s.window_used:.4f}"
        lines.append(
            f"{(s.started - t0) * speed:.2f},{(s.answered - t0) * speed:.2f},"
            f"{s.status},{used},{s.thread}"
        )
    path.write_text("\n".join(lines) + "\n")


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def unhonoured(sent: list[Sent]) -> int:
    """Requests that started while a 429's Retry-After was still running."""
    bad = 0
    for t in (s for s in sent if s.status == 429 and s.retry_after):
        bad += sum(
            1 for s in sent if t.answered + 0.1 < s.started < t.answered + t.retry_after - 0.05
        )
    return bad


def sequential(
    conn: ConnectionSettings, plan: Any, totals: dict[str, int], prefix: float = 1.0
) -> dict[str, Any]:
    """A one-page-at-a-time pager. With `prefix` below 1 it reads only that share of each
    entity's records and its time is extrapolated to all of them: its pace is set by the
    modelled server time per page, the same for every full page of an entity."""
    columns: dict[str, int] = {}
    read, real_s = 0, 0.0
    with DynamicsClient(conn) as client:
        for entity in ("contact", "account"):
            pages = client.iter_pages(
                ENTITY_SET[entity],
                select=plan.select(entity),
                track_changes=plan.change_tracking[entity],
                annotations=ANNOTATIONS,
            )
            n, t0 = 0, time.perf_counter()
            for page in pages:
                if page.rows and entity not in columns:
                    columns[entity] = sum(1 for k in page.rows[0] if "@" not in k)
                n += len(page)
                if prefix < 1 and n >= prefix * totals[entity]:
                    break
            took = time.perf_counter() - t0
            read += n
            real_s += took * (totals[entity] / n if n < totals[entity] else 1)
    return {"sequential_s": real_s, "sequential_read": read, "columns": columns}


def timed_cycle(conn, sync, db: Path, share: float) -> tuple[Any, float]:
    options = CycleOptions(parallel=ParallelRead(budget=parallel_read.BudgetShare(share=share)))
    t0 = time.perf_counter()
    result = run_cycle(conn, sync, db, options)
    return result, time.perf_counter() - t0


def server_seconds(
    rows: dict[str, int], columns: dict[str, int], scale: float, key_only: bool = False
) -> float:
    """Modelled server time of reading these records in full 5,000-row pages
    (simulator/realism.py); key_only: the change-tracking read of the key alone."""
    model = ServerTime(scale=scale)
    return sum(
        n * model.cost(5000, 1 if key_only else columns.get(entity, 0)) / 5000
        for entity, n in rows.items()
    )


def ceilings(records: int, server_s: float, share: float) -> dict[str, float | None]:
    """Records per simulated second the execution-time budget allows: in steady state
    (share x 1,200 s per 300 s window), and at best when the first window's share is spent
    at once and the rest at the steady pace (None: the copy fits in that first window)."""
    out: dict[str, float | None] = {}
    for name, s in (("100", 1.0), ("share", share)):
        per_s = EXECUTION_LIMIT_S / WINDOW_S * s  # server-seconds per simulated second
        out[name] = records / (server_s / per_s)
        after_burst = max(0.0, server_s - s * EXECUTION_LIMIT_S) / per_s
        out[f"{name}_burst"] = records / after_burst if after_burst > 0 else None
    return out


def timeline(sent: list[Sent], t0: float, t1: float, speed: float, step_s: float = 60):
    """Per `step_s` simulated seconds of [t0, t1]: mean requests in flight and the highest
    share of the user's execution-time window in use."""
    out = []
    start = t0
    while start < t1:
        end = min(t1, start + step_s / speed)
        busy = sum(max(0.0, min(s.answered, end) - max(s.started, start)) for s in sent)
        used = [s.window_used for s in sent if start <= s.answered < end and s.window_used]
        out.append((busy / (end - start), max(used, default=0.0)))
        start = end
    return out


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    watch = Watch()
    watch.install()
    scaled = args.server_time_scale != 1
    sim_args = ["--accounts", str(args.accounts), "--contacts", str(args.contacts)]
    sim_args += ["--seed", "7", "--realistic-limits", "--clock-speed", str(args.clock_speed)]
    sim_args += ["--server-time-scale", str(args.server_time_scale)]
    totals = {"contact": args.contacts, "account": args.accounts}
    out: dict[str, Any] = {"failed_cycles": 0}
    with SimulatorProcess(work / "sim", sim_args, cwd=REPO) as sim:
        conn = ConnectionSettings.from_env(sim.env)
        sync = SyncSettings.load(CONFIG)
        with DynamicsClient(conn) as client:
            plan = resolve_fields(client, sync.account_fields, sync.contact_fields)
        if not scaled:
            # The simulator serialises each record once for a $select and caches the bytes:
            # a first read warms it for both measured reads, then a window passes. On a
            # scaled org a page's hold dwarfs its serialisation, so no warm-up is needed.
            print("warming the simulator (a sequential read, not measured) ...", flush=True)
            sequential(conn, plan, totals)
            time.sleep(WINDOW_S / args.clock_speed + 1)
        t0 = time.monotonic()
        print("first copy (parallel) and the next cycle ...", flush=True)
        copy_cycles(conn, sync, work / "store" / "dynsync.duckdb", args.share, out)
        first_end = t0 + out.get("first_s", 0.0)
        during = [s for s in watch.since(t0) if s.started < first_end]
        out["window_used"] = max((s.window_used or 0.0 for s in during), default=0.0)
        out["timeline"] = timeline(during, t0, first_end, args.clock_speed)
        keys = [s for s in during if s.thread == "dynsync-token"]
        out["key_timeline"] = timeline(keys, t0, first_end, args.clock_speed)
        if args.requests_log:
            write_requests_log(args.requests_log, during, t0, args.clock_speed)
        out["peak_in_flight"] = max((b.stats.peak_in_flight for b in watch.budgets), default=0)
        # Let the copy's charges leave the window: the pager then never meets a 429.
        time.sleep(WINDOW_S / args.clock_speed + 1)
        print("sequential pager ...", flush=True)
        out.update(sequential(conn, plan, totals, args.pager_prefix))
        for share in args.extra_share:
            db = work / f"store-{share:g}" / "dynsync.duckdb"
            out.setdefault("extra", {})[share] = extra_copy(args, conn, sync, db, share, watch)
        sent = watch.since(t0)
        out["throttled"] = sum(1 for s in sent if s.status == 429)
        out["unhonoured"] = unhonoured(sent)
    out["rows"] = sum(totals.values())
    scale, columns = args.server_time_scale, out["columns"]
    out["server_s"] = server_seconds(totals, columns, scale)
    out["key_server_s"] = server_seconds(totals, columns, scale, key_only=True)
    out.update(ceilings(out["rows"], out["server_s"], args.share))
    return out


def copy_cycles(conn, sync, db: Path, share: float, out: dict[str, Any]) -> None:
    """The parallel first copy and the cycle after it; a failure is counted, not raised."""
    for name in ("first", "next"):
        try:
            result, wall = timed_cycle(conn, sync, db, share)
        except Exception as exc:
            out["failed_cycles"] += 1
            out[f"{name}_error"] = str(exc)[:300]
            return
        out[f"{name}_s"], out[f"{name}_fetch_s"] = wall, result.fetch_s
        out[f"{name}_rows"] = sum(result.rows_read.values())
        out[f"{name}_modes"] = dict(result.modes)
        out[f"{name}_states"] = {e: s.mode for e, s in result.reader_states.items()}
        out[f"{name}_requests"] = result.stats.requests


def extra_copy(args, conn, sync, db: Path, share: float, watch: Watch) -> dict[str, Any]:
    """One more first copy, at another share, once a window has passed (no next cycle)."""
    time.sleep(WINDOW_S / args.clock_speed + 1)
    print(f"first copy at a {share:.0%} share ...", flush=True)
    out: dict[str, Any] = {"failed_cycles": 0}
    t0 = time.monotonic()
    try:
        result, wall = timed_cycle(conn, sync, db, share)
        out.update(first_s=wall, first_fetch_s=result.fetch_s)
    except Exception as exc:
        out.update(failed_cycles=1, first_error=str(exc)[:300])
    during = [s for s in watch.since(t0) if s.started < t0 + out.get("first_s", 0.0)]
    out["window_used"] = max((s.window_used or 0.0 for s in during), default=0.0)
    out["throttled"] = sum(1 for s in during if s.status == 429)
    out["timeline"] = timeline(during, t0, t0 + out.get("first_s", 0.0), args.clock_speed)
    return out


def command(args: argparse.Namespace) -> str:
    text = (
        f"python benchmarks/first_copy.py --contacts {args.contacts} --accounts "
        f"{args.accounts} --clock-speed {args.clock_speed:g} --share {args.share:g}"
    )
    if args.server_time_scale != 1:
        text += f" --server-time-scale {args.server_time_scale:g}"
    if args.pager_prefix < 1:
        text += f" --pager-prefix {args.pager_prefix:g}"
    for share in args.extra_share:
        text += f" --extra-share {share:g}"
    return text


def report(args: argparse.Namespace, m: dict[str, Any], took_s: float) -> str:
    speed = args.clock_speed
    seq_rate = m["rows"] / (m["sequential_s"] * speed)
    scale = f", `--server-time-scale {args.server_time_scale:g}`"
    start, end = markers(args)
    title = "## First copy under realistic service protection (issue 16)"
    if args.server_time_scale != 1:
        title += f": an org whose pages cost {args.server_time_scale:g}x, beyond one window"
    lines = [
        start,
        title,
        "",
        f"Generated by `{command(args)}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC (took "
        f"{took_s / 60:.1f} min). Simulator in its realistic mode (`--realistic-limits`"
        + (scale if args.server_time_scale != 1 else "")
        + f") on a clock {speed:g}x real time; rates are records per *simulated* second (real "
        f"seconds x {speed:g}). One run each, on a shared 2-core machine: the timings are "
        "noisy. Columns returned per record: "
        + ", ".join(f"{e} {n}" for e, n in m["columns"].items())
        + ".",
        "",
        *table(args, m, seq_rate),
        "",
        *verdicts(args, m, seq_rate),
        *notes(args, m),
        end,
    ]
    return "\n".join(lines) + "\n"


def table(args: argparse.Namespace, m: dict[str, Any], seq_rate: float) -> list[str]:
    speed, rows, share = args.clock_speed, m["rows"], args.share
    c100, cshare = m["100"], m["share"]

    def rated(name: str, seconds: str, n: str, rate: float) -> str:
        return (
            f"| {name} | {seconds} | {n} | {rate:,.0f} | {rate / seq_rate:.2f}x | "
            f"{rate / c100:.0%} | {rate / cshare:.0%} |"
        )

    def run(name: str, real_s: float | None) -> str:
        if real_s is None:
            return f"| {name} | failed | | | | | |"
        return rated(name, f"{real_s * speed:,.1f}", f"{rows:,}", rows / (real_s * speed))

    pager = "Sequential pager (one page at a time, nextLink)"
    if args.pager_prefix < 1:
        pager += f", timed on the first {args.pager_prefix:.0%} of each table, extrapolated"
    out = [
        "| figure | simulated s | records | records/s | vs sequential | vs ceiling (100%) "
        f"| vs ceiling ({share:.0%}) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        run(pager, m["sequential_s"]),
        run("First copy, parallel ranges (whole cycle, store write included)", m.get("first_s")),
        run(
            "First copy, its read (the cycle's fetch: pages staged in DuckDB)",
            m.get("first_fetch_s"),
        ),
        rated(
            "Ceiling: 100% of the execution-time budget, steady state (4 server-s/s)",
            f"{rows / c100:,.1f}",
            "",
            c100,
        ),
        rated(
            f"Ceiling: the read's share, {share:.0%}, steady state",
            f"{rows / cshare:,.1f}",
            "",
            cshare,
        ),
    ]
    for extra, e in m.get("extra", {}).items():  # after the first copy's rows
        name = f"First copy at a {extra:.0%} share (`--extra-share`)"
        out[5:5] = [
            run(f"{name}, whole cycle", e.get("first_s")),
            run(f"{name}, its read", e.get("first_fetch_s")),
        ]
    for key, label in (("100_burst", "100%"), ("share_burst", f"{share:.0%}")):
        rate = m.get(key)
        name = f"Best case at {label}: the first window's {label} spent at once, the rest steady"
        if rate:
            out.append(rated(name, f"{rows / rate:,.1f}", "", rate))
        else:
            out.append(f"| {name} | the copy fits in one window | | | | | |")
    return out


def verdicts(args: argparse.Namespace, m: dict[str, Any], seq_rate: float) -> list[str]:
    speed, rows = args.clock_speed, m["rows"]
    fetch_rate = rows / (m["first_fetch_s"] * speed) if m.get("first_fetch_s") else 0.0
    cycle_rate = rows / (m["first_s"] * speed) if m.get("first_s") else 0.0
    targets = [
        (
            "first copy's read >= 80% of the steady-state ceiling (100%)",
            fetch_rate >= 0.8 * m["100"],
        ),
        ("first copy's read >= 3x the sequential pager", fetch_rate >= 3 * seq_rate),
        (
            "zero failed cycles",
            m["failed_cycles"] + sum(e["failed_cycles"] for e in m.get("extra", {}).values()) == 0,
        ),
        ("every 429 honoured", m["unhonoured"] == 0),
        ("(whole first cycle >= 80% of the steady-state ceiling)", cycle_rate >= 0.8 * m["100"]),
        ("(whole first cycle >= 3x the sequential pager)", cycle_rate >= 3 * seq_rate),
    ]
    return [f"- {name}: {'met' if ok else 'NOT met'}" for name, ok in targets]


def notes(args: argparse.Namespace, m: dict[str, Any]) -> list[str]:
    speed, share = args.clock_speed, args.share
    window_share = share * EXECUTION_LIMIT_S
    minutes = ", ".join(f"{used:.0%}" for _, used in m["timeline"])
    flight = ", ".join(f"{busy:.1f}" for busy, _ in m["timeline"])
    out = [
        f"- Modelled server time of the records' pages (what the pager reads): "
        f"{m['server_s']:,.0f} s, {m['server_s'] / window_share:.1f}x the {share:.0%} share of "
        f"one window ({window_share:,.0f} s). The copy's change-tracking key read (the key "
        f"alone, for the delta link) adds {m['key_server_s']:,.0f} s, spent alongside the "
        "ranges and, when they end first, in the next cycle.",
        f"- 429 answers during the run: {m['throttled']}; requests started inside a "
        f"Retry-After: {m['unhonoured']}; at most {m['peak_in_flight']} requests in flight "
        f"(allowed: {int(52 * share)}); highest share of the user's execution-time window "
        f"in use during the copy: {m['window_used']:.0%}.",
        *(
            f"- First copy at a {extra:.0%} share: highest window use {e['window_used']:.0%}, "
            f"429 answers {e['throttled']}; per simulated minute, highest window use "
            + ", ".join(f"{used:.0%}" for _, used in e["timeline"])
            + "; mean requests in flight "
            + ", ".join(f"{busy:.1f}" for busy, _ in e["timeline"])
            + (f", failed: {e['first_error']}" if e.get("first_error") else "")
            + "."
            for extra, e in m.get("extra", {}).items()
        ),
        f"- During the first copy, per simulated minute: highest window use {minutes}; mean "
        f"requests in flight {flight}; of them the key read's "
        + ", ".join(f"{busy:.1f}" for busy, _ in m["key_timeline"])
        + ".",
        f"- first cycle: modes {m.get('first_modes')}, reader states after "
        f"{m.get('first_states')}, {m.get('first_requests')} requests",
        f"- next cycle (finishes the change-tracking key read if the copy committed first, "
        f"then polls the delta link): {m['next_s'] * speed:,.1f} simulated s, modes "
        f"{m.get('next_modes')}, reader states after {m.get('next_states')}"
        if m.get("next_s")
        else f"- next cycle failed: {m.get('next_error') or m.get('first_error')}",
    ]
    if m["server_s"] <= window_share:
        out.append(
            "- Why this copy can beat the steady-state ceiling: its whole cost fits in one "
            "300 s window's share, which the limits allow to be spent at once; the steady "
            "state is measured with `--server-time-scale` (an org whose pages cost more)."
        )
    else:
        out.append(
            "- The copy costs several windows' share, so the budget's steady state sets "
            f"its pace: there the share itself caps the read at {share:.0%} of the 100% "
            "ceiling; the best-case rows add what spending the first window at once can gain "
            "(a sliding window allows it once). They are bounds: budget spent in a burst "
            "comes back only 300 s later, so a copy that costs just over k windows' share "
            "takes k windows plus a burst however well it paces itself."
        )
    return out


def write_results(path: Path, section: str, start: str, end: str) -> None:
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        head, rest = text.split(start, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contacts", type=int, default=1_000_000)
    p.add_argument("--accounts", type=int, default=None, help="default: a tenth of --contacts")
    p.add_argument("--clock-speed", type=float, default=4.0)
    p.add_argument("--share", type=float, default=0.8)
    p.add_argument(
        "--server-time-scale",
        type=float,
        default=1.0,
        help="every request costs this many times the default server time (an expensive "
        "org): at 12, a 1M-contact copy costs several windows' budget, so the steady state "
        "is measured, not one burst (default 1)",
    )
    p.add_argument(
        "--extra-share",
        type=float,
        action="append",
        default=[],
        help="also time a first copy at this share of the budget, after the rest (no next "
        "cycle; repeatable), e.g. 0.95 to see how close the budget logic gets to the budget",
    )
    p.add_argument(
        "--pager-prefix",
        type=float,
        default=None,
        help="time the sequential pager on this share of each table and extrapolate "
        "(default: 1 at scale 1, else 0.1: its pace is one page's modelled time)",
    )
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument(
        "--requests-log", type=Path, help="write the first copy's requests to this CSV file"
    )
    p.add_argument("--no-write", action="store_true", help="print only")
    args = p.parse_args(argv)
    args.accounts = args.accounts if args.accounts is not None else args.contacts // 10
    if args.pager_prefix is None:
        args.pager_prefix = 1.0 if args.server_time_scale == 1 else 0.1
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dynsync-first-copy-") as tmp:
        m = measure(args, Path(tmp))
    section = report(args, m, time.perf_counter() - started)
    print(section)
    if not args.no_write:
        write_results(args.results, section, *markers(args))
        print(f"written to {args.results}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main(sys.argv[1:]))
