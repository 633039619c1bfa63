"""Shared fixtures: a real simulator over HTTPS and a real DuckDB file per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dynsync_dagster.settings import ConnectionSettings, SyncSettings
from dynsync_dagster.simulator import DatasetSpec, Simulator
from dynsync_dagster.store.connection import open_store
from dynsync_dagster.sync.cycle import CycleOptions, CycleResult, run_cycle

ACCOUNT_FIELDS = (
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
CONTACT_FIELDS = ("firstname", "lastname", "emailaddress1", "birthdate", "governmentid")

SMALL = DatasetSpec(
    accounts=30,
    contacts=260,
    sized_accounts=(12, 8),
    orphan_contacts=4,
    contact_parented_contacts=3,
    seed=11,
)


def settings(
    account_fields: tuple[str, ...] = ACCOUNT_FIELDS,
    contact_fields: tuple[str, ...] = CONTACT_FIELDS,
    limit: int = 5000,
) -> SyncSettings:
    return SyncSettings(tuple(account_fields), tuple(contact_fields), limit)


@pytest.fixture(scope="session")
def definitions():
    """The code location, loaded once. (A later load inside or after `instance_for_test` would
    pick up the test instance's state storage, which Dagster keeps globally.)"""
    from dynsync_dagster.definitions import defs

    return defs()


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(SMALL, state_dir=tmp_path / "sim") as s:
        yield s


class Harness:
    """Runs real cycles against the simulator into a real DuckDB file."""

    def __init__(self, sim: Simulator, db: Path):
        self.sim = sim
        self.db = db
        self.settings = settings()

    @property
    def conn(self) -> ConnectionSettings:
        return ConnectionSettings.from_env(self.sim.env(flow="client_credentials"))

    def cycle(self, **options) -> CycleResult:
        return run_cycle(self.conn, self.settings, self.db, CycleOptions(**options))

    def rows(self, sql: str, params: list | None = None) -> list[tuple]:
        with open_store(self.db, read_only=True) as con:
            return con.execute(sql, params or []).fetchall()

    def scalar(self, sql: str, params: list | None = None):
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


@pytest.fixture
def harness(sim: Simulator, tmp_path: Path) -> Harness:
    return Harness(sim, tmp_path / "store" / "dynsync.duckdb")
