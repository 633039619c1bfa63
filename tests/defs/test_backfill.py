"""Backfills are Marketo's date-range re-sync: one run re-reads the range with the same rules."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg

from dynsync_dagster.simulator import Simulator
from dynsync_dagster.store.connection import open_store
from dynsync_dagster.store.publish import writing
from dynsync_dagster.sync.local_edit import set_account_field


def _q(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    with open_store(db, read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def test_a_range_backfill_is_one_run_that_repairs_gaps_and_keeps_local_edits(
    sync_env: Path, sim: Simulator, bound_definitions
) -> None:
    today = datetime.now(UTC).date()
    org = sim.org
    with dg.instance_for_test() as instance:
        job = bound_definitions.resolve_job_def("dynamics_sync_job")
        assert job.execute_in_process(instance=instance, partition_key=str(today)).success

        days, by_day = _three_days_of_history(sim, today)
        damaged, edited = by_day[days[0]], by_day[days[2]]
        _leave_a_gap(sync_env, damaged)
        contact = _edit_locally(sync_env, sim, edited)

        result = _backfill(job, instance, days[0], days[2])
        assert result.success
        runs = instance.get_runs()
        assert len(runs) == 2  # the whole range was one run

    _assert_the_run_reread_the_range(sync_env, sim, days)
    assert _q(sync_env, "SELECT name FROM accounts WHERE accountid = ?", [damaged]) == [
        (org.get_account(damaged)["name"],)
    ]
    if contact is not None:
        assert _q(
            sync_env,
            "SELECT DISTINCT account_address1_city FROM contacts WHERE accountid = ?",
            [edited],
        ) == [("Kept locally",)]
    # Nothing changed since the first cycle, so the catch-up read nothing; the readers stay on
    # change tracking.
    modes_after = _q(sync_env, "SELECT mode FROM sync_state ORDER BY entity")
    assert modes_after == [("delta",), ("delta",)]


def _three_days_of_history(sim: Simulator, today: date) -> tuple[list[date], dict[date, str]]:
    """The last three days before today on which an account was last modified, and one such
    account per day."""
    org = sim.org
    by_day: dict[date, str] = {}
    for a in org.account_ids():
        day = org.get_account(a)["modifiedon"].date()
        if day < today:
            by_day.setdefault(day, a)
    days = sorted(by_day)[-3:]
    assert len(days) == 3
    return days, by_day


def _leave_a_gap(db: Path, account: str) -> None:
    """The store missed the latest version of one account (older data, other value)."""
    with writing(db, wait_s=5, publish=False) as session:  # the file cycles write
        session.con.execute(
            "UPDATE accounts SET name = 'stale', versionnumber = versionnumber - 1000000 "
            "WHERE accountid = ?",
            [account],
        )


def _edit_locally(db: Path, sim: Simulator, account: str) -> str | None:
    """A local edit of the account's city through one of its contacts, if it has any."""
    contact = next(iter(sim.org.contacts_of(account)), None)
    if contact is not None:
        set_account_field(db, contact, "address1_city", "Kept locally")
    return contact


def _backfill(
    job, instance: dg.DagsterInstance, first: date, last: date
) -> dg.ExecuteInProcessResult:
    """A single-run backfill of the days first..last, as the UI launches one."""
    return job.execute_in_process(
        instance=instance,
        tags={
            "dagster/asset_partition_range_start": str(first),
            "dagster/asset_partition_range_end": str(last),
            "dagster/backfill": "test-backfill",
        },
    )


def _assert_the_run_reread_the_range(db: Path, sim: Simulator, days: list[date]) -> None:
    """The last sync_runs row is the backfill: its window, its mode, every account in range."""
    window_start, window_end, modes, read = _q(
        db,
        "SELECT window_start, window_end, account_mode, accounts_read FROM sync_runs "
        "ORDER BY started_at DESC LIMIT 1",
    )[0]
    assert (window_start.date(), window_end.date()) == (days[0], days[2] + timedelta(days=1))
    assert modes == "delta"  # the catch-up; the window columns say it was a backfill
    org = sim.org
    in_range = [
        a
        for a in org.account_ids()
        if days[0] <= org.get_account(a)["modifiedon"].date() <= days[2]
    ]
    assert read == len(in_range)


def test_a_backfill_catches_up_first_so_it_ends_as_the_scheduled_cycle_would(
    sim: Simulator, tmp_path: Path
) -> None:
    """A window read cannot see deletions: without the catch-up, a backfill that ran before
    the scheduled cycle propagated an account change onto a contact Dynamics had deleted."""
    from tests.support import canonical, cycle, sync_settings

    settings = sync_settings(("name", "address1_city"), ("firstname",))
    store, control = tmp_path / "backfilled.duckdb", tmp_path / "scheduled.duckdb"
    cycle(sim, store, settings)
    cycle(sim, control, settings)
    org = sim.org
    account = next(a for a in org.account_ids() if len(org.contacts_of(a)) >= 2)
    gone = org.contacts_of(account)[-1]
    org.update_account(account, address1_city="Rotterdam")
    org.delete_contact(gone)

    now = datetime.now(UTC)
    backfill = cycle(
        sim, store, settings, window=(now - timedelta(days=3), now + timedelta(days=1))
    )
    assert backfill.modes == {"account": "delta", "contact": "delta"}
    assert backfill.deletions_read["contact"] == 1
    logged_for_gone = _q(store, "SELECT count(*) FROM activity_log WHERE contactid = ?", [gone])
    assert logged_for_gone == [(0,)]
    # The backfill moved the delta links, so the scheduled cycle after it has nothing to read.
    after = cycle(sim, store, settings)
    assert after.rows_read == {"account": 0, "contact": 0}
    cycle(sim, control, settings)
    assert canonical(store) == canonical(control)
