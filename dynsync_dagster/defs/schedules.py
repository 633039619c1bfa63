"""The five-minute cycle: a job over the sync assets and a schedule that never overlaps."""

import os

import dagster as dg

from dynsync_dagster.defs.assets import dynamics_sync

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]

sync_job = dg.define_asset_job(
    name="dynamics_sync_job",
    selection=dg.AssetSelection.assets(dynamics_sync),
    description="One sync cycle (the schedule's target; also what `dynsync sync` runs).",
    tags={"dynsync/writer": "duckdb", "dagster/max_runtime": "3600"},
    # A run's step-by-step DEBUG lines stay in its event log, off the terminal of `dagster dev`
    # (`dynsync sync` sets its own, quieter, level).
    config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
)


@dg.schedule(
    job=sync_job,
    # DYNSYNC_SCHEDULE_CRON, read when the code location loads, changes the cadence (the e2e
    # test of separate Dagster services ticks every minute: "* * * * *").
    cron_schedule=os.environ.get("DYNSYNC_SCHEDULE_CRON") or "*/5 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Every five minutes, bring in what changed since the last committed cycle.",
)
def every_five_minutes(context: dg.ScheduleEvaluationContext):
    in_flight = context.instance.get_run_records(
        dg.RunsFilter(job_name=sync_job.name, statuses=IN_FLIGHT), limit=1
    )
    if in_flight:
        run = in_flight[0].dagster_run
        return dg.SkipReason(
            f"a sync is still in flight (run {run.run_id[:8]}, {run.status.value}); the next "
            "tick catches up everything since the last committed cycle"
        )
    when = context.scheduled_execution_time
    return dg.RunRequest(
        partition_key=when.strftime("%Y-%m-%d"),
        tags={"dynsync/trigger": "schedule"},
    )


@dg.definitions
def schedules() -> dg.Definitions:
    return dg.Definitions(jobs=[sync_job], schedules=[every_five_minutes])
