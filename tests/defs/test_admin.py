"""The admin features in Dagster, run for real against the simulator: the Sync Status asset,
the Sync Errors check (WARN) in the sync job, and the daily activity purge job."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from dynsync_dagster.defs.admin import daily_activity_purge
from dynsync_dagster.defs.resources import DynsyncStore
from dynsync_dagster.defs.schedule_state import SCHEDULE_NAME, schedule_state
from dynsync_dagster.defs.schedules import every_five_minutes
from dynsync_dagster.simulator import Simulator
from dynsync_dagster.store.connection import open_store
from tests.support import REPO, pick_sized

DAY = 86400


def _today() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d")


def _config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: str) -> Path:
    """The shipped settings plus `extra`, as this test's DYNSYNC_CONFIG."""
    config = tmp_path / "dynsync.yaml"
    config.write_text((REPO / "dynsync.yaml").read_text() + "\n" + extra + "\n")
    monkeypatch.setenv("DYNSYNC_CONFIG", str(config))
    return config


def _status_meta(result: dg.ExecuteInProcessResult) -> dict:
    [mat] = result.asset_materializations_for_node("sync_status")
    return {k: v.value for k, v in mat.metadata.items()}


def test_sync_status_asset_shows_what_dynsync_status_prints(
    sync_env: Path, bound_definitions: dg.Definitions, sim: Simulator
) -> None:
    with dg.instance_for_test() as instance:
        status_job = bound_definitions.resolve_job_def("sync_status_job")
        before = _status_meta(status_job.execute_in_process(instance=instance))
        assert before["status"].startswith("- no cycle has committed yet: run `dynsync sync`")
        assert "has never ticked on this Dagster instance" in before["schedule"]

        sync = bound_definitions.resolve_job_def("dynamics_sync_job")
        assert sync.execute_in_process(instance=instance, partition_key=_today()).success
        sim.org.advance_clock(5)
        sim.org.update_account(pick_sized(sim, 8), name="Waiting")
        meta = _status_meta(status_job.execute_in_process(instance=instance))
        assert (meta["pending_accounts"], meta["pending_contacts"]) == ("1", "0")
        assert meta["oldest_pending_modifiedon"].endswith(" UTC")
        assert meta["last_committed_modes"] == "accounts full, contacts full"
        assert meta["last_cycle_outcome"] == "success"
        assert meta["synced_last_hour"] == len(sim.org.account_ids()) + len(sim.org.contact_ids())
        assert meta["delta_token_age_s_account"] >= 0
        assert "waiting in Dynamics: accounts 1, contacts 0" in meta["status"]


def test_schedule_state_reads_the_instance(sync_env: Path) -> None:
    with dg.instance_for_test() as instance:
        assert "has never ticked" in schedule_state(instance)
    assert every_five_minutes.name == SCHEDULE_NAME


def test_a_record_set_aside_warns_in_the_sync_job(
    sync_env: Path,
    definitions: dg.Definitions,
    sim: Simulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.support import bound_now

    sim.org.add_attribute("account", "new_score", "DecimalType", precision=2)
    config = (
        (REPO / "dynsync.yaml")
        .read_text()
        .replace("account_fields:\n", "account_fields:\n  - new_score\n")
    )
    (tmp_path / "bad.yaml").write_text(config)
    monkeypatch.setenv("DYNSYNC_CONFIG", str(tmp_path / "bad.yaml"))
    bad = pick_sized(sim, 8)
    with dg.instance_for_test() as instance:
        sync = bound_now(definitions).resolve_job_def("dynamics_sync_job")
        assert sync.execute_in_process(instance=instance, partition_key=_today()).success
        # Stored once; then Dynamics gives it a value its column cannot hold.
        sim.org.update_account(bad, new_score=1e40)
        result = sync.execute_in_process(instance=instance, partition_key=_today())
        assert result.success  # a record set aside does not fail the cycle
        runs = next(
            m
            for m in result.asset_materializations_for_node("dynamics_sync")
            if m.asset_key == dg.AssetKey("sync_runs")
        )
        assert runs.metadata["records_set_aside"].value == 1  # this cycle's
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        warned = checks["no_records_set_aside"]
        assert not warned.passed and warned.severity == dg.AssetCheckSeverity.WARN
        assert warned.metadata["records_set_aside"].value == 1
        [latest] = warned.metadata["latest"].value
        assert (latest["record_id"], latest["field"], latest["set_aside"]) == (
            bad,
            "new_score",
            True,
        )
        others = [c for name, c in checks.items() if name != "no_records_set_aside"]
        assert others and all(c.passed for c in others)


def test_the_purge_job_deletes_older_activity_and_says_so(
    sync_env: Path,
    definitions: dg.Definitions,
    sim: Simulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.support import bound_now

    org = sim.org
    with dg.instance_for_test() as instance:
        sync = bound_now(definitions).resolve_job_def("dynamics_sync_job")
        assert sync.execute_in_process(instance=instance, partition_key=_today()).success
        org.advance_clock(-3 * DAY)  # a change Dynamics stamped three days ago
        org.update_account(pick_sized(sim, 8), name="Three days ago")
        assert sync.execute_in_process(instance=instance, partition_key=_today()).success
        org.advance_clock(3 * DAY)
        org.update_account(pick_sized(sim, 12), name="Today")
        assert sync.execute_in_process(instance=instance, partition_key=_today()).success

        # Off by default: the schedule skips, and the job itself deletes nothing.
        store = DynsyncStore(duckdb_path=str(sync_env), config_path=str(REPO / "dynsync.yaml"))
        tick = daily_activity_purge(
            dg.build_schedule_context(instance=instance, resources={"store": store})
        )
        assert isinstance(tick, dg.SkipReason) and "retention is off" in tick.skip_message
        purge = bound_now(definitions).resolve_job_def("activity_retention_job")
        off = purge.execute_in_process(instance=instance)
        assert off.success
        assert _purge_meta(off)["purge/rows_deleted"] == 0
        assert _purge_meta(off)["purge/summary"].startswith("activity retention is off")

        config = _config(tmp_path, monkeypatch, "activity_log_retention_days: 2")
        store = DynsyncStore(duckdb_path=str(sync_env), config_path=str(config))
        tick = daily_activity_purge(
            dg.build_schedule_context(instance=instance, resources={"store": store})
        )
        assert isinstance(tick, dg.RunRequest)
        on = bound_now(definitions).resolve_job_def("activity_retention_job")
        result = on.execute_in_process(instance=instance)
        assert result.success
        meta = _purge_meta(result)
        assert (meta["purge/rows_deleted"], meta["purge/rows_kept"]) == (8, 12)
        assert meta["purge/retention_days"] == 2
    with open_store(sync_env, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM activity_log").fetchone()[0] == 12
        assert con.execute("SELECT rows_deleted, trigger FROM activity_purges").fetchall() == [
            (8, "dagster")
        ]


def _purge_meta(result: dg.ExecuteInProcessResult) -> dict:
    [observed] = [
        e.event_specific_data.asset_observation
        for e in result.all_events
        if e.event_type_value == "ASSET_OBSERVATION"
    ]
    assert observed.asset_key == dg.AssetKey("activity_log")
    return {k: v.value for k, v in observed.metadata.items()}
