"""Partition status tells the truth: a day is materialized once a cycle covered it, and a run
records every table the cycle wrote, whichever table it was launched from."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg

from dynsync_dagster.defs.assets import dynamics_sync
from dynsync_dagster.defs.partitions import daily_modifiedon
from dynsync_dagster.defs.resources import build_resources
from dynsync_dagster.settings import SyncSettings
from dynsync_dagster.simulator import Simulator
from tests.support import REPO, cycle

TABLES = ("sync_fields", "accounts", "contacts", "activity_log", "sync_runs")


def _materialized(instance: dg.DagsterInstance) -> dict[str, set[str]]:
    return {t: instance.get_materialized_partitions(dg.AssetKey(t)) for t in TABLES}


def _recorded_by(instance: dg.DagsterInstance, run_id: str) -> list[dg.EventLogEntry]:
    return [
        e
        for e in instance.all_logs(run_id)
        if e.dagster_event and e.dagster_event.is_step_materialization
    ]


def _prime_store(sim: Simulator, db: Path) -> None:
    """A store the first (full) cycle already filled, outside Dagster: the runs below read
    incrementally, with the settings the code location uses."""
    cycle(sim, db, SyncSettings.load(REPO / "dynsync.yaml"))


def test_a_first_full_sync_materializes_every_day_up_to_today(
    sync_env: Path, bound_definitions
) -> None:
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    every_day = set(daily_modifiedon.get_partition_keys())
    assert max(every_day) == today and len(every_day) > 1
    with dg.instance_for_test() as instance:
        job = bound_definitions.resolve_job_def("dynamics_sync_job")
        first = job.execute_in_process(instance=instance, partition_key=today)
        assert first.success
        assert _materialized(instance) == {t: every_day for t in TABLES}

        # An incremental cycle records today again, and only today: the count does not drop.
        second = job.execute_in_process(instance=instance, partition_key=today)
        assert second.success
        assert _materialized(instance) == {t: every_day for t in TABLES}
        again = _recorded_by(instance, second.run_id)
        assert sorted(e.dagster_event.partition for e in again) == [today] * len(TABLES)


def test_an_incremental_cycle_covers_the_days_since_the_last_recorded_one(
    sync_env: Path, sim: Simulator, bound_definitions
) -> None:
    _prime_store(sim, sync_env)
    today = datetime.now(UTC).date()
    last_seen = today - timedelta(days=3)
    older = today - timedelta(days=5)
    with dg.instance_for_test() as instance:
        for table in TABLES:  # as if this instance last recorded a cycle three days ago
            for day in (older, last_seen):
                instance.report_runless_asset_event(
                    dg.AssetMaterialization(asset_key=table, partition=str(day))
                )
        job = bound_definitions.resolve_job_def("dynamics_sync_job")
        assert job.execute_in_process(instance=instance, partition_key=str(today)).success
        days = {str(today - timedelta(days=n)) for n in range(4)} | {str(older)}
        # The day between the two recorded ones stays missing: no cycle recorded here read it.
        assert _materialized(instance) == {t: days for t in TABLES}


def test_a_run_launched_for_one_table_records_every_table_the_cycle_wrote(
    sync_env: Path, sim: Simulator
) -> None:
    """A backfill from the `contacts` page runs a whole cycle: accounts and the activity log
    changed too, and must not look stale."""
    _prime_store(sim, sync_env)
    org = sim.org
    account = next(a for a in org.account_ids() if org.contacts_of(a))
    org.update_account(account, address1_city="Recorded everywhere")
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [dynamics_sync],
            selection=["contacts"],
            partition_key=today,
            resources=build_resources(),
            instance=instance,
        )
        assert result.success
        for table in TABLES:
            event = instance.get_latest_materialization_event(dg.AssetKey(table))
            assert event is not None and event.run_id == result.run_id, table
            materialization = event.asset_materialization
            assert materialization.partition == today, table
            assert "dagster/row_count" in materialization.metadata, table
        activity = instance.get_latest_materialization_event(dg.AssetKey("activity_log"))
        logged = activity.asset_materialization.metadata["activities_logged"].value
        assert logged == len(org.contacts_of(account))
