"""Activity retention: a purge deletes only activity rows older than the retention, in one
transaction, records itself, and leaves everything else as it was. Off by default."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from dynsync_dagster.settings import SyncSettings
from dynsync_dagster.store.connection import open_store
from dynsync_dagster.store.publish import open_published, read_record
from dynsync_dagster.store.retention import purge_activity
from tests.support import REPO, Harness, clean_env, pick_sized, run_cli

DAY = 86400


def _every_table(db: Path) -> dict[str, list[tuple]]:
    """Every table of the published store, sorted (what readers see)."""
    with open_published(db) as con:
        tables = [r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()]
        return {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}


def _two_ages_of_activity(harness: Harness) -> tuple[str, str]:
    """Activity rows on two accounts' contacts: one change made now, one two days later (the
    simulator's clock moved on)."""
    org = harness.sim.org
    harness.cycle()
    old, young = pick_sized(harness.sim, 8), pick_sized(harness.sim, 12)
    org.update_account(old, name="Changed long ago")
    harness.cycle()
    org.advance_clock(2 * DAY)
    org.update_account(young, name="Changed lately")
    harness.cycle()
    return old, young


def test_a_purge_deletes_older_rows_only_and_leaves_the_rest_untouched(
    harness: Harness,
) -> None:
    old, young = _two_ages_of_activity(harness)
    before = _every_table(harness.db)
    assert len(before["activity_log"]) == 8 + 12
    generation = read_record(harness.db).generation

    # A day's retention, two days on: the first change is older, the second is not.
    now = datetime.now(UTC) + timedelta(days=2)
    result = purge_activity(harness.db, 1, now=now, trigger="test")
    assert (result.rows_deleted, result.rows_kept) == (8, 12)
    assert "deleted 8 activity row(s)" in result.summary()

    after = _every_table(harness.db)  # the published file: readers see the purge
    assert read_record(harness.db).generation == generation + 1
    kept = after.pop("activity_log")
    logged = before.pop("activity_log")
    assert kept == [r for r in logged if str(r[3]) == young]  # r[3]: accountid
    assert {str(r[3]) for r in logged if r not in kept} == {old}
    purges = after.pop("activity_purges")
    assert [(p[1], p[3], p[4], p[5]) for p in purges] == [(1, 8, 12, "test")]
    assert purges[0][2] == now - timedelta(days=1)  # the cutoff
    after.pop("store_version"), before.pop("store_version")
    assert after == before  # accounts, contacts, sync_runs, sync_state, ... as they were

    # Nothing older left: a second purge deletes nothing, and says so.
    again = purge_activity(harness.db, 1, now=now, trigger="test")
    assert (again.rows_deleted, again.rows_kept) == (0, 12)


def test_retention_is_off_by_default_and_purge_deletes_nothing(harness: Harness) -> None:
    assert SyncSettings.load(REPO / "dynsync.yaml").activity_log_retention_days is None
    _two_ages_of_activity(harness)
    before = _every_table(harness.db)
    result = purge_activity(harness.db, None)
    assert result.rows_deleted == 0
    assert result.summary().startswith("activity retention is off")
    assert _every_table(harness.db) == before


def test_dynsync_purge_on_the_command_line(harness: Harness, tmp_path: Path) -> None:
    """Off: says so and deletes nothing. On: deletes the rows older than the setting."""
    org = harness.sim.org
    harness.cycle()
    org.advance_clock(-3 * DAY)  # a change Dynamics stamped three days ago
    org.update_account(pick_sized(harness.sim, 8), name="Three days ago")
    harness.cycle()
    org.advance_clock(3 * DAY)
    org.update_account(pick_sized(harness.sim, 12), name="Today")
    harness.cycle()
    env = clean_env(tmp_path)
    env["DYNSYNC_DUCKDB_PATH"] = str(harness.db)
    env["DYNSYNC_CONFIG"] = str(REPO / "dynsync.yaml")
    off = run_cli(["purge"], env, REPO)
    assert off.returncode == 0, off.stderr
    assert off.stdout.startswith("activity retention is off (activity_log_retention_days")

    config = tmp_path / "retention.yaml"
    config.write_text((REPO / "dynsync.yaml").read_text() + "\nactivity_log_retention_days: 2\n")
    env["DYNSYNC_CONFIG"] = str(config)
    on = run_cli(["purge"], env, REPO)
    assert on.returncode == 0, on.stderr
    assert on.stdout.startswith("deleted 8 activity row(s) that occurred before")
    assert on.stdout.strip().endswith("(2 days); 12 kept")
    with open_store(harness.db, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM activity_log").fetchone()[0] == 12


@pytest.mark.parametrize("days", [0, -1, "ninety", True])
def test_a_bad_retention_is_refused_naming_the_setting(days: object) -> None:
    from dynsync_dagster.settings import SettingsError

    with pytest.raises(SettingsError, match="activity_log_retention_days must be a whole number"):
        SyncSettings.from_mapping({"activity_log_retention_days": days})
