"""A first full cycle copies everything; a cycle without changes changes nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest

from dynsync_dagster.dynamics.fields import FieldSelectionError
from dynsync_dagster.store.connection import open_store, working_path
from dynsync_dagster.store.publish import read_record
from tests.support import Harness


def test_full_sync_counts_and_values_equal_the_simulator(harness: Harness) -> None:
    org = harness.sim.org
    result = harness.cycle()
    assert result.modes == {"account": "full", "contact": "full"}
    assert harness.scalar("SELECT count(*) FROM accounts") == len(org.account_ids())
    assert harness.scalar("SELECT count(*) FROM contacts") == len(org.contact_ids())
    assert harness.scalar("SELECT count(*) FROM activity_log") == 0  # first values are not changes

    for account_id in org.account_ids():
        want = org.get_account(account_id)
        got = harness.rows(
            "SELECT name, accountnumber, industrycode, revenue, numberofemployees, address1_city, "
            "versionnumber FROM accounts WHERE accountid = ?",
            [account_id],
        )[0]
        assert got[:3] == (want["name"], want["accountnumber"], want["industrycode"])
        assert got[3] == (
            None
            if want["revenue"] is None
            else Decimal(str(want["revenue"])).quantize(Decimal("0.0001"))
        )
        assert got[4:] == (want["numberofemployees"], want["address1_city"], want["versionnumber"])


def test_contacts_carry_their_accounts_fields(harness: Harness) -> None:
    org = harness.sim.org
    harness.cycle()
    stored = {
        r[0]: r[1:]
        for r in harness.rows(
            "SELECT CAST(contactid AS VARCHAR), CAST(accountid AS VARCHAR), account_name, "
            "account_industrycode, account_industrycode_label, firstname FROM contacts"
        )
    }
    assert len(stored) == len(org.contact_ids())
    for contact_id in org.contact_ids():
        c = org.get_contact(contact_id)
        row = stored[contact_id]
        assert row[4] == c["firstname"]
        if c["parentcustomeridtype"] == "account":
            account = org.get_account(c["parentcustomerid"])
            assert row[0] == c["parentcustomerid"]
            assert row[1:3] == (account["name"], account["industrycode"])
            assert (row[3] is None) == (account["industrycode"] is None)
        else:  # no parent, or a contact as parent: no account, so no account values
            assert row[:4] == (None, None, None, None)
    orphans = harness.scalar("SELECT count(*) FROM contacts WHERE accountid IS NULL")
    assert orphans == 4 + 3


def test_unreadable_and_unselected_columns_never_land(harness: Harness) -> None:
    harness.cycle()
    columns = {
        (t, c)
        for t, c in harness.rows("SELECT table_name, column_name FROM information_schema.columns")
    }
    names = {c for _t, c in columns}
    assert "creditlimit" in names and "account_creditlimit" in names  # secured, readable
    for hidden in (
        "creditonhold",
        "account_creditonhold",
        "governmentid",
        "jobtitle",
        "account_telephone1",
        "isprivate",
    ):
        assert hidden not in names
    reasons = dict(
        harness.rows(
            "SELECT entity || '.' || field, reason FROM sync_fields WHERE NOT synced AND selected"
        )
    )
    assert "secured" in reasons["account.creditonhold"]
    assert "secured" in reasons["contact.governmentid"]
    assert (
        harness.scalar(
            "SELECT reason FROM sync_fields WHERE entity = 'contact' AND field = 'jobtitle'"
        )
        == "not selected in the settings file"
    )


def test_second_cycle_without_changes_changes_nothing(harness: Harness) -> None:
    harness.cycle()
    before = harness.snapshot()
    result = harness.cycle()
    assert result.modes == {"account": "delta", "contact": "delta"}
    assert result.rows_read == {"account": 0, "contact": 0}
    assert harness.snapshot() == before
    # Nothing changed, so the published file is not copied again: its sync_runs still ends at
    # the first cycle, the working store has both, and the publish record names the second
    # cycle as the last one that found the published file current.
    assert result.published is None
    assert harness.scalar("SELECT count(*) FROM sync_runs WHERE outcome = 'success'") == 1
    with open_store(working_path(harness.db), read_only=True) as con:
        ran = con.execute("SELECT count(*) FROM sync_runs WHERE outcome = 'success'").fetchone()
    assert ran == (2,)
    assert read_record(harness.db).confirmed_run_id == result.run_id


def test_unknown_field_fails_before_anything_is_written(harness: Harness) -> None:
    harness.cycle()
    before = harness.snapshot()
    harness.settings = harness.settings.__class__(("name", "industrycod", "nosuchfield"), (), 5000)
    with pytest.raises(FieldSelectionError) as err:
        harness.cycle()
    assert "industrycod (did you mean industrycode?)" in str(err.value)
    assert "nosuchfield" in str(err.value)
    assert harness.snapshot() == before
    assert (
        harness.scalar("SELECT outcome FROM sync_runs ORDER BY started_at DESC LIMIT 1") == "failed"
    )


def test_the_client_never_writes(harness: Harness) -> None:
    harness.cycle()
    harness.sim.org.update_account(harness.sim.org.account_ids()[0], name="x")
    harness.cycle()
    assert list(harness.sim.write_attempts) == []
    methods = {r.method for r in harness.sim.requests}
    assert methods <= {"GET", "POST"}  # POST only to the token endpoint
    assert all(r.method == "GET" for r in harness.sim.requests if r.path.startswith("/api/"))
