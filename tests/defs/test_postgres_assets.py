"""The PostgreSQL tables as assets (defs/postgres.py): present only with DYNSYNC_POSTGRES_URL,
downstream of the DuckDB tables, recorded with row counts and column lineage by a real run."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from dynsync_dagster.commands.postgres import ThrowawayPostgres
from dynsync_dagster.defs import postgres as postgres_defs
from dynsync_dagster.store.connection import open_store
from dynsync_dagster.store.postgres import PUBLISHED_TABLES
from tests.support import bound_now

FAKE_URL = "postgresql://reader:not-a-real-password@127.0.0.1:1/warehouse"


def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


@pytest.fixture(scope="module")
def postgres() -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres() as pg:
        yield pg


def test_without_the_url_the_graph_has_no_postgres_assets(
    definitions: dg.Definitions, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = [s.key.to_user_string() for s in definitions.resolve_all_asset_specs()]
    assert not [k for k in keys if k.startswith("postgres/")]
    assert "postgres" not in (definitions.resources or {})
    monkeypatch.delenv("DYNSYNC_POSTGRES_URL", raising=False)
    assert not postgres_defs.postgres().assets


def test_with_the_url_each_table_has_a_postgres_asset_downstream(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DYNSYNC_POSTGRES_URL", FAKE_URL)
    built = postgres_defs.postgres()
    (assets_def,) = built.assets
    specs = {s.key.to_user_string(): s for s in assets_def.specs}
    assert sorted(specs) == sorted(f"postgres/{t}" for t in PUBLISHED_TABLES)
    for table in PUBLISHED_TABLES:
        spec = specs[f"postgres/{table}"]
        assert spec.kinds == {"postgres"}
        assert [d.asset_key for d in spec.deps] == [dg.AssetKey(table)]
        assert spec.metadata["dagster/table_name"] == f"dynsync.{table}"
    # The URL is bound as a variable: its value (and password) is in no definition.
    resource = built.resources["postgres"]
    assert "not-a-real-password" not in repr(resource)
    assert "DYNSYNC_POSTGRES_URL" in repr(resource)
    assert [s.name for s in built.sensors] == ["after_each_write"]


def test_a_run_records_row_counts_and_column_lineage(
    postgres: ThrowawayPostgres,
    sync_env: Path,
    definitions: dg.Definitions,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    schema = f"t_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("DYNSYNC_POSTGRES_URL", postgres.url())
    monkeypatch.setenv("DYNSYNC_POSTGRES_SCHEMA", schema)
    with_postgres = dg.Definitions.merge(bound_now(definitions), postgres_defs.postgres())
    with dg.instance_for_test() as instance:
        sync = with_postgres.resolve_job_def("dynamics_sync_job")
        synced = sync.execute_in_process(instance=instance, partition_key=_today())
        assert synced.success
        # The sensor asks for the PostgreSQL run after each successful sync.
        (sensor,) = [s for s in with_postgres.sensors if s.name == "after_each_write"]
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name,
            dagster_instance=instance,
            dagster_run=synced.dagster_run,
            dagster_event=synced.get_run_success_event(),
        )
        request = sensor(context)
        assert request.run_key == f"after {synced.run_id}"
        run = with_postgres.resolve_job_def("postgres_publish_job").execute_in_process(
            instance=instance
        )
        assert run.success
        recorded = {
            m.asset_key.path[-1]: m.metadata for m in run.asset_materializations_for_node(
                "postgres_tables"
            )
        }  # fmt: skip
    assert sorted(recorded) == sorted(PUBLISHED_TABLES)
    with open_store(sync_env.with_name(sync_env.name + ".work"), read_only=True) as con:
        for table in PUBLISHED_TABLES:
            rows = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            meta = recorded[table]
            assert meta["dagster/row_count"].value == rows, table
            lineage = meta["dagster/column_lineage"].value
            columns = [c.name for c in meta["dagster/column_schema"].value.columns]
            assert sorted(lineage.deps_by_column) == sorted(columns)
            for column, deps in lineage.deps_by_column.items():
                assert deps == [dg.TableColumnDep(asset_key=dg.AssetKey(table), column_name=column)]
    assert "account_name" in recorded["contacts"]["dagster/column_lineage"].value.deps_by_column


def test_a_failed_publish_fails_the_run_in_one_line(
    sync_env: Path, definitions: dg.Definitions, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DYNSYNC_POSTGRES_URL", FAKE_URL)
    with_postgres = dg.Definitions.merge(bound_now(definitions), postgres_defs.postgres())
    with dg.instance_for_test() as instance:
        sync = with_postgres.resolve_job_def("dynamics_sync_job")
        assert sync.execute_in_process(
            instance=instance, partition_key=_today()
        ).success  # PostgreSQL down: still ok
        run = with_postgres.resolve_job_def("postgres_publish_job").execute_in_process(
            instance=instance, raise_on_error=False
        )
    assert not run.success
    failure = run.get_step_failure_events()[0].step_failure_data.error
    assert "not-a-real-password" not in failure.message
    assert "The DuckDB store is committed" in failure.message
