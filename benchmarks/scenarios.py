"""What the benchmark measures: the stores, the changes made in Dynamics, and every figure.

The parent side: it starts a simulator per store, changes records through the simulator's
admin API and runs each measured operation (tasks.py) in a child process (harness.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from harness import REPO, Bench, ChildFailed, Figure, Run, SimProcess, mb, one_line_error

CONFIG = REPO / "dynsync.yaml"  # the shipped field selection: 10 readable account fields
DAGSTER_YAML = REPO / "dagster_home" / "dagster.yaml"
DEFAULT_LIMIT = 5000
# The command a user runs (`uv run dynsync sync` execs this entry point of the environment).
DYNSYNC = Path(sys.executable).with_name("dynsync")
# A whole-process first sync runs on a new Dagster instance whose daily partitions start this
# many days ago: its first run records every partition since the start (about 3,500 events
# from the default 2025-01-01), a one-off cost of the instance, measured on its own.
PARTITION_DAYS = 14

# Account fields every scenario may change, with a value that differs for each counter k.
_FIELD_VALUES: dict[str, Callable[[int], Any]] = {
    "name": lambda k: f"Benchmark Account {k}",
    "accountnumber": lambda k: f"BENCH-{k:06d}",
    "industrycode": lambda k: 1 + k % 33,
    "revenue": lambda k: 1000.0 * k + 7,
    "numberofemployees": lambda k: 10_000 + k,
    "address1_city": lambda k: f"Bench City {k}",
    "address1_country": lambda k: f"Bench Country {k}",
    "telephone1": lambda k: f"+31 20 555 {k % 10000:04d}",
    "websiteurl": lambda k: f"https://bench{k}.example.com",
    "creditlimit": lambda k: 500.0 * k + 3,
}
INCREMENTAL_FIELDS = ("name", "telephone1")
FANOUT_FIELDS = ("name", "accountnumber", "industrycode", "revenue", "numberofemployees")


@dataclasses.dataclass
class Sizes:
    accounts: int
    contacts: int
    big: int
    mid: int

    @property
    def sized(self) -> tuple[int, ...]:
        return tuple(n for n in (self.big, self.mid) if n > 0)

    def label(self) -> str:
        return f"{self.accounts:,} accounts / {self.contacts:,} contacts"

    def simulator_args(self, seed: int) -> list[str]:
        return [
            "--accounts",
            str(self.accounts),
            "--contacts",
            str(self.contacts),
            "--sized-accounts",
            ",".join(map(str, self.sized)),
            "--seed",
            str(seed),
        ]


class Counter:
    """Distinct values for every change the benchmark makes in Dynamics."""

    def __init__(self) -> None:
        self.k = 0

    def values(
        self, fields: tuple[str, ...], current: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """New values; with `current` (the record as it is), none equals what is there now."""
        self.k += 1
        out = {f: _FIELD_VALUES[f](self.k) for f in fields}
        for f in fields:
            if current and _same(current.get(f), out[f]):
                out[f] = _FIELD_VALUES[f](self.k + 1)
        return out


def _same(a: Any, b: Any) -> bool:
    try:
        return a == b or float(a) == float(b)
    except (TypeError, ValueError):
        return False


def read_plan(env: dict[str, str]) -> dict[str, Any]:
    """dynsync's $select per entity and whether it reads with change tracking (not measured)."""
    from dynsync_dagster.dynamics.client import DynamicsClient
    from dynsync_dagster.dynamics.fields import ENTITY_SET, PRIMARY_KEY, resolve_fields
    from dynsync_dagster.settings import ConnectionSettings, SyncSettings
    from dynsync_dagster.sync.stage import ANNOTATIONS  # the bare loop asks for what we ask for

    sync = SyncSettings.load(CONFIG)
    with DynamicsClient(ConnectionSettings.from_env(env)) as client:
        plan = resolve_fields(client, sync.account_fields, sync.contact_fields)
    # Contacts first, as the cycle reads them.
    return {
        "reads": [
            (ENTITY_SET[e], plan.select(e), bool(plan.change_tracking[e]), PRIMARY_KEY[e])
            for e in ("contact", "account")
        ],
        "account_fields": [f.name for f in plan.synced("account")],
        "annotations": ANNOTATIONS,
    }


def store_query(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    import duckdb

    with contextlib.closing(duckdb.connect(str(db), read_only=True)) as con:
        return con.execute(sql, params or []).fetchall()


class Scenarios:
    """Each figure's measurement: what changes in Dynamics before it, and the child it runs."""

    def __init__(self, args: argparse.Namespace, bench: Bench) -> None:
        self.args = args
        self.bench = bench
        self.counter = Counter()

    def cycle_payload(self, db: Path, limit: int = DEFAULT_LIMIT) -> dict[str, Any]:
        return {"db": str(db), "config": str(CONFIG), "limit": limit}

    def full_syncs(self, sim: SimProcess, db_dir: Path, fig: Figure) -> Path:
        """`repeat` first full cycles, each into a new store; the last store is kept."""
        db = db_dir / "dynsync.duckdb"

        def once(i: int) -> Run:
            if db_dir.exists():
                shutil.rmtree(db_dir)
            db_dir.mkdir(parents=True)
            return self.bench.child("cycle", self.cycle_payload(db), sim.env, sim)

        self.bench.measure(fig, self.args.repeat, once)
        return db

    def sync_command(
        self, sim: SimProcess, db_dir: Path, fig: Figure, repeat: int, default_start: bool
    ) -> None:
        """`dynsync sync` as a user runs it, from spawn to exit, each time into a new store on a
        new Dagster instance (DAGSTER_HOME a fresh dir, which the command fills with the
        project's dagster.yaml). Partitions start PARTITION_DAYS ago unless `default_start`."""

        def once(i: int) -> Run:
            if db_dir.exists():
                shutil.rmtree(db_dir)
            db_dir.mkdir(parents=True)
            db = db_dir / "dynsync.duckdb"
            env = {
                **sim.env,
                "DYNSYNC_DUCKDB_PATH": str(db),
                "DYNSYNC_CONFIG": str(CONFIG),
                "DAGSTER_HOME": str(db_dir / "dagster_home"),
            }
            if not default_start:
                start = datetime.now(UTC) - timedelta(days=PARTITION_DAYS)
                env["DYNSYNC_PARTITION_START"] = start.strftime("%Y-%m-%d")
            run = self.bench.command("dynsync-sync", [str(DYNSYNC), "sync"], env, sim)
            ((stored, cycle_s),) = store_query(
                db,
                "SELECT (SELECT count(*) FROM accounts) + (SELECT count(*) FROM contacts), "
                "(SELECT max(epoch(finished_at) - epoch(started_at)) FROM sync_runs)",
            )
            run.records = int(stored)
            run.detail["cycle_s"] = round(float(cycle_s), 3)
            run.detail["partition_start"] = env.get("DYNSYNC_PARTITION_START", "default")
            return run

        self.bench.measure(fig, repeat, once)

    def change_accounts(self, sim: SimProcess, ids: list[str], fields: tuple[str, ...]) -> float:
        t0 = time.perf_counter()
        for aid in ids:
            sim.admin.call("update_account", account_id=aid, **self.counter.values(fields))
        return time.perf_counter() - t0

    def incremental(self, sim: SimProcess, db: Path, fig: Figure) -> None:
        n = self.args.changed_accounts
        pool = [
            r[0]
            for r in store_query(
                db,
                "SELECT CAST(accountid AS VARCHAR) FROM contacts WHERE NOT is_deleted "
                "AND accountid IS NOT NULL GROUP BY accountid HAVING count(*) BETWEEN 8 AND 12 "
                "ORDER BY hash(accountid)",
            )
        ]
        per_run = min(n, len(pool) // max(1, self.args.repeat))
        if per_run < n:
            fig.note = (
                f"only {len(pool):,} accounts have 8-12 contacts at this size: "
                f"{per_run:,} changed per run instead of {n:,}"
            )
        if per_run == 0:
            fig.error = "no account with 8-12 contacts to change"
            return

        def once(i: int) -> Run:
            ids = pool[i * per_run : (i + 1) * per_run]
            mutate_s = self.change_accounts(sim, ids, INCREMENTAL_FIELDS)
            run = self.bench.child("cycle", self.cycle_payload(db), sim.env, sim)
            run.records = run.detail["rows_read"].get("account", 0)
            run.detail["changed_accounts"] = len(ids)
            run.detail["admin_calls_s"] = round(mutate_s, 2)
            return run

        self.bench.measure(fig, self.args.repeat, once)

    def fanout(
        self,
        sim: SimProcess,
        db: Path,
        account_id: str,
        fields: tuple[str, ...],
        limit: int,
        fig: Figure,
        count: str = "activities_logged",
    ) -> None:
        def once(i: int) -> Run:
            current = sim.admin.call("get_account", account_id=account_id)
            values = self.counter.values(fields, current)
            sim.admin.call("update_account", account_id=account_id, **values)
            run = self.bench.child("cycle", self.cycle_payload(db, limit), sim.env, sim)
            run.records = run.detail["counts"][count]
            return run

        self.bench.measure(fig, self.args.repeat, once)

    def local_edit(self, db: Path, contact_id: str, fig: Figure) -> None:
        def once(i: int) -> Run:
            payload = {
                "db": str(db),
                "contact_id": contact_id,
                "field": "name",
                "value": f"Local edit {self.counter.values(('name',))['name']}",
            }
            return self.bench.child("local_edit", payload, {})

        self.bench.measure(fig, self.args.repeat, once)

    def dagster(self, sim: SimProcess, db: Path, fig: Figure) -> None:
        home = self.bench.work / "dagster_home"
        home.mkdir(exist_ok=True)
        shutil.copy(DAGSTER_YAML, home / "dagster.yaml")
        env = {
            **sim.env,
            "DYNSYNC_DUCKDB_PATH": str(db),
            "DYNSYNC_CONFIG": str(CONFIG),
            "DAGSTER_HOME": str(home),
        }

        def once(i: int) -> Run:
            return self.bench.child("dagster", {"db": str(db)}, env, sim)

        try:  # the first run creates the instance's storage: not what a scheduled tick costs
            once(-1)
        except ChildFailed as exc:
            fig.error = one_line_error(exc)
            print(f"  {fig.title}: FAILED\n{exc}", flush=True)
            return
        self.bench.measure(fig, self.args.repeat, once)

    def ceiling(self, sim: SimProcess, plan: dict[str, Any], fig: Figure) -> None:
        reads = [(s, sel, track) for s, sel, track, _key in plan["reads"]]
        self.bench.measure(
            fig,
            self.args.repeat,
            lambda i: self.bench.child(
                "ceiling", {"reads": reads, "annotations": plan["annotations"]}, sim.env, sim
            ),
        )

    def peer(
        self,
        sim: SimProcess,
        plan: dict[str, Any],
        fig: Figure,
        loader_file_format: str | None,
        repeat: int,
    ) -> None:
        def once(i: int) -> Run:
            where = self.bench.work / "dlt"
            if where.exists():
                shutil.rmtree(where)
            where.mkdir()
            payload = {
                "reads": plan["reads"],
                "db": str(where / "peer.duckdb"),
                "pipelines_dir": str(where / "pipelines"),
                "loader_file_format": loader_file_format,
                "annotations": plan["annotations"],
            }
            return self.bench.child("dlt", payload, sim.env, sim)

        self.bench.measure(fig, repeat, once)

    def warm_simulator(self, sim: SimProcess, plan: dict[str, Any]) -> float:
        """One unmeasured bare read of everything: the simulator caches each row's JSON, and
        every figure should meet the same (warm) server."""
        reads = [(s, sel, track) for s, sel, track, _key in plan["reads"]]
        payload = {"reads": reads, "annotations": plan["annotations"]}
        return self.bench.child("ceiling", payload, sim.env).wall_s


def sized_accounts(db: Path, big: int, mid: int) -> list[tuple[str, int, str]]:
    """(accountid, contacts, one of its contact ids) of the accounts closest in size to the big
    and the mid account, in that order."""
    found = store_query(
        db,
        "SELECT CAST(accountid AS VARCHAR), count(*) AS n, CAST(min(contactid) AS VARCHAR) "
        "FROM contacts WHERE NOT is_deleted AND accountid IS NOT NULL GROUP BY accountid",
    )
    out: list[tuple[str, int, str]] = []
    for want in (big, mid):
        rest = [r for r in found if r[0] not in {o[0] for o in out}]
        if rest:
            a, n, c = min(rest, key=lambda r: (abs(r[1] - want), r[0]))
            out.append((a, int(n), c))
    return out


# (key, title, unit) of every figure, in the order RESULTS.md lists them.
FIGURES = (
    ("ceiling", "Simulator bare loop (ceiling)", "rows"),
    ("full", "First full sync", "rows"),
    ("ceiling_process", "Simulator bare loop, whole process", "rows"),
    ("full_process", "First full sync, whole process (`dynsync sync`)", "rows"),
    ("peer", "dlt peer (parquet loader), full load", "rows"),
    ("incremental", "Incremental cycle, 1,000 accounts changed", "accounts read"),
    (
        "fanout_logged",
        "Fan-out: big account x 5 fields, limit raised (logged)",
        "activity rows",
    ),
    (
        "fanout_suppressed",
        "Fan-out: big account x 5 fields, default limit (suppressed)",
        "rows suppressed",
    ),
    ("fanout_mid", "Fan-out: mid account x 10 fields", "activity rows"),
    ("local_edit", "Local edit on the big account", "contacts changed"),
    ("dagster", "No-change cycle through Dagster", "rows read"),
    ("small_full", "First full sync, store 10x smaller", "rows"),
    (
        "small_incremental",
        "Incremental cycle, 1,000 accounts, store 10x smaller",
        "accounts read",
    ),
    (
        "new_instance",
        "`dynsync sync` on a new Dagster instance, default partitions, store 10x smaller",
        "rows",
    ),
    ("peer_default", "dlt peer (default settings), full load", "rows"),
)
SMALL_STORE_FIGURES = ("small_full", "small_incremental", "new_instance")


def run_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Every figure: {"figures": {key: Figure}, "meta": {...}}."""
    bench = Bench(work, args.child_timeout)
    sc = Scenarios(args, bench)
    big, small = store_sizes(args)
    figs = {key: Figure(key, title, unit) for key, title, unit in FIGURES}
    meta: dict[str, Any] = {"sizes": {"big": big, "small": small}, "sim": {}}
    print("== warming the bytecode cache (not measured)", flush=True)
    meta["warmup_s"] = bench.child("warmup", {"dir": str(work / "warmup")}, {}).process_s
    peer_reason = peer_skipped(args)
    if peer_reason:
        figs["peer"].error = figs["peer_default"].error = peer_reason
    # The small store first and the dlt peers last: the plain dlt load runs for minutes at
    # about 7 GB and writes gigabytes, and cycles measured right after it were up to 50%
    # slower (0.82, 0.70, 0.54, 0.63 s against 0.54, 0.47, 0.59, 0.58 s before it). Every
    # dynsync figure, on either store, should meet the same quiet machine.
    for label, sizes in (("small", small), ("big", big)):
        on_simulator(sc, label, sizes, figs, meta, with_peer=peer_reason is None)
    return {"figures": figs, "meta": meta}


def store_sizes(args: argparse.Namespace) -> tuple[Sizes, Sizes]:
    """The full store and the one ten times smaller."""
    big = Sizes(args.accounts, args.contacts, args.big_account, args.mid_account)
    small = Sizes(
        max(1, args.accounts // 10),
        max(1, args.contacts // 10),
        args.big_account // 10,
        args.mid_account // 10,
    )
    return big, small


def peer_skipped(args: argparse.Namespace) -> str | None:
    """Why the dlt peers are not measured, or None when they are."""
    if args.no_peer:
        return "skipped: --no-peer"
    if importlib.util.find_spec("dlt") is None:
        return (
            "skipped: dlt is not importable in this environment "
            "(install the bench group: `uv sync --group bench`)"
        )
    return None


def on_simulator(
    sc: Scenarios,
    label: str,
    sizes: Sizes,
    figs: dict[str, Figure],
    meta: dict[str, Any],
    with_peer: bool,
) -> None:
    """Start a simulator of `sizes` and measure the figures of that store against it."""
    print(f"== simulator {label}: {sizes.label()} (sized accounts {sizes.sized})", flush=True)
    sim = sc.bench.simulator(label, sizes.simulator_args(sc.args.seed))
    try:
        sim.start()
    except Exception as exc:
        mine = [k for k in figs if (k in SMALL_STORE_FIGURES) == (label == "small")]
        for key in mine:
            if figs[key].error is None:
                figs[key].error = f"simulator did not start: {one_line_error(exc)}"
        print(f"simulator failed to start: {exc}", flush=True)
        return
    try:
        print(
            f"   started in {sim.startup_s:.1f}s at {sim.org_url}, RSS {mb(sim.rss_mb())}",
            flush=True,
        )
        meta["sim"][label] = {"startup_s": sim.startup_s, "rss_mb": sim.rss_mb()}
        plan = read_plan_or_fail(sim, figs, label)
        if plan is not None:
            meta["plan"] = plan
            meta["sim"][label]["warm_read_s"] = sc.warm_simulator(sim, plan)
        if label == "big":
            run_big(sc, sim, figs, meta, plan, with_peer)
        else:
            run_small(sc, sim, figs)
        meta["sim"][label]["rss_end_mb"] = sim.rss_mb()
    finally:
        sim.stop()


def run_small(sc: Scenarios, sim: SimProcess, figs: dict[str, Figure]) -> None:
    db = sc.full_syncs(sim, sc.bench.work / "store-small", figs["small_full"])
    if figs["small_full"].ok:
        sc.incremental(sim, db, figs["small_incremental"])
    else:
        figs["small_incremental"].error = "not run: the full sync failed"
    # Once: tens of seconds of Dagster bookkeeping whatever the data size.
    if sc.args.no_new_instance:
        figs["new_instance"].error = "skipped: --no-new-instance"
        return
    where = sc.bench.work / "store-new-instance"
    sc.sync_command(sim, where, figs["new_instance"], 1, default_start=True)


def read_plan_or_fail(
    sim: SimProcess, figs: dict[str, Figure], label: str
) -> dict[str, Any] | None:
    try:
        return read_plan(sim.env)
    except Exception as exc:
        keys = ("ceiling", "peer", "peer_default") if label == "big" else ()
        for key in keys:
            figs[key].error = figs[key].error or f"could not read the field plan: {exc}"
        traceback.print_exc()
        return None


def run_big(
    sc: Scenarios,
    sim: SimProcess,
    figs: dict[str, Figure],
    meta: dict[str, Any],
    plan: dict[str, Any] | None,
    with_peer: bool,
) -> None:
    if plan is not None:
        sc.ceiling(sim, plan, figs["ceiling"])
        whole_process(figs["ceiling"], figs["ceiling_process"])
    db = sc.full_syncs(sim, sc.bench.work / "store-big", figs["full"])
    where = sc.bench.work / "store-sync-command"
    sc.sync_command(sim, where, figs["full_process"], sc.args.repeat, default_start=False)
    shutil.rmtree(where, ignore_errors=True)  # a second 1M-contact store: disk, not a figure
    run_big_cycles(sc, sim, figs, meta, plan, db)
    if plan is not None and with_peer:
        sc.peer(sim, plan, figs["peer"], "parquet", sc.args.peer_repeat)
        sc.peer(sim, plan, figs["peer_default"], None, sc.args.peer_default_repeat)


def whole_process(fig: Figure, into: Figure) -> None:
    """`fig`'s runs timed from spawn to exit (interpreter start and imports included)."""
    into.error = fig.error
    into.runs = [dataclasses.replace(r, wall_s=r.process_s) for r in fig.runs]


def run_big_cycles(
    sc: Scenarios,
    sim: SimProcess,
    figs: dict[str, Figure],
    meta: dict[str, Any],
    plan: dict[str, Any] | None,
    db: Path,
) -> None:
    """Every figure on the full store after its first full sync."""
    dependent = (
        "incremental",
        "fanout_logged",
        "fanout_suppressed",
        "fanout_mid",
        "local_edit",
        "dagster",
    )
    if not figs["full"].ok:
        for key in dependent:
            figs[key].error = "not run: the first full sync failed"
        return
    sc.incremental(sim, db, figs["incremental"])
    sized = sized_accounts(db, sc.args.big_account, sc.args.mid_account)
    meta["sized_found"] = [n for _a, n, _c in sized]
    if len(sized) < 2:
        for key in ("fanout_logged", "fanout_suppressed", "fanout_mid", "local_edit"):
            figs[key].error = "not run: the store has fewer than two accounts with contacts"
    else:
        (big_id, big_n, big_contact), (mid_id, _mid_n, _c) = sized
        fields = tuple(f for f in _FIELD_VALUES if f in plan["account_fields"]) if plan else ()
        raised = max(2 * big_n, DEFAULT_LIMIT + 1)
        figs["fanout_logged"].note = f"activity_log_contact_limit = {raised:,}"
        sc.fanout(sim, db, big_id, FANOUT_FIELDS, raised, figs["fanout_logged"])
        figs["fanout_suppressed"].note = f"activity_log_contact_limit = {DEFAULT_LIMIT:,}"
        sc.fanout(
            sim,
            db,
            big_id,
            FANOUT_FIELDS,
            DEFAULT_LIMIT,
            figs["fanout_suppressed"],
            count="activities_suppressed",
        )
        figs["fanout_mid"].note = f"{len(fields)} synced account fields changed"
        sc.fanout(sim, db, mid_id, fields, DEFAULT_LIMIT, figs["fanout_mid"])
        sc.local_edit(db, big_contact, figs["local_edit"])
    sc.dagster(sim, db, figs["dagster"])
