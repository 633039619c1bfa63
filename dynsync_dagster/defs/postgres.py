"""The PostgreSQL copy of the synced tables as assets, downstream of the DuckDB ones.

Only when DYNSYNC_POSTGRES_URL is set as the code location loads: without it there is no
PostgreSQL copy, and the graph is exactly the DuckDB one. Cycles and local edits publish to
PostgreSQL themselves (store/postgres.py); after each successful sync or local-edit run a
sensor launches `postgres_publish_job`, which ships anything a failed publish left pending and
records each table's row count, columns and column lineage back to the DuckDB table.
"""

import os

import dagster as dg

from dynsync_dagster.defs.assets import OWNERS
from dynsync_dagster.defs.local_edits import local_edit_job
from dynsync_dagster.defs.resources import DynsyncStore
from dynsync_dagster.defs.schedules import sync_job
from dynsync_dagster.store.outbox import URL_VARIABLE
from dynsync_dagster.store.postgres import (
    DEFAULT_SCHEMA,
    PUBLISHED_TABLES,
    SCHEMA_VARIABLE,
    PostgresPublished,
    PostgresPublishError,
    Target,
    publish_store,
    table_facts,
    target_from_env,
)

GROUP = "postgres"


class PostgresCopy(dg.ConfigurableResource):
    """Where the tables are copied: DYNSYNC_POSTGRES_URL (it may carry a password, so it is
    bound as a variable and never shown) and DYNSYNC_POSTGRES_SCHEMA (default `dynsync`)."""

    url: str | None = None
    schema_name: str | None = None

    def target(self) -> Target:
        env = {URL_VARIABLE: self.url or "", SCHEMA_VARIABLE: self.schema_name or ""}
        try:
            target = target_from_env(env)
        except PostgresPublishError as exc:
            raise dg.Failure(description=str(exc)) from None
        if target is None:
            raise dg.Failure(description=f"set {URL_VARIABLE} to publish to PostgreSQL")
        return target


def _schema() -> str:
    return os.environ.get(SCHEMA_VARIABLE, "").strip() or DEFAULT_SCHEMA


def _spec(table: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=[GROUP, table],
        description=f"`{table}` copied to PostgreSQL (schema `{_schema()}`) after every "
        "committed cycle and local edit: the same columns and rows as the DuckDB table, for "
        "readers on other machines.",
        deps=[table],
        group_name=GROUP,
        kinds={"postgres"},
        owners=OWNERS,
        metadata={"dagster/table_name": f"{_schema()}.{table}"},
    )


def _metadata(table: str, rows: int, columns: dict[str, str], done: PostgresPublished) -> dict:
    schema = dg.TableSchema(columns=[dg.TableColumn(name=c, type=t) for c, t in columns.items()])
    lineage = dg.TableColumnLineage(
        deps_by_column={
            c: [dg.TableColumnDep(asset_key=dg.AssetKey(table), column_name=c)] for c in columns
        }
    )
    return {
        "dagster/row_count": rows,
        "dagster/column_schema": schema,
        "dagster/column_lineage": lineage,
        "dynsync/applied_seq": done.applied_seq,
        "dynsync/rows_copied": done.shipped.get(table, 0),
        "dynsync/put_off": dg.MetadataValue.json(done.deferred),
    }


def _build() -> dg.Definitions:
    @dg.multi_asset(
        name="postgres_tables",
        specs=[_spec(t) for t in PUBLISHED_TABLES],
        pool="duckdb_write",  # a catch-up holds the store's writer lock
    )
    def postgres_tables(
        context: dg.AssetExecutionContext, store: DynsyncStore, postgres: PostgresCopy
    ):
        """Ship what a failed publish left pending, then record the PostgreSQL tables."""
        target = postgres.target()
        try:
            done = publish_store(store.path(), full=False, target=target)
            facts = table_facts(target, PUBLISHED_TABLES)
        except PostgresPublishError as exc:
            raise dg.Failure(description=str(exc)) from None
        for note in done.deferred:
            context.log.warning(f"column change put off until readers finish: {note}")
        for table, (rows, columns) in facts.items():
            yield dg.MaterializeResult(
                asset_key=[GROUP, table], metadata=_metadata(table, rows, columns, done)
            )

    job = dg.define_asset_job(
        name="postgres_publish_job",
        selection=dg.AssetSelection.assets(postgres_tables),
        description="Copy what is pending to PostgreSQL and record the PostgreSQL tables.",
        tags={"dynsync/writer": "duckdb"},
    )

    @dg.run_status_sensor(
        run_status=dg.DagsterRunStatus.SUCCESS,
        monitored_jobs=[sync_job, local_edit_job],
        request_job=job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="After each successful sync or local edit, record the PostgreSQL tables.",
    )
    def after_each_write(context: dg.RunStatusSensorContext):
        return dg.RunRequest(run_key=f"after {context.dagster_run.run_id}")

    bound = {"url": dg.EnvVar(URL_VARIABLE)}
    if SCHEMA_VARIABLE in os.environ:
        bound["schema_name"] = dg.EnvVar(SCHEMA_VARIABLE)
    return dg.Definitions(
        assets=dg.with_source_code_references([postgres_tables]),
        jobs=[job],
        sensors=[after_each_write],
        resources={"postgres": PostgresCopy(**bound)},
    )


@dg.definitions
def postgres() -> dg.Definitions:
    """Nothing unless DYNSYNC_POSTGRES_URL is set when the code location loads."""
    if target_from_env() is None:
        return dg.Definitions()
    return _build()
