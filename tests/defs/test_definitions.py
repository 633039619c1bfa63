"""The Dagster code location loads, and the schedule decides as documented."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from dynsync_dagster.defs.schedules import every_five_minutes, sync_job
from tests.support import REPO, bound_now


def test_definitions_load_with_the_asset_graph(definitions) -> None:
    d = definitions
    keys = {k.to_user_string() for k in d.resolve_all_asset_keys()}
    assert keys == {
        "dynamics/account",
        "dynamics/contact",
        "sync_fields",
        "accounts",
        "contacts",
        "activity_log",
        "sync_runs",
        "sync_status",
    }
    graph = d.resolve_asset_graph()
    assert dg.AssetKey("accounts") in graph.get(dg.AssetKey("contacts")).parent_keys
    assert dg.AssetKey(["dynamics", "contact"]) in graph.get(dg.AssetKey("contacts")).parent_keys
    assert dg.AssetKey("contacts") in graph.get(dg.AssetKey("activity_log")).parent_keys
    assert d.resolve_job_def("dynamics_sync_job") is not None
    schedule = d.resolve_schedule_def("every_five_minutes")
    assert schedule.cron_schedule == "*/5 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def test_schedule_requests_todays_partition_when_idle() -> None:
    with dg.instance_for_test() as instance:
        when = datetime(2026, 3, 4, 10, 5, tzinfo=UTC)
        ctx = dg.build_schedule_context(instance=instance, scheduled_execution_time=when)
        request = every_five_minutes(ctx)
        assert isinstance(request, dg.RunRequest)
        assert request.partition_key == "2026-03-04"


def test_schedule_skips_while_a_sync_is_in_flight(monkeypatch, definitions) -> None:
    for name in (
        "DYNAMICS_URL",
        "DYNAMICS_TENANT_ID",
        "DYNAMICS_CLIENT_ID",
        "DYNAMICS_CLIENT_SECRET",
    ):
        monkeypatch.setenv(name, "placeholder")  # the run is only recorded, never executed
    with dg.instance_for_test() as instance:
        job = bound_now(definitions).resolve_job_def(sync_job.name)
        run = instance.create_run_for_job(
            job_def=job,
            tags={"dagster/partition": "2026-03-04"},
            status=dg.DagsterRunStatus.STARTED,
        )
        ctx = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=datetime(2026, 3, 4, 10, 5, tzinfo=UTC)
        )
        decision = every_five_minutes(ctx)
        assert isinstance(decision, dg.SkipReason)
        assert run.run_id[:8] in decision.skip_message


def test_dagster_and_dg_validate_the_project_from_the_root(tmp_path) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = REPO
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    bindir = Path(sys.executable).parent
    for cmd in (
        [str(bindir / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        [str(bindir / "dg"), "check", "defs"],
    ):
        done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, (cmd, done.stdout[-2000:], done.stderr[-2000:])
