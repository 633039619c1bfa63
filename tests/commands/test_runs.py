"""Which Dagster instance a command's run goes to, and how a failed run reads on the terminal."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from dynsync_dagster.commands import cli, runs
from dynsync_dagster.commands.dev import dev_environment
from dynsync_dagster.simulator import Simulator
from dynsync_dagster.store.publish import open_published
from tests.support import REPO, clean_env, run_cli


def _runs_in(home: Path) -> list[dg.DagsterRun]:
    """The runs recorded in the instance at `home` (opened the public way: DAGSTER_HOME)."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DAGSTER_HOME", str(home))
        with dg.DagsterInstance.get() as instance:
            return list(instance.get_runs())


def _use_simulator(monkeypatch: pytest.MonkeyPatch, sim: Simulator, db: Path) -> None:
    for name in list(os.environ):
        if name.startswith(("DYNAMICS_", "DYNSYNC_", "DAGSTER_")):
            monkeypatch.delenv(name)
    for name, value in sim.env(flow="client_credentials").items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DYNSYNC_DUCKDB_PATH", str(db))
    monkeypatch.setenv("DYNSYNC_CONFIG", str(REPO / "dynsync.yaml"))


def test_the_default_instance_is_the_projects_own() -> None:
    # Where `dynsync dev` (and the README's `dagster dev`) look for runs.
    assert runs.PROJECT_DAGSTER_HOME == REPO / "dagster_home"
    assert (runs.PROJECT_DAGSTER_HOME / "dagster.yaml").exists()
    dev_env = dev_environment({}, Path("x.duckdb"), base={})
    assert dev_env["DAGSTER_HOME"] == str(runs.PROJECT_DAGSTER_HOME)


def test_sync_without_dagster_home_records_its_run_in_the_project_instance(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # The project's instance, moved to tmp_path so the test adds nothing to the checkout's.
    project_home = tmp_path / "project" / "dagster_home"
    monkeypatch.setattr(runs, "PROJECT_DAGSTER_HOME", project_home)
    _use_simulator(monkeypatch, sim, tmp_path / "store.duckdb")
    assert cli.main(["sync"]) == 0
    first = capsys.readouterr().out
    assert cli.main(["sync"]) == 0
    second = capsys.readouterr().out

    recorded = _runs_in(project_home)
    assert len(recorded) == 2
    assert {r.tags["dynsync/trigger"] for r in recorded} == {"cli"}
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in recorded)
    # Each summary is about its own run, even when nothing changed and the published file
    # still holds the previous cycle.
    newest, oldest = recorded
    assert first.startswith(f"cycle {oldest.run_id[:8]}: accounts full")
    assert second.startswith(f"cycle {newest.run_id[:8]}: accounts delta (0 read)")


def test_a_failed_cycle_reads_without_class_paths(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "dynsync.yaml"
    config.write_text("account_fields: [name, industrycod]\ncontact_fields: [firstname]\n")
    db = tmp_path / "store.duckdb"
    env = clean_env(tmp_path) | sim.env(flow="client_credentials")
    env.update(DAGSTER_HOME=str(tmp_path / "home"), DYNSYNC_DUCKDB_PATH=str(db))
    env["DYNSYNC_CONFIG"] = str(config)
    result = run_cli(["sync"], env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("dynsync sync: ")
    assert "industrycod (did you mean industrycode?)" in result.stderr
    assert result.stderr.count("\n") == 1
    assert "Error" not in result.stderr and "dynsync_dagster" not in result.stderr
    with open_published(db) as con:
        (error,) = con.execute("SELECT error FROM sync_runs WHERE outcome = 'failed'").fetchone()
    assert "industrycod (did you mean industrycode?)" in error
    assert "FieldSelectionError" not in error and not error.startswith("dynsync_dagster")


def test_a_tick_without_connection_settings_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, definitions
) -> None:
    """What the schedule's tick asks for, run with no DYNAMICS_* set: the run's failure is one
    line naming the variables (the line the CLI prints too), with no Dagster class path."""
    for name in list(os.environ):
        if name.startswith(("DYNAMICS_", "DYNSYNC_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DYNSYNC_DUCKDB_PATH", str(tmp_path / "store.duckdb"))
    schedule = definitions.resolve_schedule_def("every_five_minutes")
    with dg.instance_for_test() as instance:
        tick = datetime.now(UTC).replace(second=0, microsecond=0)
        context = dg.build_schedule_context(
            instance=instance,
            scheduled_execution_time=tick,
            repository_def=definitions.get_repository_def(),
        )
        (request,) = schedule.evaluate_tick(context).run_requests
        job = definitions.resolve_job_def("dynamics_sync_job")
        result = job.execute_in_process(
            instance=instance,
            partition_key=request.partition_key,
            tags=request.tags,
            raise_on_error=False,
        )
    assert not result.success
    message = runs._failure_message(result)
    assert message.startswith("missing environment variable(s) DYNAMICS_URL, DYNAMICS_TENANT_ID")
    assert "dagster" not in message and "Failure" not in message
    assert not (tmp_path / "store.duckdb").exists()
