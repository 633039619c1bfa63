"""Shared helpers for the reliability tests: small data, fast clients, canonical snapshots."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynsync_dagster.client import DynamicsClient, RetryPolicy
from dynsync_dagster.cycle import CycleOptions, CycleResult, run_cycle
from dynsync_dagster.settings import ConnectionSettings, SyncSettings
from dynsync_dagster.simulator import DatasetSpec, Simulator
from dynsync_dagster.store import open_store

REPO = Path(__file__).resolve().parents[2]

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


def canonical(db: Path) -> dict[str, list[tuple]]:
    """The data tables minus dynsync's bookkeeping, in a stable order, as text.

    Two stores that went through equivalent histories (same Dynamics data, same local edits)
    compare equal, whatever their run ids, timestamps of their own and activity ids.
    """
    out: dict[str, list[tuple]] = {}
    with open_store(db, read_only=True, wait_s=30) as con:
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
    """This process's environment without any dynsync/Dynamics/Dagster settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DYNAMICS_", "DYNSYNC_", "DAGSTER_"))
    }
    env["PYTHONPATH"] = str(REPO)
    return env


def run_cli(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynsync_dagster.cli", *args],
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
