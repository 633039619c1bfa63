"""What the tests share: small orgs, field selections, cycles against the simulator, fast
clients, canonical snapshots of a store, the CLI as a subprocess, and crash runs."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import dagster as dg

from dynsync_dagster.defs.resources import build_resources
from dynsync_dagster.dynamics.client import DynamicsClient, RetryPolicy
from dynsync_dagster.settings import ConnectionSettings, SyncSettings
from dynsync_dagster.simulator import DatasetSpec, Simulator
from dynsync_dagster.store.connection import open_store
from dynsync_dagster.sync.cycle import CycleOptions, CycleResult, run_cycle

REPO = Path(__file__).resolve().parents[1]

ACCOUNT_FIELDS = (
    "name",
    "accountnumber",
    "industrycode",
    "revenue",
    "numberofemployees",
    "address1_city",
    "description",
    "creditlimit",
    "parentaccountid",
)
CONTACT_FIELDS = ("firstname", "lastname", "emailaddress1", "birthdate", "jobtitle")

# The rules tests' selection: a secured field (governmentid) and a Two Options one.
RULES_ACCOUNT_FIELDS = (
    "name",
    "accountnumber",
    "industrycode",
    "revenue",
    "numberofemployees",
    "address1_city",
    "creditlimit",
    "creditonhold",
    "parentaccountid",
)
RULES_CONTACT_FIELDS = ("firstname", "lastname", "emailaddress1", "birthdate", "governmentid")

# The rules tests' org: sized accounts of 12 and 8 contacts, orphans, contact-parented ones.
SMALL = DatasetSpec(
    accounts=30,
    contacts=260,
    sized_accounts=(12, 8),
    orphan_contacts=4,
    contact_parented_contacts=3,
    seed=11,
)

# Small enough that a cycle takes a fraction of a second, big enough for several pages.
TINY = DatasetSpec(
    accounts=12,
    contacts=70,
    sized_accounts=(9, 7),
    orphan_contacts=3,
    contact_parented_contacts=2,
    seed=5,
)

# dynsync's own bookkeeping: run ids and wall-clock stamps differ between equivalent runs.
BOOKKEEPING = frozenset(
    {
        "first_synced_at",
        "last_synced_at",
        "last_run_id",
        "deleted_at",
        "run_id",
        "logged_at",
        "activity_id",
        "updated_at",
    }
)
ACTIVITY_KEY = ("contactid", "accountid", "attribute", "old_value", "new_value", "source")


def sync_settings(
    account_fields: tuple[str, ...] = ACCOUNT_FIELDS,
    contact_fields: tuple[str, ...] = CONTACT_FIELDS,
    limit: int = 5000,
) -> SyncSettings:
    return SyncSettings(tuple(account_fields), tuple(contact_fields), limit)


def connection(sim: Simulator, flow: str = "client_credentials") -> ConnectionSettings:
    return ConnectionSettings.from_env(sim.env(flow=flow))


@dataclass
class Sleeps:
    """A fake `sleep` for the client: records the waits instead of sleeping them."""

    waits: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def fast_client(
    conn: ConnectionSettings,
    sleeps: Callable[[float], None] | None = None,
    *,
    attempts: int = 4,
    budget_s: float = 30.0,
) -> DynamicsClient:
    """A client whose retries cost no wall time (waits are recorded, not slept)."""
    policy = RetryPolicy(
        max_attempts=attempts, max_total_wait_s=budget_s, base_backoff_s=0.01, max_backoff_s=0.05
    )
    return DynamicsClient(conn, retry=policy, sleep=sleeps or Sleeps())


def cycle(
    sim: Simulator,
    db: Path,
    settings: SyncSettings | None = None,
    *,
    client: DynamicsClient | None = None,
    **options: Any,
) -> CycleResult:
    """One cycle; with `client` the caller owns (and closes) it."""
    conn = connection(sim)
    return run_cycle(conn, settings or sync_settings(), db, CycleOptions(**options), client=client)


class Harness:
    """Runs real cycles against the simulator into a real DuckDB file."""

    def __init__(self, sim: Simulator, db: Path):
        self.sim = sim
        self.db = db
        self.settings = sync_settings(RULES_ACCOUNT_FIELDS, RULES_CONTACT_FIELDS)

    @property
    def conn(self) -> ConnectionSettings:
        return connection(self.sim)

    def cycle(self, **options: Any) -> CycleResult:
        return cycle(self.sim, self.db, self.settings, **options)

    def rows(self, sql: str, params: list | None = None) -> list[tuple]:
        with open_store(self.db, read_only=True) as con:
            return con.execute(sql, params or []).fetchall()

    def scalar(self, sql: str, params: list | None = None) -> Any:
        return self.rows(sql, params)[0][0]

    def snapshot(self) -> dict[str, list[tuple]]:
        """Every data table in a stable order (status tables aside)."""
        out = {}
        with open_store(self.db, read_only=True) as con:
            for table, key in (
                ("accounts", "accountid"),
                ("contacts", "contactid"),
                ("activity_log", "activity_id"),
                ("local_edits", "accountid, field"),
                ("activity_suppressions", "accountid, logged_at"),
            ):
                cols = [
                    c
                    for c in con.sql(f"SELECT * FROM {table} LIMIT 0").columns
                    if c not in ("last_synced_at", "last_run_id", "logged_at")
                ]
                out[table] = con.execute(
                    f"SELECT {', '.join(cols)} FROM {table} ORDER BY {key}"
                ).fetchall()
        return out


def bound_now(definitions: dg.Definitions) -> dg.Definitions:
    """`definitions` with resources that bind the environment variables set now.

    The resources bind only the variables set when the code location loads
    (defs/resources.py). A test sets its simulator's after the session loaded it, and loading
    it again after an `instance_for_test` would pick up that instance's state storage.
    """
    return dg.Definitions(
        assets=definitions.assets,
        asset_checks=definitions.asset_checks,
        jobs=definitions.jobs,
        schedules=definitions.schedules,
        sensors=definitions.sensors,
        resources=build_resources(),
        executor=definitions.executor,
    )


def canonical(db: Path, wait_s: float = 30) -> dict[str, list[tuple]]:
    """The data tables minus dynsync's bookkeeping, in a stable order, as text.

    Two stores that went through equivalent histories (same Dynamics data, same local edits)
    compare equal, whatever their run ids, timestamps of their own and activity ids.
    """
    out: dict[str, list[tuple]] = {}
    with open_store(db, read_only=True, wait_s=wait_s) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        for table in (
            "accounts",
            "contacts",
            "activity_log",
            "local_edits",
            "activity_suppressions",
        ):
            if table not in tables:
                out[table] = []
                continue
            cols = [
                c for c in con.sql(f"SELECT * FROM {table} LIMIT 0").columns if c not in BOOKKEEPING
            ]
            select = ", ".join(f'CAST("{c}" AS VARCHAR) AS "{c}"' for c in cols)
            out[table] = sorted(
                con.execute(f"SELECT {select} FROM {table}").fetchall(),
                key=lambda row: tuple("" if v is None else v for v in row),
            )
    return out


def activity_rows(db: Path) -> list[tuple]:
    """(contactid, accountid, attribute, old_value, new_value, source) of every activity row."""
    with open_store(db, read_only=True, wait_s=30) as con:
        return con.execute(
            "SELECT CAST(contactid AS VARCHAR), CAST(accountid AS VARCHAR), attribute, old_value, "
            "new_value, source FROM activity_log ORDER BY activity_id"
        ).fetchall()


def data_rows(db: Path) -> dict[str, int]:
    with open_store(db, read_only=True, wait_s=30) as con:
        return {
            t: int(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
            for t in ("accounts", "contacts", "activity_log")
        }


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(tmp: Path) -> dict[str, str]:
    """This process's environment without any dynsync/Dynamics/Dagster settings, and a Dagster
    instance of the test's own under `tmp`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DYNAMICS_", "DYNSYNC_", "DAGSTER_")) or k == "DYNSYNC_PARTITION_START"
    }
    env["PYTHONPATH"] = str(REPO)
    # Each test's own Dagster instance: never the checkout's dagster_home/.
    env["DAGSTER_HOME"] = str(tmp / "dagster_home")
    return env


def run_cli(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynsync_dagster.commands.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def pick_sized(sim: Simulator, n: int) -> str:
    """The account with exactly `n` contacts."""
    org = sim.org
    return next(a for a in org.account_ids() if len(org.contacts_of(a)) == n)


# ---- a fork server that runs cycles in children (crash_runner.py) ---------------------------


@dataclass
class Outcome:
    killed: bool
    markers: list[str]
    status: int | None


class Zygote:
    """The fork server of crash_runner.py, driven over its stdin/stdout."""

    def __init__(self, tmp: Path) -> None:
        self.stderr_path = tmp / "crash_runner.stderr"
        self._stderr = self.stderr_path.open("w")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.reliability.crash_runner"],
            cwd=REPO,
            env=clean_env(tmp),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )
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

    def run(
        self,
        job: dict,
        marker: str | None,
        delay_s: float = 0.0,
        nth: int = 1,
        on_marker: Callable[[str], None] | None = None,
    ) -> Outcome:
        """Run `job` in a child; SIGKILL it `delay_s` after it prints `marker` the `nth` time
        (never, with `marker=None`). `on_marker` sees each progress marker as it arrives."""
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
                if on_marker is not None:
                    on_marker(text)
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
        self._stderr.close()

    def __enter__(self) -> Zygote:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def crash_job(
    sim: Simulator,
    db: Path,
    settings: SyncSettings,
    page_pause_s: float = 0.03,
    write_pause_s: float = 0.3,
) -> dict:
    """A job for crash_runner.py: one cycle of `settings` into `db`, paced for kills."""
    return {
        "env": sim.env(),
        "db": str(db),
        "account_fields": list(settings.account_fields),
        "contact_fields": list(settings.contact_fields),
        "limit": settings.activity_log_contact_limit,
        "page_pause_s": page_pause_s,
        "write_pause_s": write_pause_s,
    }
