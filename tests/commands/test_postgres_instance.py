"""Dagster on PostgreSQL: dynsync's instance policy with runs and events in a real server.

A throwaway PostgreSQL (commands/postgres.py: Debian's binaries, loopback, a generated
password) stands in for a team's database; `dynsync sync` runs as a user runs it, a
subprocess, with DAGSTER_HOME pointing at the PostgreSQL configuration.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from dynsync_dagster.commands.instance import PG_VARIABLES, instance_yaml, write_home
from dynsync_dagster.commands.postgres import ThrowawayPostgres
from dynsync_dagster.simulator import Simulator
from tests.support import REPO, clean_env, run_cli


@pytest.fixture(scope="module")
def postgres() -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres() as pg:
        yield pg


def _rows(pg: ThrowawayPostgres, sql: str) -> list[tuple]:
    with psycopg2.connect(pg.url()) as con, con.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def test_the_postgres_configuration_is_the_policy_plus_storage_from_the_environment() -> None:
    local, team = instance_yaml(postgres=False), instance_yaml(postgres=True)
    assert team.startswith(local.rstrip())  # the policy is written once
    for name in PG_VARIABLES:
        assert f"{{env: {name}}}" in team
    assert "password: {env: DAGSTER_PG_PASSWORD}" in team  # never a literal password


def test_dynsync_instance_prints_it(tmp_path: Path) -> None:
    done = run_cli(["instance", "--postgres"], clean_env(tmp_path), REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout == instance_yaml(postgres=True)


def test_a_sync_run_is_recorded_in_postgres(
    postgres: ThrowawayPostgres, sim: Simulator, tmp_path: Path
) -> None:
    home = tmp_path / "dagster_home"
    config = write_home(home, postgres=True)
    env = clean_env(tmp_path) | sim.env() | postgres.env() | {
        "DAGSTER_HOME": str(home),
        "DYNSYNC_DUCKDB_PATH": str(tmp_path / "dynsync.duckdb"),
        "DYNSYNC_CONFIG": str(REPO / "dynsync.yaml"),
    }  # fmt: skip
    done = run_cli(["sync"], env, REPO)
    assert done.returncode == 0, done.stderr

    assert postgres.password not in config.read_text()
    # The run, its materializations and the asset checks live in PostgreSQL, not in files.
    assert _rows(postgres, "SELECT status FROM runs") == [("SUCCESS",)]
    materialized = _rows(
        postgres,
        "SELECT DISTINCT asset_key FROM event_logs "
        "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' ORDER BY asset_key",
    )
    assert [key for (key,) in materialized] == [
        '["accounts"]', '["activity_log"]', '["contacts"]', '["sync_fields"]', '["sync_runs"]',
    ]  # fmt: skip
    assert not list(home.glob("**/*.db")), "the instance fell back to SQLite files"
    assert postgres.password not in done.stdout + done.stderr
