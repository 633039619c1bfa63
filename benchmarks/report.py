"""RESULTS.md: the targets each figure is held to, and the file itself."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import re
import statistics
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

from harness import REPO, Figure, mb
from scenarios import CONFIG, FANOUT_FIELDS, INCREMENTAL_FIELDS, PARTITION_DAYS, Sizes

# The RESULTS.md headings, in order (the CI smoke test checks they are all there).
SECTIONS = (
    "## Machine",
    "## Data",
    "## Figures",
    "## Ratios",
    "## Targets",
    "## Notes",
    "## Peer (dlt)",
    "## Runs",
)


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:,.3f}"


def _n(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def machine() -> dict[str, str]:
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": str(os.cpu_count()),
        "memory": mem,
        "cpu": cpu,
        "os": f"{platform.system()} {platform.release()}",
    }


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("duckdb", "dagster", "dlt", "msal", "requests", "pyarrow"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "dynsync_dagster"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        out["dynsync"] = commit + (" (package has uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        out["dynsync"] = "?"
    return out


Row = tuple[str, str, str, str]  # (target, measured, verdict, note)


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "NOT MET")


def targets(figs: dict[str, Figure], big: Sizes) -> list[Row]:
    """(target, measured, verdict, note) rows; a figure that did not run is 'not measured'."""
    return [
        *throughput_targets(figs),
        *memory_targets(figs, big),
        *whole_process_targets(figs, big),
        *cycle_targets(figs),
    ]


def throughput_targets(figs: dict[str, Figure]) -> list[Row]:
    """The first full sync against the simulator's ceiling and against dlt."""
    ceil, full, peer, plain = figs["ceiling"], figs["full"], figs["peer"], figs["peer_default"]
    share = _ratio(full.rate, ceil.rate)
    vs_dlt = _ratio(full.rate, plain.rate)
    vs_parquet = _ratio(full.rate, peer.rate)
    return [
        (
            "Simulator bare loop >= 100,000 rows/s",
            f"{_n(ceil.rate)} rows/s",
            _verdict(None if ceil.rate is None else ceil.rate >= 100_000),
            "",
        ),
        (
            "First full sync >= 70% of the bare-loop ceiling (the cycle alone)",
            "-" if share is None else f"{share:.0%}",
            _verdict(None if share is None else share >= 0.70),
            "",
        ),
        (
            "First full sync >= 10x dlt's records/s",
            "-" if vs_dlt is None else f"{vs_dlt:.1f}x",
            _verdict(None if vs_dlt is None else vs_dlt >= 10),
            ("against the plain pipeline (dlt's defaults)" if plain.ok else (plain.error or ""))
            + ("" if vs_parquet is None else f"; {vs_parquet:.1f}x against dlt tuned to parquet"),
        ),
    ]


def whole_process_targets(figs: dict[str, Figure], big: Sizes) -> list[Row]:
    """The same two targets, held to the whole processes a user waits for."""
    ceil, full = figs["ceiling_process"], figs["full_process"]
    share = _ratio(full.rate, ceil.rate)
    return [
        (
            "First full sync >= 70% of the bare loop, whole processes (spawn to exit)",
            "-" if share is None else f"{share:.0%}",
            _verdict(None if share is None else share >= 0.70),
            "`dynsync sync` against the bare loop's own process",
        ),
        (
            f"Peak RSS of a full sync at {big.contacts:,} contacts < 500 MB, whole "
            "`dynsync sync` process",
            mb(full.rss),
            _verdict(None if full.rss is None else full.rss < 500),
            full.error or "",
        ),
    ]


def memory_targets(figs: dict[str, Figure], big: Sizes) -> list[Row]:
    """Peak RSS of the first full sync, and how it grows with the data."""
    full, small_full = figs["full"], figs["small_full"]
    growth = _ratio(full.rss, small_full.rss)
    return [
        (
            f"Peak RSS of a full sync at {big.contacts:,} contacts < 500 MB (the cycle alone)",
            mb(full.rss),
            _verdict(None if full.rss is None else full.rss < 500),
            "",
        ),
        (
            "Peak RSS flat as data grows (10x the contacts: <= 1.5x the RSS)",
            "-" if growth is None else f"{mb(small_full.rss)} -> {mb(full.rss)} ({growth:.2f}x)",
            _verdict(None if growth is None else growth <= 1.5),
            "",
        ),
    ]


def cycle_targets(figs: dict[str, Figure]) -> list[Row]:
    """The cycles after the first: incremental, fan-out, local edit, Dagster, publishing."""
    inc, small_inc = figs["incremental"], figs["small_incremental"]
    grow = _ratio(inc.wall, small_inc.wall)
    fl, fm, le = figs["fanout_logged"], figs["fanout_mid"], figs["local_edit"]
    return [
        (
            "Incremental 1,000-account cycle < 3 s",
            f"{_s(inc.wall)} s",
            _verdict(None if inc.wall is None else inc.wall < 3),
            inc.note,
        ),
        (
            "Incremental cycle <= 1.5x its time on a store 10x smaller (with its publish)",
            "-" if grow is None else f"{grow:.2f}x ({_s(small_inc.wall)} s on the small store)",
            _verdict(None if grow is None else grow <= 1.5),
            "",
        ),
        (
            "Fan-out big account x 5 fields < 2 s",
            f"{_s(fl.wall)} s",
            _verdict(None if fl.wall is None else fl.wall < 2),
            f"{_n(fl.records)} activity rows logged",
        ),
        (
            "Mid account x 10 fields (activity rows) < 1 s",
            f"{_s(fm.wall)} s",
            _verdict(None if fm.wall is None else fm.wall < 1),
            f"{_n(fm.records)} activity rows logged",
        ),
        (
            "Local edit on the big account < 1 s",
            f"{_s(le.wall)} s",
            _verdict(None if le.wall is None else le.wall < 1),
            f"{_n(le.records)} contacts changed",
        ),
        dagster_target(figs["dagster"]),
        *publish_targets(figs),
    ]


def dagster_target(dg_: Figure) -> Row:
    cycle_s = statistics.median([r.detail["cycle_s"] for r in dg_.runs]) if dg_.runs else None
    return (
        "No-change cycle through Dagster: report it",
        f"{_s(dg_.wall)} s total, {_s(cycle_s)} s cycle",
        "reported" if dg_.ok else "not measured",
        "",
    )


def _publish_how(fig: Figure, file_mb: float | None) -> str:
    """How each measured publish made its file: a new copy, or the spare rewritten in place."""
    if file_mb is None:
        return ""
    how = [
        f"spare, {r.detail.get('publish_written_mb', 0):,.0f} MB written"
        if r.detail.get("publish_reused_spare")
        else "new copy"
        for r in fig.runs
        if "publish_s" in r.detail
    ]
    return f"{file_mb:,.0f} MB file; per run: {'; '.join(how)}"


def publish_targets(figs: dict[str, Figure]) -> list[Row]:
    """Publishing for readers (publish.py): its cost beside the cycle it follows, the cycle's
    growth without it, and that a cycle that changed nothing copies nothing."""
    inc, small_inc, dg_ = figs["incremental"], figs["small_incremental"], figs["dagster"]

    def median(fig: Figure, key: str) -> float | None:
        values = [r.detail[key] for r in fig.runs if key in r.detail]
        return statistics.median(values) if values else None

    def cycle_only(fig: Figure) -> float | None:
        values = [r.wall_s - r.detail["publish_s"] for r in fig.runs if "publish_s" in r.detail]
        return statistics.median(values) if values else None

    pub, file_mb = median(inc, "publish_s"), median(inc, "published_mb")
    grow = _ratio(cycle_only(inc), cycle_only(small_inc))
    copied = sum(1 for r in dg_.runs if r.detail.get("published"))
    return [
        (
            "Publish after the incremental cycle <= 0.5 s (median)",
            f"{_s(pub)} s after a {_s(cycle_only(inc))} s cycle",
            _verdict(None if pub is None else pub <= 0.5),
            _publish_how(inc, file_mb),
        ),
        (
            "Incremental cycle without its publish <= 1.5x on a store 10x smaller",
            "-" if grow is None else f"{grow:.2f}x ({_s(cycle_only(small_inc))} s small)",
            _verdict(None if grow is None else grow <= 1.5),
            "the row above it includes the publish, which grows with the file",
        ),
        (
            "A cycle that changed nothing copies nothing",
            f"copied in {copied} of {len(dg_.runs)} no-change runs",
            _verdict(None if not dg_.runs else copied == 0),
            "",
        ),
    ]


def render(
    args: argparse.Namespace, out: dict[str, Any], started: datetime, elapsed_s: float
) -> str:
    """RESULTS.md: a preamble, then SECTIONS in order."""
    figs: dict[str, Figure] = out["figures"]
    meta = out["meta"]
    bodies = (
        machine_section(figs),
        data_section(meta),
        figures_section(figs),
        ratios_section(figs),
        targets_section(figs, meta["sizes"]["big"]),
        notes_section(figs),
        peer_section(figs),
        runs_section(figs),
    )
    lines = ["# dynsync benchmark results", "", _preamble(args, started, elapsed_s)]
    for heading, body in zip(SECTIONS, bodies, strict=True):
        lines += ["", heading, "", *body]
    return "\n".join(lines) + "\n"


def _preamble(args: argparse.Namespace, started: datetime, elapsed_s: float) -> str:
    return (
        f"Generated by `{_command(args)}` on {started:%Y-%m-%d %H:%M} UTC "
        f"(took {elapsed_s / 60:.1f} min). Each figure is the median of {args.repeat} run(s); "
        "wall seconds are measured inside a child process around the operation (interpreter "
        "start and imports excluded), peak RSS is that child's (os.wait4, through a launcher: "
        "see Notes), except for the "
        "figures marked *whole process*, which time the process from spawn to exit (see Notes). "
        "The simulator runs in "
        "its own process on the same machine and competes for the same cores (each run's details "
        "give the CPU seconds it used meanwhile, `sim_cpu_s`). The small store is measured "
        "first and the dlt peers last, after every dynsync figure."
    )


def machine_section(figs: dict[str, Figure]) -> list[str]:
    """The machine, the versions, and how loaded the machine was while measuring."""
    m, v = machine(), versions()
    lines = [
        f"- cores: {m['cores']}; memory: {m['memory']}; CPU: {m['cpu']}; {m['os']}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
    ]
    loads = [r.detail["load_1m"] for f in figs.values() for r in f.runs if "load_1m" in r.detail]
    if loads:
        busy = max(loads) > float(m["cores"] or 1) + 0.5
        lines.append(
            f"- 1-minute load average after each measured run: {min(loads):.1f} to "
            f"{max(loads):.1f} (median {statistics.median(loads):.1f}) on {m['cores']} cores"
            + (
                "; other processes shared the machine during this run, so the figures are "
                "pessimistic and noisy"
                if busy
                else ""
            )
        )
    return lines


def data_section(meta: dict[str, Any]) -> list[str]:
    """The two stores, the fields, and each simulator's start-up."""
    big: Sizes = meta["sizes"]["big"]
    small: Sizes = meta["sizes"]["small"]
    found = meta.get("sized_found")
    lines = [
        f"- full store: {big.label()}; sized accounts {', '.join(f'{n:,}' for n in big.sized)} "
        "contacts (the big and the mid account)"
        + (f"; found in the store: {', '.join(f'{n:,}' for n in found)}" if found else ""),
        f"- small store (incremental comparison, RSS growth): {small.label()}; sized accounts "
        f"{', '.join(f'{n:,}' for n in small.sized) or 'none'}",
        f"- fields: `{CONFIG.name}` (account fields: "
        f"{', '.join(meta.get('plan', {}).get('account_fields', [])) or '?'}); "
        f"incremental changes {', '.join(INCREMENTAL_FIELDS)}; the big-account fan-out changes "
        f"{', '.join(FANOUT_FIELDS)}",
    ]
    for label, s in meta["sim"].items():
        lines.append(
            f"- simulator ({label}): generated and listening in {s['startup_s']:.1f} s, "
            f"RSS {mb(s.get('rss_mb'))} at start, {mb(s.get('rss_end_mb'))} at the end"
        )
    return lines


def figures_section(figs: dict[str, Figure]) -> list[str]:
    return [
        "| figure | wall s | records | records/s | peak RSS | notes |",
        "|---|---:|---:|---:|---:|---|",
        *(_figure_row(fig) for fig in figs.values()),
    ]


def ratios_section(figs: dict[str, Figure]) -> list[str]:
    full, ceil, peer, peer_default = (
        figs["full"],
        figs["ceiling"],
        figs["peer"],
        figs["peer_default"],
    )
    lines = [
        f"- ours / ceiling (records/s): {_fmt_ratio(_ratio(full.rate, ceil.rate))}",
        "- ours / dlt with the parquet loader (records/s, full store): "
        f"{_fmt_ratio(_ratio(full.rate, peer.rate))}" + ("" if peer.ok else f" ({peer.error})"),
        "- ours / dlt with default settings (records/s, full store): "
        f"{_fmt_ratio(_ratio(full.rate, peer_default.rate))}"
        + ("" if peer_default.ok else f" ({peer_default.error})"),
        f"- dlt (parquet) / ceiling (records/s): {_fmt_ratio(_ratio(peer.rate, ceil.rate))}",
        "- incremental, full store / 10x smaller store (wall): "
        f"{_fmt_ratio(_ratio(figs['incremental'].wall, figs['small_incremental'].wall))}",
        "- full sync peak RSS, full store / 10x smaller store: "
        f"{_fmt_ratio(_ratio(full.rss, figs['small_full'].rss))}",
    ]
    dg_ = figs["dagster"]
    if dg_.runs:
        cyc = statistics.median(r.detail["cycle_s"] for r in dg_.runs)
        load = statistics.median(r.detail["load_definitions_s"] for r in dg_.runs)
        lines.append(
            f"- no-change cycle through Dagster: {_s(dg_.wall)} s from launch to success, "
            f"of which {_s(cyc)} s is the cycle itself (sync_runs started..finished), "
            f"{_s(dg_.wall - cyc)} s Dagster; loading the definitions took a further "
            f"{_s(load)} s"
        )
    return lines


def targets_section(figs: dict[str, Figure], big: Sizes) -> list[str]:
    return [
        "Targets are set for a 2-core machine at 100,000 accounts / 1,000,000 contacts"
        + (
            ""
            if big.contacts >= 1_000_000
            else f"; this run used {big.label()}, so the verdicts below are not a verdict on the "
            "targets"
        )
        + ".",
        "",
        "| target | measured | verdict | note |",
        "|---|---|---|---|",
        *(_table_row(row) for row in targets(figs, big)),
    ]


def _cpu(fig: Figure) -> float | None:
    return fig.median("cpu_s")


def _detail(fig: Figure, key: str) -> float | None:
    values = [r.detail[key] for r in fig.runs if key in r.detail]
    return statistics.median(values) if values else None


def notes_section(figs: dict[str, Figure]) -> list[str]:
    """What the whole-process figures measure, and why they differ from the inner ones."""
    ceil, full = figs["ceiling"], figs["full"]
    ceil_p, full_p, new = figs["ceiling_process"], figs["full_process"], figs["new_instance"]
    cycle_s = _detail(full_p, "cycle_s")
    lines = [
        "- *Whole process* figures run what a user runs and time it from spawn to exit: "
        "`dynsync sync` (the entry point `uv run dynsync sync` execs) with the simulator's "
        "DYNAMICS_* settings, DYNSYNC_DUCKDB_PATH a new file and DAGSTER_HOME a new directory, "
        "so every run is a first sync on a new Dagster instance; the bare loop's is the same "
        "child as its row above, timed from spawn to exit (interpreter start, msal, requests, "
        "orjson, the token). Peak RSS is os.wait4's ru_maxrss: the largest single process of "
        "the tree, which here is the command's own process (it runs the Dagster job in "
        "process; the simulator is not its child).",
        "- Every measured process is started by a 10 MB launcher that reads its rusage: started "
        "straight from the benchmark's own process, a child's ru_maxrss began at that "
        "process's peak (Python spawns with vfork, and the kernel carries the borrowed "
        "memory's high-water mark into the child at exec), so files before this one may show "
        "the benchmark's size, not the child's, for the figures below about 200 MB (the bare "
        "loop's 160 MB, the local edit's 212 MB).",
        f"- A fair first sync: the new instance's daily partitions start {PARTITION_DAYS} days "
        "ago (DYNSYNC_PARTITION_START). With the default start (2025-01-01) the first run of "
        "a new instance also records every partition since then (about 3,500 events), a "
        "one-off cost of the instance that does not grow with the data: "
        + (
            f"{_s(new.wall)} s and {mb(new.rss)} for the store 10x smaller "
            f"({_s(_detail(new, 'cycle_s'))} s of it the cycle), its own row above."
            if new.ok
            else f"not measured ({new.error})."
        ),
    ]
    if full_p.ok and full.ok and ceil.ok and ceil_p.ok:
        cpu_share = _ratio(_cpu(ceil_p), _cpu(full_p))
        bound = None if cpu_share is None else 2 * cpu_share
        lines += [
            f"- Whole process against the cycle alone: {_s(full_p.wall)} s against "
            f"{_s(full.wall)} s ({_s(cycle_s)} s of the process is the cycle's sync_runs row: "
            f"{_s(full_p.wall - (cycle_s or 0))} s are interpreter start, imports, loading the "
            "definitions, opening the instance and Dagster's run bookkeeping, a fixed cost that "
            f"the bare loop pays {_s(ceil_p.wall - ceil.wall)} s of). Records/s against the bare "
            f"loop: {_fmt_ratio(_ratio(full.rate, ceil.rate))} for the cycle alone, "
            f"{_fmt_ratio(_ratio(full_p.rate, ceil_p.rate))} for the whole processes. Peak RSS: "
            f"{mb(full.rss)} for the cycle alone, {mb(full_p.rss)} for `dynsync sync` (Dagster, "
            "its instance and the definitions live in the same process as the cycle).",
            f"- CPU seconds (user + system, whole process): bare loop {_s(_cpu(ceil_p))}, the "
            f"cycle's child {_s(_cpu(full))}, `dynsync sync` {_s(_cpu(full_p))}; the simulator "
            f"used {_s(_detail(ceil, 'sim_cpu_s'))} s serving the bare loop. A server that "
            "costs less per page than this simulator (which shares the 2 cores) speeds up the "
            "bare loop, which waits on the server, more than the sync, which is bound by its own "
            "CPU (decode, stage, merge). With a server that cost nothing, the bare loop would "
            "take its CPU seconds (one thread) and the sync at least half of its own (two "
            f"cores): a ratio of at most {_fmt_ratio(bound)} for the whole processes.",
        ]
    lines += [
        "- Where a whole process's fixed seconds go (cProfile of `dynsync sync` on a 2,200-row "
        "org): about a third imports and loading the definitions, most of the rest Dagster's "
        "SQLite event log, which opens a connection and commits for each event. A full read "
        "logs one materialization per table per daily partition since the partition start "
        "(defs/coverage.py: 5 tables x 14 days = 70 events here, about 3,520 from 2025-01-01), "
        "so on a busy disk the bookkeeping, not the data, sets the time of a small first sync.",
        "- Why issue 16's independent measurement said 539 MB and 0.64x where an earlier "
        "RESULTS.md said 465 MB and 0.81x: it measured the whole `dynsync sync` process, which "
        "holds Dagster, its instance and the definitions beside the cycle (about 85 MB more: "
        "551 MB against 465 MB for the cycle alone at 1M contacts, before pandas left the sync "
        "and DuckDB's budget went from 256MB to 160MB) and adds their seconds, and a server "
        "cheaper per page than the simulator "
        "moves the bare loop's rate more than ours (the CPU line above). This file reports both "
        "and holds the whole process to the same targets.",
    ]
    return lines


def peer_section(figs: dict[str, Figure]) -> list[str]:
    peer, peer_default = figs["peer"], figs["peer_default"]
    lines = []
    if peer.ok or peer_default.ok:
        lines += [PEER_DESCRIPTION, ""]
    for fig in (peer, peer_default):
        if fig.ok:
            d = fig.runs[-1].detail
            lines.append(
                f"- {fig.title}: median {_s(fig.wall)} s for {_n(fig.records)} rows = "
                f"{_n(fig.rate)} rows/s, peak RSS {mb(fig.rss)}; loader file format "
                f"{d.get('loader_file_format')}; rows stored {d.get('stored')}; "
                f"{len(fig.runs)} run(s)"
            )
        else:
            lines.append(f"- {fig.title}: Not measured: {fig.error}.")
    return lines


PEER_DESCRIPTION = (
    "A plain dlt pipeline: one `dlt.resource` per entity set following @odata.nextLink "
    "with an msal bearer token (same $select and Prefer header as dynsync, pages parsed "
    'with orjson), `write_disposition="merge"` on the primary key, DuckDB '
    "destination. It only loads: no account fields on contacts, no activity log, no "
    "rules. Two variants on the full store: the plain pipeline with dlt's defaults "
    "(loader file format insert_values for DuckDB), which is what the target compares "
    "against, and the same pipeline tuned with one argument, "
    '`loader_file_format="parquet"`, which is an order of magnitude faster and is '
    "reported beside it. The plain one runs `--peer-default-repeat` times (default "
    "once: it takes minutes and gigabytes)."
)


def runs_section(figs: dict[str, Figure]) -> list[str]:
    """Every run of every figure with its details, and the figures that failed."""
    lines = [
        "| figure | run | wall s | process s | records | peak RSS | detail |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for fig in figs.values():
        for i, r in enumerate(fig.runs, 1):
            detail = json.dumps({**r.detail, "cpu_s": r.cpu_s}, default=str)
            lines.append(
                _table_row(
                    (
                        fig.title,
                        str(i),
                        _s(r.wall_s),
                        _s(r.process_s),
                        f"{r.records:,}",
                        mb(r.rss_mb),
                        detail,
                    )
                )
            )
        if fig.error and not fig.error.startswith("skipped"):
            lines.append(
                f"| {_cell(fig.title)} | - | - | - | - | - | {_cell('FAILED: ' + fig.error)} |"
            )
    return lines


# A section another script writes into RESULTS.md (first_copy.py, postgres_publish.py).
_OTHERS = re.compile(r"^<!-- ([\w-]+):start -->$.*?^<!-- \1:end -->$", re.M | re.S)


def keep_other_sections(previous: str | None, ours: str) -> str:
    """`ours` followed by every marked section of the file it replaces, in the order found:
    this script writes only its own part of RESULTS.md."""
    kept = [m.group(0) for m in _OTHERS.finditer(previous or "")]
    return ours.rstrip("\n") + "".join(f"\n\n{block}" for block in kept) + "\n"


def _table_row(cells: tuple[str, ...]) -> str:
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _figure_row(fig: Figure) -> str:
    if not fig.runs:
        return f"| {_cell(fig.title)} | - | - | - | - | {_cell(fig.error or 'not run')} |"
    note = fig.note
    if fig.error:
        note = (note + "; " if note else "") + "FAILED after some runs: " + fig.error
    return _table_row(
        (fig.title, _s(fig.wall), f"{_n(fig.records)} {fig.unit}", _n(fig.rate), mb(fig.rss), note)
    )


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " <br> ")


def _command(args: argparse.Namespace) -> str:
    return "python benchmarks/run.py " + " ".join(args.argv)
