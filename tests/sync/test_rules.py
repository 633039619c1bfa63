"""The account-sync rules (README.md, "The rules"), each against the simulator over HTTPS."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from dynsync_dagster.simulator import Simulator
from dynsync_dagster.store.connection import open_store
from dynsync_dagster.store.schema import SchemaChange
from dynsync_dagster.sync import rules
from dynsync_dagster.sync.local_edit import LocalEditError, set_account_field
from dynsync_dagster.sync.rules import (
    MergeContext,
    _account_values_sql,
    account_columns,
    effective_accounts_sql,
)
from tests.support import Harness, canonical


def _sized(harness: Harness, n: int) -> str:
    org = harness.sim.org
    return next(a for a in org.account_ids() if len(org.contacts_of(a)) == n)


def test_account_update_logs_one_row_per_contact_per_changed_field(harness: Harness) -> None:
    harness.cycle()
    account = _sized(harness, 12)
    old = harness.sim.org.get_account(account)
    harness.sim.org.update_account(account, name="Renamed Ltd", address1_city="Utrecht")
    modified = harness.sim.org.get_account(account)["modifiedon"]
    result = harness.cycle()
    assert result.counts.activities_logged == 24
    rows = harness.rows(
        "SELECT attribute, old_value, new_value, source, reason, occurred_at, activity_type "
        "FROM activity_log WHERE accountid = ? ORDER BY attribute, contactid",
        [account],
    )
    assert len(rows) == 24
    names = [r for r in rows if r[0] == "name"]
    assert len(names) == 12
    assert {(r[1], r[2], r[3], r[6]) for r in names} == {
        (old["name"], "Renamed Ltd", "Dynamics sync", "Change Data Value")
    }
    assert {r[5] for r in rows} == {modified}
    assert (
        harness.scalar(
            "SELECT count(*) FROM contacts WHERE accountid = ? AND account_name = 'Renamed Ltd'",
            [account],
        )
        == 12
    )


def test_contact_limit_logs_at_the_limit_and_suppresses_above(harness: Harness) -> None:
    harness.settings = harness.settings.__class__(
        harness.settings.account_fields, harness.settings.contact_fields, 8
    )
    harness.cycle()
    at_limit, above = _sized(harness, 8), _sized(harness, 12)
    harness.sim.org.update_account(at_limit, name="Eight")
    harness.sim.org.update_account(above, name="Twelve")
    result = harness.cycle()
    assert harness.scalar("SELECT count(*) FROM activity_log WHERE accountid = ?", [at_limit]) == 8
    assert harness.scalar("SELECT count(*) FROM activity_log WHERE accountid = ?", [above]) == 0
    # The change still reached every contact, and the suppression is on record.
    assert (
        harness.scalar(
            "SELECT count(*) FROM contacts WHERE accountid = ? AND account_name = 'Twelve'", [above]
        )
        == 12
    )
    assert result.counts.suppressed_accounts == [
        {"accountid": above, "contacts": 12, "rows_suppressed": 12}
    ]
    assert harness.rows(
        "SELECT CAST(accountid AS VARCHAR), contact_count, contact_limit, attributes, rows_suppressed "
        "FROM activity_suppressions"
    ) == [(above, 12, 8, ["name"], 12)]


def test_rereading_an_unchanged_version_is_not_an_update(harness: Harness) -> None:
    harness.cycle()
    account = _sized(harness, 8)
    contact = harness.sim.org.contacts_of(account)[0]
    set_account_field(harness.db, contact, "address1_city", "Local City")
    # A backfill window re-reads every record with its unchanged version.
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    harness.cycle(window=(now - timedelta(days=400), now + timedelta(days=1)))
    assert (
        harness.scalar(
            "SELECT count(*) FROM contacts WHERE accountid = ? AND account_address1_city = 'Local City'",
            [account],
        )
        == 8
    )


def test_local_edit_survives_until_dynamics_updates_the_account(harness: Harness) -> None:
    harness.cycle()
    org = harness.sim.org
    account = _sized(harness, 8)
    contact = org.contacts_of(account)[0]
    original_city = org.get_account(account)["address1_city"]
    edit = set_account_field(harness.db, contact, "address1_city", "Local City")
    assert edit.contacts_changed == 8
    local = harness.rows(
        "SELECT source, old_value, new_value FROM activity_log WHERE accountid = ?", [account]
    )
    assert len(local) == 8 and {r[0] for r in local} == {"Local update"}
    assert {(r[1], r[2]) for r in local} == {(original_city, "Local City")}
    assert harness.rows("SELECT count(*) FROM accounts WHERE address1_city = 'Local City'") == [
        (0,)
    ]

    # A cycle in which the account did not change keeps the edit.
    org.update_account(_sized(harness, 12), name="Someone else")
    harness.cycle()
    assert (
        harness.scalar(
            "SELECT count(*) FROM contacts WHERE accountid = ? AND account_address1_city = 'Local City'",
            [account],
        )
        == 8
    )

    # Dynamics updates another field of the account: all synced fields overwrite, logged.
    org.update_account(account, accountnumber="ACC-NEW")
    harness.cycle()
    cities = harness.rows(
        "SELECT DISTINCT account_address1_city FROM contacts WHERE accountid = ?", [account]
    )
    assert cities == [(original_city,)]
    back = harness.rows(
        "SELECT old_value, new_value, source FROM activity_log WHERE accountid = ? "
        "AND attribute = 'address1_city' AND source = 'Dynamics sync'",
        [account],
    )
    assert len(back) == 8 and {tuple(r) for r in back} == {
        ("Local City", original_city, "Dynamics sync")
    }
    assert (
        harness.scalar(
            "SELECT count(*) FROM activity_log WHERE accountid = ? AND attribute = 'accountnumber'",
            [account],
        )
        == 8
    )
    assert harness.scalar("SELECT count(*) FROM local_edits") == 0


def test_update_that_changes_no_field_still_restores_local_values(harness: Harness) -> None:
    harness.cycle()
    org = harness.sim.org
    account = _sized(harness, 8)
    set_account_field(harness.db, org.contacts_of(account)[0], "numberofemployees", "77")
    org.touch_account(account)
    harness.cycle()
    assert (
        harness.scalar(
            "SELECT count(*) FROM activity_log WHERE accountid = ? AND source = 'Dynamics sync' "
            "AND attribute = 'numberofemployees' AND old_value = '77'",
            [account],
        )
        == 8
    )


def test_local_edit_errors_change_nothing(harness: Harness) -> None:
    harness.cycle()
    org = harness.sim.org
    before = harness.snapshot()
    orphan = harness.rows(
        "SELECT CAST(contactid AS VARCHAR) FROM contacts WHERE accountid IS NULL"
    )[0][0]
    with pytest.raises(LocalEditError, match="accounts are created in Dynamics only"):
        set_account_field(harness.db, orphan, "name", "New Co")
    contact = org.contacts_of(_sized(harness, 8))[0]
    with pytest.raises(LocalEditError, match="not a synced account field"):
        set_account_field(harness.db, contact, "creditonhold", "true")
    with pytest.raises(LocalEditError, match="not a valid value"):
        set_account_field(harness.db, contact, "numberofemployees", "many")
    with pytest.raises(LocalEditError, match="not an option"):
        set_account_field(harness.db, contact, "industrycode", "999")
    assert harness.snapshot() == before
    assert org.account_ids() == sorted(org.account_ids())  # and no account appeared anywhere


def test_contact_moving_account_takes_the_new_values_logged(harness: Harness) -> None:
    harness.cycle()
    org = harness.sim.org
    source, target = _sized(harness, 12), _sized(harness, 8)
    mover = org.contacts_of(source)[0]
    org.reparent_contact(mover, target, "account")
    harness.cycle()
    row = harness.rows(
        "SELECT CAST(accountid AS VARCHAR), account_name FROM contacts WHERE contactid = ?", [mover]
    )[0]
    assert row == (target, org.get_account(target)["name"])
    logged = harness.rows(
        "SELECT attribute, reason FROM activity_log WHERE contactid = ? AND attribute = 'name'",
        [mover],
    )
    assert logged == [("name", "Contact moved to another account in Dynamics")]


def test_contact_with_a_contact_parent_has_no_account_values(harness: Harness) -> None:
    harness.cycle()
    org = harness.sim.org
    account = _sized(harness, 8)
    mover = org.contacts_of(account)[0]
    other = org.contacts_of(_sized(harness, 12))[0]
    org.reparent_contact(mover, other, "contact")
    harness.cycle()
    row = harness.rows(
        "SELECT accountid, parentcustomerid_type, account_name FROM contacts WHERE contactid = ?",
        [mover],
    )[0]
    assert row == (None, "contact", None)


def test_a_cycle_run_twice_logs_once(harness: Harness) -> None:
    harness.cycle()
    harness.sim.org.update_account(_sized(harness, 8), name="Once")
    harness.cycle()
    logged = harness.scalar("SELECT count(*) FROM activity_log")
    harness.cycle()
    assert harness.scalar("SELECT count(*) FROM activity_log") == logged == 8


def test_deleted_account_is_kept_and_flagged(harness: Harness) -> None:
    harness.cycle()
    account = _sized(harness, 8)
    harness.sim.org.delete_account(account)
    harness.cycle()
    assert harness.rows(
        "SELECT is_deleted, deleted_at IS NOT NULL FROM accounts WHERE accountid = ?", [account]
    ) == [(True, True)]
    assert (
        harness.scalar(
            "SELECT count(*) FROM contacts WHERE accountid = ? AND NOT is_deleted", [account]
        )
        == 0
    )


def test_expired_delta_token_resyncs_and_reconciles_deletes(harness: Harness) -> None:
    harness.cycle()
    org = harness.sim.org
    gone = org.contacts_of(_sized(harness, 8))[0]
    org.delete_contact(gone)
    org.expire_delta_tokens()
    result = harness.cycle()
    assert result.modes == {"account": "resync", "contact": "resync"}
    assert harness.scalar("SELECT is_deleted FROM contacts WHERE contactid = ?", [gone]) is True
    assert harness.cycle().modes == {"account": "delta", "contact": "delta"}


def test_field_added_then_removed(harness: Harness) -> None:
    harness.cycle()
    s = harness.settings
    harness.settings = s.__class__((*s.account_fields, "telephone1"), s.contact_fields, 5000)
    result = harness.cycle()
    assert result.modes["account"] == "full"
    missing = harness.scalar(
        "SELECT count(*) FROM contacts c JOIN accounts a USING (accountid) "
        "WHERE c.account_telephone1 IS DISTINCT FROM a.telephone1"
    )
    assert missing == 0
    assert harness.scalar("SELECT count(*) FROM activity_log") == 0  # the fill is not a change
    harness.settings = s
    harness.cycle()
    names = {r[0] for r in harness.rows("SELECT column_name FROM information_schema.columns")}
    assert "telephone1" not in names and "account_telephone1" not in names


def test_new_contacts_take_pending_local_edits_else_the_account_values(harness: Harness) -> None:
    """Rule 4 on both ways of reading the account values a new contact takes: with a pending
    local edit (the edits' overlay) and without any (the accounts' own columns)."""
    result = harness.cycle()
    org = harness.sim.org
    edited, plain = _sized(harness, 8), _sized(harness, 12)
    set_account_field(harness.db, org.contacts_of(edited)[0], "address1_city", "Local City")
    joined = org.create_contact(edited, "account", firstname="New", lastname="Edited")
    harness.cycle()
    assert harness.rows(
        "SELECT account_address1_city FROM contacts WHERE contactid = ?", [joined]
    ) == [("Local City",)]

    # Without local edits the shortcut reads exactly what the overlay would.
    with open_store(harness.db.with_name(harness.db.name + ".work")) as con:
        con.execute("BEGIN TRANSACTION")
        con.execute("DELETE FROM local_edits")
        ctx = MergeContext(result.plan, SchemaChange({}, {}), {}, "t", datetime.now(UTC), 5000)
        acc = account_columns(result.plan)
        shortcut = con.execute(
            f"SELECT * FROM ({_account_values_sql(con, ctx, acc, '')}) ORDER BY accountid"
        ).fetchall()
        overlay = effective_accounts_sql(result.plan.synced("account"))
        assert shortcut == con.execute(f"SELECT * FROM ({overlay}) ORDER BY accountid").fetchall()
        assert len(shortcut) == len(org.account_ids())
        con.execute("ROLLBACK")
    harness.sim.org.create_contact(plain, "account", firstname="New", lastname="Plain")
    harness.cycle()
    assert (
        harness.scalar(
            "SELECT count(DISTINCT account_name) FROM contacts WHERE accountid = ?", [plain]
        )
        == 1
    )


def test_first_load_of_accounts_stores_what_the_general_path_stores(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Into an empty store the accounts are read from the stage as they are (acc_upd a view);
    the general path (a copy of the new or newer ones) must give the same store and counts."""
    first = Harness(sim, tmp_path / "first" / "dynsync.duckdb")
    fast = first.cycle()
    general_apply = rules._apply_accounts
    with monkeypatch.context() as m:
        m.setattr(
            rules,
            "_apply_accounts",
            lambda con, ctx, counts, refill: general_apply(con, ctx, counts, True),
        )
        other = Harness(sim, tmp_path / "general" / "dynsync.duckdb")
        general = other.cycle()
    assert fast.counts == general.counts
    assert canonical(first.db) == canonical(other.db)
    filtered = "SELECT entity, record_id FROM filtered_records ORDER BY ALL"
    assert first.rows(filtered) == other.rows(filtered)
    # The view is gone with the cycle: the next one writes the store as usual.
    sim.org.update_account(_sized(first, 8), name="Renamed")
    first.cycle()
    other.cycle()
    assert canonical(first.db) == canonical(other.db)
