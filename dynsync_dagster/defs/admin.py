"""Marketo's admin features around the sync, in Dagster: the daily activity purge (retention)
and the Sync Status view. (The Sync Errors check runs with the store's integrity checks.)"""

import dagster as dg

from dynsync_dagster.defs.assets import OWNERS
from dynsync_dagster.defs.resources import DynamicsResource, DynsyncStore
from dynsync_dagster.defs.schedule_state import schedule_state
from dynsync_dagster.settings import ConnectionSettings, SettingsError
from dynsync_dagster.store.connection import StoreBusyError, StoreNotReadyError
from dynsync_dagster.store.retention import purge_activity
from dynsync_dagster.store.sync_status import collect_status

ADMIN_GROUP = "dynsync_admin"
# -- activity retention ----------------------------------------------------------------------


@dg.op(name="purge_activity_log", pool="duckdb_write", tags={"kind": "duckdb"})
def purge_activity_log(context: dg.OpExecutionContext, store: DynsyncStore) -> None:
    """Delete activity_log rows that occurred more than activity_log_retention_days ago,
    in one transaction, and record the purge in `activity_purges`."""
    try:
        days = store.sync_settings().activity_log_retention_days
        result = purge_activity(store.path(), days, trigger="dagster", run_id=context.run.run_id)
    except (SettingsError, StoreNotReadyError, StoreBusyError) as exc:
        raise dg.Failure(description=str(exc)) from None
    context.log.info(result.summary())
    metadata: dict = {"purge/summary": result.summary(), "purge/rows_deleted": result.rows_deleted}
    if result.retention_days is not None and result.cutoff is not None:
        metadata["purge/retention_days"] = result.retention_days
        metadata["purge/cutoff"] = result.cutoff.isoformat()
        metadata["purge/rows_kept"] = result.rows_kept
    context.log_event(dg.AssetObservation(asset_key="activity_log", metadata=metadata))


@dg.job(
    description="Activity retention: delete activity_log rows older than "
    "activity_log_retention_days (Marketo keeps Change Data Value activities 90 days). "
    "Without the setting it deletes nothing. Never runs during a cycle (pool duckdb_write).",
    tags={"dynsync/writer": "duckdb"},
)
def activity_retention_job() -> None:
    purge_activity_log()


@dg.schedule(
    job=activity_retention_job,
    cron_schedule="30 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 03:30 UTC: the activity purge, when activity_log_retention_days is set.",
)
def daily_activity_purge(context: dg.ScheduleEvaluationContext, store: DynsyncStore):
    try:
        days = store.sync_settings().activity_log_retention_days
    except SettingsError as exc:
        return dg.SkipReason(str(exc))
    if days is None:
        return dg.SkipReason(
            "activity retention is off (activity_log_retention_days is not set): nothing to purge"
        )
    return dg.RunRequest(tags={"dynsync/trigger": "schedule"})


# -- Sync Status -----------------------------------------------------------------------------


def _connection(dynamics: DynamicsResource):
    def connection() -> ConnectionSettings:
        try:
            return dynamics.connection()
        except dg.Failure as exc:  # a missing or malformed variable, said in one line
            raise SettingsError(exc.description or "the DYNAMICS_* variables are not set") from None

    return connection


@dg.asset(
    name="sync_status",
    group_name=ADMIN_GROUP,
    deps=["sync_runs"],
    kinds={"dynamics", "duckdb"},
    owners=OWNERS,
    pool="duckdb_write",
)
def sync_status(
    context: dg.AssetExecutionContext, dynamics: DynamicsResource, store: DynsyncStore
) -> dg.MaterializeResult:
    """Sync Status, as Marketo's tab shows it and `dynsync status` prints it.

    The last committed cycle, the changes waiting in Dynamics since it ("5,000+" where the API
    stops counting) with the oldest pending `modifiedon`, records synced in the last hour, the
    delta tokens' age and whether the schedule is running. Materialize it to refresh: one
    capped request per entity, never a full read."""
    status = collect_status(store.path(), _connection(dynamics), schedule_state(context.instance))
    for line in status.lines():
        context.log.info(line)
    meta = status.metadata()
    meta["status"] = dg.MetadataValue.md("\n".join(f"- {line}" for line in status.lines()))
    return dg.MaterializeResult(metadata=meta)


sync_status_job = dg.define_asset_job(
    name="sync_status_job",
    selection=[sync_status],
    description="Refresh the Sync Status view (what `dynsync status` prints).",
)


@dg.definitions
def admin() -> dg.Definitions:
    return dg.Definitions(
        assets=[sync_status],
        jobs=[activity_retention_job, sync_status_job],
        schedules=[daily_activity_purge],
    )
