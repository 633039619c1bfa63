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
  success), and the part of it that is the cycle itself.

Every measured operation runs in a child process (this script with `--child`); its peak RSS
comes from os.wait4's rusage. Wall seconds are measured inside the child around the operation
(imports excluded); the child's whole lifetime is kept in the per-run details, with the CPU
seconds the simulator used meanwhile (`sim_cpu_s`). Nothing here is asserted: the file reports
what was measured, met or not.

Order: the small store's figures first, then the full store's, and the dlt peers last, so that
no dynsync figure is measured in the wake of the multi-gigabyte plain dlt load.

Other options: --results PATH (default benchmarks/RESULTS.md), --work-dir DIR (default a temp
dir, removed at the end unless --keep), --no-peer, --big-account N / --mid-account N (sizes of
the two sized accounts; default 100,000 and 5,000, capped for small runs), --changed-accounts N,
--child-timeout S.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
CONFIG = REPO / "dynsync.yaml"  # the shipped field selection: 10 readable account fields
DAGSTER_YAML = REPO / "dagster_home" / "dagster.yaml"
API = "/api/data/v9.2/"
PAGE_SIZE = 5000
DEFAULT_LIMIT = 5000

# The RESULTS.md headings, in order (the CI smoke test checks they are all there).
SECTIONS = (
    "## Machine",
    "## Data",
    "## Figures",
    "## Ratios",
    "## Targets",
    "## Peer (dlt)",
    "## Runs",
)

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


# ---- results --------------------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    wall_s: float
    records: int
    rss_mb: float | None
    process_s: float
    detail: dict[str, Any]


@dataclasses.dataclass
class Figure:
    key: str
    title: str
    unit: str  # what `records` counts
    runs: list[Run] = dataclasses.field(default_factory=list)
    error: str | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.runs) and self.error is None

    def median(self, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        return statistics.median(values) if values else None

    @property
    def wall(self) -> float | None:
        return self.median("wall_s")

    @property
    def rate(self) -> float | None:
        rates = [r.records / r.wall_s for r in self.runs if r.wall_s > 0]
        return statistics.median(rates) if rates else None

    @property
    def rss(self) -> float | None:
        return self.median("rss_mb")

    @property
    def records(self) -> float | None:
        return self.median("records")


class ChildFailed(RuntimeError):
    """A measured child process failed; the message carries the tail of its log."""


# ---- the simulator in its own process ---------------------------------------------------------


class SimProcess:
    """`python -m dynsync_dagster.simulator` in a child process, found via its simulator.json."""

    def __init__(
        self, state_dir: Path, accounts: int, contacts: int, sized: tuple[int, ...], seed: int
    ) -> None:
        self.state_dir = state_dir
        self.args = [
            sys.executable,
            "-m",
            "dynsync_dagster.simulator",
            "--port",
            "0",
            "--state-dir",
            str(state_dir),
            "--accounts",
            str(accounts),
            "--contacts",
            str(contacts),
            "--sized-accounts",
            ",".join(map(str, sized)),
            "--seed",
            str(seed),
        ]
        self.proc: subprocess.Popen | None = None
        self.env: dict[str, str] = {}
        self.info: dict[str, Any] = {}
        self.startup_s = 0.0
        self.admin = None

    def start(self, timeout_s: float = 1800) -> SimProcess:
        from dynsync_dagster.simulator import SimulatorAdmin

        if self.state_dir.exists():
            shutil.rmtree(self.state_dir)
        self.state_dir.mkdir(parents=True)
        info_path = self.state_dir / "simulator.json"
        self.log_path = self.state_dir.with_suffix(".log")
        started = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=_clean_env()
            )
        while not info_path.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the simulator exited with {self.proc.returncode}:\n" + _tail(self.log_path)
                )
            if time.perf_counter() - started > timeout_s:
                self.stop()
                raise RuntimeError(f"the simulator did not start within {timeout_s:.0f}s")
            time.sleep(0.2)
        time.sleep(0.1)  # written in one call, but give the writer a moment to close it
        self.startup_s = time.perf_counter() - started
        self.info = json.loads(info_path.read_text())
        self.env = _read_env_sh(self.state_dir / "env.sh")
        key = Path(self.info["admin_key_path"]).read_text().strip()
        self.admin = SimulatorAdmin(self.info["org_url"], key, self.info["ca_pem_path"])
        return self

    def rss_mb(self) -> float | None:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except (OSError, AttributeError):
            return None
        return None

    def cpu_s(self) -> float | None:
        """CPU seconds the simulator process has used so far (user + system)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, AttributeError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.admin is not None:
            self.admin.close()
            self.admin = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _read_env_sh(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.startswith("export "):
            for word in shlex.split(line[len("export ") :]):
                name, _, value = word.partition("=")
                env[name] = value
    return env


# Set by main(): where child processes keep their compiled bytecode (see _clean_env).
PYCACHE: Path | None = None


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any DYNAMICS_/DYNSYNC_ settings, plus `extra`.

    Children write and reuse bytecode under PYCACHE even where PYTHONDONTWRITEBYTECODE is set
    (it is on this machine): otherwise every child recompiles pandas, dagster and duckdb's
    helpers from source, which no installed deployment does, and a lazy import inside a
    measured operation would be timed as seconds of "sync".
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DYNAMICS_", "DYNSYNC_", "DAGSTER_HOME"))
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if PYCACHE is not None:
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env["RUNTIME__DLTHUB_TELEMETRY"] = "false"  # dlt: no network calls from the benchmark
    env.update(extra or {})
    return env


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---- measured child processes -----------------------------------------------------------------


class Bench:
    """Runs child processes and keeps their logs."""

    def __init__(self, work: Path, timeout_s: float) -> None:
        self.work = work
        self.timeout_s = timeout_s
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self._n = 0

    def child(
        self,
        task: str,
        payload: dict[str, Any],
        env: dict[str, str],
        sim: SimProcess | None = None,
    ) -> Run:
        """Run `task` in a fresh process; its result plus peak RSS (os.wait4) as a Run.

        With `sim`, the CPU seconds the simulator spent meanwhile are kept with the run: they
        show whether the simulator, not the code measured, was the busy one.
        """
        sim_cpu = sim.cpu_s() if sim is not None else None
        self._n += 1
        stem = f"{self._n:03d}-{task}"
        payload_path, out_path = self.logs / f"{stem}.in.json", self.logs / f"{stem}.out.json"
        log_path = self.logs / f"{stem}.log"
        payload_path.write_text(json.dumps(payload, default=str))
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            task,
            "--payload",
            str(payload_path),
            "--out",
            str(out_path),
        ]
        started = time.perf_counter()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=_clean_env(env)
            )
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)

        timer = threading.Timer(self.timeout_s, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        process_s = time.perf_counter() - started
        if killed.is_set():
            raise ChildFailed(f"{task}: killed after {self.timeout_s:.0f}s\n{_tail(log_path)}")
        if proc.returncode != 0 or not out_path.exists():
            raise ChildFailed(f"{task}: exit code {proc.returncode}\n{_tail(log_path)}")
        result = json.loads(out_path.read_text())
        # Other processes on the machine skew every figure: keep the load next to each run.
        result["load_1m"] = round(os.getloadavg()[0], 2)
        if sim_cpu is not None and (after := sim.cpu_s()) is not None:
            result["sim_cpu_s"] = round(after - sim_cpu, 2)
        return Run(
            wall_s=float(result.pop("wall_s")),
            records=int(result.pop("records")),
            rss_mb=usage.ru_maxrss / 1024,  # Linux: kilobytes
            process_s=process_s,
            detail=result,
        )

    def measure(self, fig: Figure, repeat: int, once: Callable[[int], Run]) -> Figure:
        """Call `once(i)` `repeat` times; a failure is recorded on the figure, not raised."""
        for i in range(repeat):
            try:
                run = once(i)
            except Exception as exc:
                fig.error = _one_line_error(exc)
                print(f"  {fig.title}: FAILED\n{exc}", flush=True)
                break
            fig.runs.append(run)
            print(
                f"  {fig.title} [{i + 1}/{repeat}]: {run.wall_s:.3f}s, {run.records:,} "
                f"{fig.unit}, peak RSS {_mb(run.rss_mb)}",
                flush=True,
            )
        return fig


def _one_line_error(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


# ---- the child side -----------------------------------------------------------------------------


def child_main(task: str, payload_path: Path, out_path: Path) -> int:
    payload = json.loads(payload_path.read_text())
    result = CHILD_TASKS[task](payload)
    out_path.write_text(json.dumps(result, default=str))
    return 0


def _token_session(env: dict[str, str]):
    """A requests session and an msal app that verify TLS against the simulator's CA.

    REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE would override a session-level verify, so msal gets a
    session with trust_env off, and our own GETs pass verify= per request.
    """
    import msal
    import requests

    ca = env["DYNAMICS_CA_BUNDLE"]
    session = requests.Session()
    session.trust_env = False
    session.verify = ca
    app = msal.ConfidentialClientApplication(
        env["DYNAMICS_CLIENT_ID"],
        client_credential=env["DYNAMICS_CLIENT_SECRET"],
        authority=f"{env['DYNAMICS_AUTHORITY_HOST']}/{env['DYNAMICS_TENANT_ID']}",
        instance_discovery=False,
        http_client=session,
    )
    scopes = [env["DYNAMICS_URL"] + "/.default"]

    def token() -> str:
        result = app.acquire_token_for_client(scopes=scopes)
        if "access_token" not in result:
            raise RuntimeError(
                f"no token: {result.get('error')}: {result.get('error_description')}"
            )
        return result["access_token"]

    return session, token, ca


def _odata_pages(
    env: dict[str, str],
    http: tuple,
    entity_set: str,
    select: list[str],
    track: bool,
    parse: Callable[[bytes], Any],
) -> Iterator[list[dict[str, Any]]]:
    """Pages of one entity set: the same $select and Prefer as dynsync's first read."""
    session, token, ca = http
    from dynsync_dagster.sync.stage import ANNOTATIONS  # the ceiling asks for what dynsync asks for

    prefer = f'odata.maxpagesize={PAGE_SIZE}, odata.include-annotations="{ANNOTATIONS}"'
    if track:
        prefer += ", odata.track-changes"
    url: str | None = f"{env['DYNAMICS_URL']}{API}{entity_set}?$select={','.join(select)}"
    while url:
        resp = session.get(
            url,
            headers={
                "Authorization": f"Bearer {token()}",
                "Accept": "application/json",
                "OData-MaxVersion": "4.0",
                "OData-Version": "4.0",
                "Prefer": prefer,
            },
            verify=ca,
            timeout=300,
        )
        resp.raise_for_status()
        body = parse(resp.content)
        yield body["value"]
        url = body.get("@odata.nextLink")


def task_ceiling(p: dict[str, Any]) -> dict[str, Any]:
    import orjson

    env = dict(os.environ)
    http = _token_session(env)
    t0 = time.perf_counter()
    rows = pages = 0
    for entity_set, select, track in p["reads"]:
        for page in _odata_pages(env, http, entity_set, select, track, orjson.loads):
            rows += len(page)
            pages += 1
    return {"wall_s": time.perf_counter() - t0, "records": rows, "pages": pages}


def task_cycle(p: dict[str, Any]) -> dict[str, Any]:
    from dynsync_dagster.settings import ConnectionSettings, SyncSettings
    from dynsync_dagster.sync.cycle import CycleOptions, run_cycle

    conn = ConnectionSettings.from_env(os.environ)
    sync = dataclasses.replace(
        SyncSettings.load(p["config"]), activity_log_contact_limit=int(p["limit"])
    )
    t0 = time.perf_counter()
    r = run_cycle(conn, sync, Path(p["db"]), CycleOptions(trigger="benchmark"))
    wall = time.perf_counter() - t0
    counts = dataclasses.asdict(r.counts)
    counts["suppressed_accounts"] = len(counts["suppressed_accounts"])
    return {
        "wall_s": wall,
        "records": sum(r.rows_read.values()),
        "rows_read": r.rows_read,
        "modes": r.modes,
        "fetch_s": round(r.fetch_s, 3),
        "write_s": round(r.write_s, 3),
        # Copying the store for readers after the commit (publish.py); 0 when not copied.
        "publish_s": round(r.publish_s, 4),
        "published_mb": round(r.published.bytes / 1e6, 1) if r.published else 0.0,
        # ... of which: the copy, the fsync, the rename; and whether the copy rewrote the spare
        # (only changed blocks written) or made a new file (publish.py)
        "publish_steps_s": (
            [r.published.copy_s, r.published.sync_s, r.published.swap_s] if r.published else []
        ),
        "publish_reused_spare": bool(r.published and r.published.reused_spare),
        "publish_written_mb": round(r.published.written_bytes / 1e6, 1) if r.published else 0.0,
        "requests": r.stats.requests,
        "counts": counts,
        "table_rows": r.table_rows,
    }


def task_local_edit(p: dict[str, Any]) -> dict[str, Any]:
    from dynsync_dagster.sync.local_edit import set_account_field

    t0 = time.perf_counter()
    r = set_account_field(Path(p["db"]), p["contact_id"], p["field"], p["value"])
    return {
        "wall_s": time.perf_counter() - t0,
        "records": r.contacts_changed,
        "activities_logged": r.activities_logged,
    }


def task_dagster(p: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    import dagster as dg

    from dynsync_dagster.definitions import defs
    from dynsync_dagster.store.connection import open_store, working_path
    from dynsync_dagster.store.publish import read_record

    job = defs().resolve_job_def("dynamics_sync_job")
    load_s = time.perf_counter() - t0
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    with dg.DagsterInstance.get() as instance:
        t1 = time.perf_counter()
        result = job.execute_in_process(
            instance=instance, partition_key=today, tags={"dynsync/trigger": "schedule"}
        )
        total = time.perf_counter() - t1
    record = read_record(Path(p["db"]))
    # A cycle that changed nothing is not published: its sync_runs row is in the working store.
    with open_store(working_path(Path(p["db"])), read_only=True, wait_s=30) as con:
        row = con.execute(
            "SELECT epoch(finished_at) - epoch(started_at), accounts_read, contacts_read, outcome "
            "FROM sync_runs WHERE run_id = ?",
            [result.run_id],
        ).fetchone()
    if row is None:
        raise RuntimeError(f"no sync_runs row for Dagster run {result.run_id}")
    return {
        "wall_s": total,
        "records": int(row[1] or 0) + int(row[2] or 0),
        "cycle_s": float(row[0]),
        "outcome": row[3],
        "load_definitions_s": round(load_s, 3),
        "success": result.success,
        "published": record is not None and record.run_id == result.run_id,
    }


def task_dlt(p: dict[str, Any]) -> dict[str, Any]:
    import dlt
    import orjson

    env = dict(os.environ)
    http = _token_session(env)
    seen = {"rows": 0}

    def make(entity_set: str, select: list[str], track: bool, key: str):
        def pages():
            for page in _odata_pages(env, http, entity_set, select, track, orjson.loads):
                seen["rows"] += len(page)
                yield page

        return dlt.resource(pages, name=entity_set, primary_key=key, write_disposition="merge")

    pipeline = dlt.pipeline(
        pipeline_name="dynsync_peer",
        pipelines_dir=p["pipelines_dir"],
        destination=dlt.destinations.duckdb(credentials=p["db"]),
        dataset_name="dynamics",
    )
    resources = [make(s, sel, track, key) for s, sel, track, key in p["reads"]]
    t0 = time.perf_counter()
    info = pipeline.run(resources, loader_file_format=p.get("loader_file_format"))
    wall = time.perf_counter() - t0
    import duckdb

    with duckdb.connect(p["db"], read_only=True) as con:
        stored = {
            s: con.execute(f"SELECT count(*) FROM dynamics.{s}").fetchone()[0]
            for s, *_ in p["reads"]
        }
    return {
        "wall_s": wall,
        "records": seen["rows"],
        "stored": stored,
        "loads": len(info.loads_ids),
        "loader_file_format": p.get("loader_file_format")
        or str(pipeline.destination.capabilities().preferred_loader_file_format),
    }


WARM_MODULES = (
    "duckdb",
    "pyarrow",
    "pandas",
    "orjson",
    "msal",
    "requests",
    "dagster",
    "dynsync_dagster.sync.cycle",
    "dynsync_dagster.sync.local_edit",
    "dynsync_dagster.definitions",
    "dlt",
)


def task_warmup(p: dict[str, Any]) -> dict[str, Any]:
    """Import what the measured children import, and run a 3-row dlt load, so that their
    bytecode is cached before anything is measured (not itself a figure)."""
    import importlib

    t0 = time.perf_counter()
    for name in WARM_MODULES:
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            importlib.import_module(name)
    if importlib.util.find_spec("dlt") is not None:
        import dlt

        rows = [{"id": i, "name": f"row {i}"} for i in range(3)]
        pipeline = dlt.pipeline(
            pipeline_name="warmup",
            pipelines_dir=str(Path(p["dir"]) / "pipelines"),
            destination=dlt.destinations.duckdb(credentials=str(Path(p["dir"]) / "w.duckdb")),
            dataset_name="warmup",
        )
        pipeline.run(dlt.resource(rows, name="rows", primary_key="id", write_disposition="merge"))
    return {"wall_s": time.perf_counter() - t0, "records": 0}


CHILD_TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "warmup": task_warmup,
    "ceiling": task_ceiling,
    "cycle": task_cycle,
    "local_edit": task_local_edit,
    "dagster": task_dagster,
    "dlt": task_dlt,
}


# ---- the scenarios (parent side) ------------------------------------------------------------


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
    }


def store_query(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    import duckdb

    with contextlib.closing(duckdb.connect(str(db), read_only=True)) as con:
        return con.execute(sql, params or []).fetchall()


class Scenarios:
    def __init__(self, args: argparse.Namespace, bench: Bench) -> None:
        self.args = args
        self.bench = bench
        self.counter = Counter()
        self.notes: list[str] = []

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
            fig.error = _one_line_error(exc)
            print(f"  {fig.title}: FAILED\n{exc}", flush=True)
            return
        self.bench.measure(fig, self.args.repeat, once)

    def ceiling(self, sim: SimProcess, plan: dict[str, Any], fig: Figure) -> None:
        reads = [(s, sel, track) for s, sel, track, _key in plan["reads"]]
        self.bench.measure(
            fig,
            self.args.repeat,
            lambda i: self.bench.child("ceiling", {"reads": reads}, sim.env, sim),
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
            }
            return self.bench.child("dlt", payload, sim.env, sim)

        self.bench.measure(fig, repeat, once)

    def warm_simulator(self, sim: SimProcess, plan: dict[str, Any]) -> float:
        """One unmeasured bare read of everything: the simulator caches each row's JSON, and
        every figure should meet the same (warm) server."""
        reads = [(s, sel, track) for s, sel, track, _key in plan["reads"]]
        return self.bench.child("ceiling", {"reads": reads}, sim.env).wall_s


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


def run_all(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    bench = Bench(work, args.child_timeout)
    sc = Scenarios(args, bench)
    big = Sizes(args.accounts, args.contacts, args.big_account, args.mid_account)
    small = Sizes(
        max(1, args.accounts // 10),
        max(1, args.contacts // 10),
        args.big_account // 10,
        args.mid_account // 10,
    )
    figs = {
        "ceiling": Figure("ceiling", "Simulator bare loop (ceiling)", "rows"),
        "full": Figure("full", "First full sync", "rows"),
        "peer": Figure("peer", "dlt peer (parquet loader), full load", "rows"),
        "incremental": Figure(
            "incremental", "Incremental cycle, 1,000 accounts changed", "accounts read"
        ),
        "fanout_logged": Figure(
            "fanout_logged",
            "Fan-out: big account x 5 fields, limit raised (logged)",
            "activity rows",
        ),
        "fanout_suppressed": Figure(
            "fanout_suppressed",
            "Fan-out: big account x 5 fields, default limit (suppressed)",
            "rows suppressed",
        ),
        "fanout_mid": Figure("fanout_mid", "Fan-out: mid account x 10 fields", "activity rows"),
        "local_edit": Figure("local_edit", "Local edit on the big account", "contacts changed"),
        "dagster": Figure("dagster", "No-change cycle through Dagster", "rows read"),
        "small_full": Figure("small_full", "First full sync, store 10x smaller", "rows"),
        "small_incremental": Figure(
            "small_incremental",
            "Incremental cycle, 1,000 accounts, store 10x smaller",
            "accounts read",
        ),
        "peer_default": Figure("peer_default", "dlt peer (default settings), full load", "rows"),
    }
    meta: dict[str, Any] = {"sizes": {"big": big, "small": small}, "sim": {}}
    print("== warming the bytecode cache (not measured)", flush=True)
    warm = bench.child("warmup", {"dir": str(work / "warmup")}, {})
    meta["warmup_s"] = warm.process_s
    peer_reason = None
    if args.no_peer:
        peer_reason = "skipped: --no-peer"
    elif importlib.util.find_spec("dlt") is None:
        peer_reason = (
            "skipped: dlt is not importable in this environment "
            "(install the bench group: `uv sync --group bench`)"
        )
    if peer_reason:
        figs["peer"].error = figs["peer_default"].error = peer_reason

    # The small store first and the dlt peers last: the plain dlt load runs for minutes at
    # about 7 GB and writes gigabytes, and cycles measured right after it were up to 50%
    # slower (0.82, 0.70, 0.54, 0.63 s against 0.54, 0.47, 0.59, 0.58 s before it). Every
    # dynsync figure, on either store, should meet the same quiet machine.
    for label, sizes in (("small", small), ("big", big)):
        print(f"== simulator {label}: {sizes.label()} (sized accounts {sizes.sized})", flush=True)
        sim = SimProcess(
            work / f"sim-{label}", sizes.accounts, sizes.contacts, sizes.sized, args.seed
        )
        try:
            try:
                sim.start()
            except Exception as exc:
                keys = [
                    "ceiling",
                    "full",
                    "peer",
                    "peer_default",
                    "incremental",
                    "fanout_logged",
                    "fanout_suppressed",
                    "fanout_mid",
                    "local_edit",
                    "dagster",
                ]
                small_keys = ["small_full", "small_incremental"]
                for key in keys if label == "big" else small_keys:
                    if figs[key].error is None:
                        figs[key].error = f"simulator did not start: {_one_line_error(exc)}"
                print(f"simulator failed to start: {exc}", flush=True)
                continue
            print(
                f"   started in {sim.startup_s:.1f}s at {sim.info['org_url']}, "
                f"RSS {_mb(sim.rss_mb())}",
                flush=True,
            )
            meta["sim"][label] = {"startup_s": sim.startup_s, "rss_mb": sim.rss_mb()}
            plan = read_plan_or_fail(sim, figs, label)
            if plan is not None:
                meta["plan"] = plan
                meta["sim"][label]["warm_read_s"] = sc.warm_simulator(sim, plan)
            if label == "big":
                run_big(sc, sim, figs, meta, plan, peer_reason is None)
            else:
                db = sc.full_syncs(sim, work / "store-small", figs["small_full"])
                if figs["small_full"].ok:
                    sc.incremental(sim, db, figs["small_incremental"])
                else:
                    figs["small_incremental"].error = "not run: the full sync failed"
            meta["sim"][label]["rss_end_mb"] = sim.rss_mb()
        finally:
            sim.stop()
    return {"figures": figs, "meta": meta, "notes": sc.notes}


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
    db = sc.full_syncs(sim, sc.bench.work / "store-big", figs["full"])
    run_big_cycles(sc, sim, figs, meta, plan, db)
    if plan is not None and with_peer:
        sc.peer(sim, plan, figs["peer"], "parquet", sc.args.peer_repeat)
        sc.peer(sim, plan, figs["peer_default"], None, sc.args.peer_default_repeat)


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


# ---- RESULTS.md --------------------------------------------------------------------------------


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f} MB"


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


def targets(figs: dict[str, Figure], big: Sizes) -> list[tuple[str, str, str, str]]:
    """(target, measured, verdict, note) rows; a figure that did not run is 'not measured'."""
    rows = []

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "NOT MET")

    ceil, full, peer = figs["ceiling"], figs["full"], figs["peer"]
    rows.append(
        (
            "Simulator bare loop >= 100,000 rows/s",
            f"{_n(ceil.rate)} rows/s",
            verdict(None if ceil.rate is None else ceil.rate >= 100_000),
            "",
        )
    )
    share = _ratio(full.rate, ceil.rate)
    rows.append(
        (
            "First full sync >= 70% of the bare-loop ceiling",
            "-" if share is None else f"{share:.0%}",
            verdict(None if share is None else share >= 0.70),
            "",
        )
    )
    plain = figs["peer_default"]
    vs_dlt = _ratio(full.rate, plain.rate)
    vs_parquet = _ratio(full.rate, peer.rate)
    rows.append(
        (
            "First full sync >= 10x dlt's records/s",
            "-" if vs_dlt is None else f"{vs_dlt:.1f}x",
            verdict(None if vs_dlt is None else vs_dlt >= 10),
            ("against the plain pipeline (dlt's defaults)" if plain.ok else (plain.error or ""))
            + ("" if vs_parquet is None else f"; {vs_parquet:.1f}x against dlt tuned to parquet"),
        )
    )
    rows.append(
        (
            f"Peak RSS of a full sync at {big.contacts:,} contacts < 500 MB",
            _mb(full.rss),
            verdict(None if full.rss is None else full.rss < 500),
            "",
        )
    )
    small_full = figs["small_full"]
    growth = _ratio(full.rss, small_full.rss)
    rows.append(
        (
            "Peak RSS flat as data grows (10x the contacts: <= 1.5x the RSS)",
            "-" if growth is None else f"{_mb(small_full.rss)} -> {_mb(full.rss)} ({growth:.2f}x)",
            verdict(None if growth is None else growth <= 1.5),
            "",
        )
    )
    inc, small_inc = figs["incremental"], figs["small_incremental"]
    rows.append(
        (
            "Incremental 1,000-account cycle < 3 s",
            f"{_s(inc.wall)} s",
            verdict(None if inc.wall is None else inc.wall < 3),
            inc.note,
        )
    )
    grow = _ratio(inc.wall, small_inc.wall)
    rows.append(
        (
            "Incremental cycle <= 1.5x its time on a store 10x smaller (with its publish)",
            "-" if grow is None else f"{grow:.2f}x ({_s(small_inc.wall)} s on the small store)",
            verdict(None if grow is None else grow <= 1.5),
            "",
        )
    )
    fl = figs["fanout_logged"]
    rows.append(
        (
            "Fan-out big account x 5 fields < 2 s",
            f"{_s(fl.wall)} s",
            verdict(None if fl.wall is None else fl.wall < 2),
            f"{_n(fl.records)} activity rows logged",
        )
    )
    fm = figs["fanout_mid"]
    rows.append(
        (
            "Mid account x 10 fields (activity rows) < 1 s",
            f"{_s(fm.wall)} s",
            verdict(None if fm.wall is None else fm.wall < 1),
            f"{_n(fm.records)} activity rows logged",
        )
    )
    le = figs["local_edit"]
    rows.append(
        (
            "Local edit on the big account < 1 s",
            f"{_s(le.wall)} s",
            verdict(None if le.wall is None else le.wall < 1),
            f"{_n(le.records)} contacts changed",
        )
    )
    dg_ = figs["dagster"]
    cycle_s = statistics.median([r.detail["cycle_s"] for r in dg_.runs]) if dg_.runs else None
    rows.append(
        (
            "No-change cycle through Dagster: report it",
            f"{_s(dg_.wall)} s total, {_s(cycle_s)} s cycle",
            "reported" if dg_.ok else "not measured",
            "",
        )
    )
    rows.extend(publish_targets(figs))
    return rows


def _publish_how(fig: Figure, mb: float | None) -> str:
    """How each measured publish made its file: a new copy, or the spare rewritten in place."""
    if mb is None:
        return ""
    how = [
        f"spare, {r.detail.get('publish_written_mb', 0):,.0f} MB written"
        if r.detail.get("publish_reused_spare")
        else "new copy"
        for r in fig.runs
        if "publish_s" in r.detail
    ]
    return f"{mb:,.0f} MB file; per run: {'; '.join(how)}"


def publish_targets(figs: dict[str, Figure]) -> list[tuple[str, str, str, str]]:
    """Publishing for readers (publish.py): its cost beside the cycle it follows, the cycle's
    growth without it, and that a cycle that changed nothing copies nothing."""
    inc, small_inc, dg_ = figs["incremental"], figs["small_incremental"], figs["dagster"]

    def median(fig: Figure, key: str) -> float | None:
        values = [r.detail[key] for r in fig.runs if key in r.detail]
        return statistics.median(values) if values else None

    def cycle_only(fig: Figure) -> float | None:
        values = [r.wall_s - r.detail["publish_s"] for r in fig.runs if "publish_s" in r.detail]
        return statistics.median(values) if values else None

    pub, mb = median(inc, "publish_s"), median(inc, "published_mb")
    grow = _ratio(cycle_only(inc), cycle_only(small_inc))
    copied = sum(1 for r in dg_.runs if r.detail.get("published"))
    return [
        (
            "Publish after the incremental cycle <= 0.5 s (median)",
            f"{_s(pub)} s after a {_s(cycle_only(inc))} s cycle",
            "not measured" if pub is None else ("met" if pub <= 0.5 else "NOT MET"),
            _publish_how(inc, mb),
        ),
        (
            "Incremental cycle without its publish <= 1.5x on a store 10x smaller",
            "-" if grow is None else f"{grow:.2f}x ({_s(cycle_only(small_inc))} s small)",
            "not measured" if grow is None else ("met" if grow <= 1.5 else "NOT MET"),
            "the row above it includes the publish, which grows with the file",
        ),
        (
            "A cycle that changed nothing copies nothing",
            f"copied in {copied} of {len(dg_.runs)} no-change runs",
            "not measured" if not dg_.runs else ("met" if copied == 0 else "NOT MET"),
            "",
        ),
    ]


def render(
    args: argparse.Namespace, out: dict[str, Any], started: datetime, elapsed_s: float
) -> str:
    figs: dict[str, Figure] = out["figures"]
    meta = out["meta"]
    big: Sizes = meta["sizes"]["big"]
    small: Sizes = meta["sizes"]["small"]
    m, v = machine(), versions()
    lines = [
        "# dynsync benchmark results",
        "",
        f"Generated by `{_command(args)}` on {started:%Y-%m-%d %H:%M} UTC "
        f"(took {elapsed_s / 60:.1f} min). Each figure is the median of {args.repeat} run(s); "
        "wall seconds are measured inside a child process around the operation (interpreter "
        "start and imports excluded), peak RSS is that child's (os.wait4). The simulator runs in "
        "its own process on the same machine and competes for the same cores (each run's details "
        "give the CPU seconds it used meanwhile, `sim_cpu_s`). The small store is measured "
        "first and the dlt peers last, after every dynsync figure.",
        "",
        SECTIONS[0],
        "",
        f"- cores: {m['cores']}; memory: {m['memory']}; CPU: {m['cpu']}; {m['os']}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "",
        SECTIONS[1],
        "",
        f"- full store: {big.label()}; sized accounts {', '.join(f'{n:,}' for n in big.sized)} "
        "contacts (the big and the mid account)"
        + (
            f"; found in the store: {', '.join(f'{n:,}' for n in meta.get('sized_found', []))}"
            if meta.get("sized_found")
            else ""
        ),
        f"- small store (incremental comparison, RSS growth): {small.label()}; sized accounts "
        f"{', '.join(f'{n:,}' for n in small.sized) or 'none'}",
        f"- fields: `{CONFIG.name}` (account fields: "
        f"{', '.join(meta.get('plan', {}).get('account_fields', [])) or '?'}); "
        f"incremental changes {', '.join(INCREMENTAL_FIELDS)}; the big-account fan-out changes "
        f"{', '.join(FANOUT_FIELDS)}",
    ]
    loads = [r.detail["load_1m"] for f in figs.values() for r in f.runs if "load_1m" in r.detail]
    if loads:
        busy = max(loads) > float(m["cores"] or 1) + 0.5
        lines.insert(
            lines.index(SECTIONS[1]) - 1,
            f"- 1-minute load average after each measured run: {min(loads):.1f} to "
            f"{max(loads):.1f} (median {statistics.median(loads):.1f}) on {m['cores']} cores"
            + (
                "; other processes shared the machine during this run, so the figures are "
                "pessimistic and noisy"
                if busy
                else ""
            ),
        )
    for label, s in meta["sim"].items():
        lines.append(
            f"- simulator ({label}): generated and listening in {s['startup_s']:.1f} s, "
            f"RSS {_mb(s.get('rss_mb'))} at start, {_mb(s.get('rss_end_mb'))} at the end"
        )
    lines += [
        "",
        SECTIONS[2],
        "",
        "| figure | wall s | records | records/s | peak RSS | notes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for fig in figs.values():
        lines.append(_figure_row(fig))
    lines += ["", SECTIONS[3], ""]
    full, ceil, peer = figs["full"], figs["ceiling"], figs["peer"]
    lines.append(f"- ours / ceiling (records/s): {_fmt_ratio(_ratio(full.rate, ceil.rate))}")
    lines.append(
        "- ours / dlt with the parquet loader (records/s, full store): "
        f"{_fmt_ratio(_ratio(full.rate, peer.rate))}" + ("" if peer.ok else f" ({peer.error})")
    )
    peer_default = figs["peer_default"]
    lines.append(
        "- ours / dlt with default settings (records/s, full store): "
        f"{_fmt_ratio(_ratio(full.rate, peer_default.rate))}"
        + ("" if peer_default.ok else f" ({peer_default.error})")
    )
    lines.append(
        f"- dlt (parquet) / ceiling (records/s): {_fmt_ratio(_ratio(peer.rate, ceil.rate))}"
    )
    lines.append(
        "- incremental, full store / 10x smaller store (wall): "
        f"{_fmt_ratio(_ratio(figs['incremental'].wall, figs['small_incremental'].wall))}"
    )
    lines.append(
        "- full sync peak RSS, full store / 10x smaller store: "
        f"{_fmt_ratio(_ratio(full.rss, figs['small_full'].rss))}"
    )
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
    lines += [
        "",
        SECTIONS[4],
        "",
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
    ]
    for row in targets(figs, big):
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    lines += ["", SECTIONS[5], ""]
    if peer.ok or peer_default.ok:
        lines.append(
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
        lines.append("")
    for fig in (peer, peer_default):
        if fig.ok:
            d = fig.runs[-1].detail
            lines.append(
                f"- {fig.title}: median {_s(fig.wall)} s for {_n(fig.records)} rows = "
                f"{_n(fig.rate)} rows/s, peak RSS {_mb(fig.rss)}; loader file format "
                f"{d.get('loader_file_format')}; rows stored {d.get('stored')}; "
                f"{len(fig.runs)} run(s)"
            )
        else:
            lines.append(f"- {fig.title}: Not measured: {fig.error}.")
    lines += [
        "",
        SECTIONS[6],
        "",
        "| figure | run | wall s | process s | records | peak RSS | detail |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for fig in figs.values():
        for i, r in enumerate(fig.runs, 1):
            lines.append(
                "| "
                + " | ".join(
                    _cell(c)
                    for c in (
                        fig.title,
                        str(i),
                        _s(r.wall_s),
                        _s(r.process_s),
                        f"{r.records:,}",
                        _mb(r.rss_mb),
                        json.dumps(r.detail, default=str),
                    )
                )
                + " |"
            )
        if fig.error and not fig.error.startswith("skipped"):
            lines.append(
                f"| {_cell(fig.title)} | - | - | - | - | - | {_cell('FAILED: ' + fig.error)} |"
            )
    for note in out["notes"]:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def _figure_row(fig: Figure) -> str:
    if not fig.runs:
        return f"| {_cell(fig.title)} | - | - | - | - | {_cell(fig.error or 'not run')} |"
    note = fig.note
    if fig.error:
        note = (note + "; " if note else "") + "FAILED after some runs: " + fig.error
    return (
        "| "
        + " | ".join(
            _cell(c)
            for c in (
                fig.title,
                _s(fig.wall),
                f"{_n(fig.records)} {fig.unit}",
                _n(fig.rate),
                _mb(fig.rss),
                note,
            )
        )
        + " |"
    )


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " <br> ")


def _command(args: argparse.Namespace) -> str:
    return "python benchmarks/run.py " + " ".join(args.argv)


# ---- command line ------------------------------------------------------------------------------


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
    if args.child:
        return child_main(args.child, args.payload, args.out)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    own_work = args.work_dir is None
    work = Path(tempfile.mkdtemp(prefix="dynsync-bench-")) if own_work else args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    global PYCACHE
    PYCACHE = work / "pycache"
    print(f"work dir {work}", flush=True)
    try:
        out = run_all(args, work)
        text = render(args, out, started, time.perf_counter() - t0)
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(text)
        print(f"wrote {args.results}", flush=True)
    finally:
        if own_work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
