"""Marketo's custom sync filter (new_synctomkto) through real cycles against the simulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest

from dynsync_dagster.simulator import DatasetSpec, Simulator
from dynsync_dagster.store.connection import open_store
from dynsync_dagster.store.integrity import contacts_reference_accounts, propagation_consistent
from dynsync_dagster.sync.local_edit import LocalEditError, set_account_field
from tests.support import cycle, pick_sized, sync_settings

# Every record has the column, empty: the tests set Yes and No themselves.
SPEC = DatasetSpec(accounts=6, contacts=40, sized_accounts=(10,), seed=5, sync_filter_no_share=0)
FIELDS = sync_settings(("name", "industrycode"), ("firstname",))


@pytest.fixture
def org(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(SPEC, state_dir=tmp_path / "sim") as sim:
        yield sim


def _one(db: Path, sql: str, params: list | None = None) -> tuple:
    with open_store(db, read_only=True) as con:
        return con.execute(sql, params or []).fetchone()


def _activity(db: Path, account: str) -> list[tuple]:
    with open_store(db, read_only=True) as con:
        return con.execute(
            "SELECT attribute, old_value, new_value, source FROM activity_log "
            "WHERE accountid = ? ORDER BY attribute, contactid",
            [account],
        ).fetchall()


def test_yes_no_yes_freezes_an_account_then_brings_it_up_to_date(
    org: Simulator, tmp_path: Path
) -> None:
    db = tmp_path / "store.duckdb"
    big = pick_sized(org, 10)
    org.org.update_account(big, new_synctomkto=True)
    cycle(org, db, FIELDS)
    first_name = _one(db, "SELECT name FROM accounts WHERE accountid = ?", [big])[0]

    # Yes -> No, with a change: the account goes stale and keeps its last synced values.
    org.org.update_account(big, new_synctomkto=False, name="Renamed while No")
    stale = cycle(org, db, FIELDS)
    assert stale.counts.accounts_filtered == 1
    assert _one(db, "SELECT name, sync_filtered FROM accounts WHERE accountid = ?", [big]) == (
        first_name,
        True,
    )
    assert _one(
        db, "SELECT count(DISTINCT account_name) FROM contacts WHERE accountid = ?", [big]
    ) == (1,)
    assert _one(db, "SELECT min(account_name) FROM contacts WHERE accountid = ?", [big]) == (
        first_name,
    )
    assert _activity(db, big) == []
    # Later changes while No do not apply either, nor does a deletion of one of its contacts'
    # account values.
    org.org.update_account(big, name="Renamed again while No", industrycode=7)
    cycle(org, db, FIELDS)
    assert _one(db, "SELECT name FROM accounts WHERE accountid = ?", [big]) == (first_name,)

    # No -> Yes: an update from Dynamics, logged on each of its 10 contacts.
    org.org.update_account(big, new_synctomkto=True)
    back = cycle(org, db, FIELDS)
    assert back.counts.accounts_filtered == 0
    assert _one(db, "SELECT name, sync_filtered FROM accounts WHERE accountid = ?", [big]) == (
        "Renamed again while No",
        False,
    )
    rows = _activity(db, big)
    names = [r for r in rows if r[0] == "name"]
    assert len(names) == 10
    assert {(r[1], r[2], r[3]) for r in names} == {
        (first_name, "Renamed again while No", "Dynamics sync")
    }
    with open_store(db, read_only=True) as con:
        assert propagation_consistent(con).passed


def test_a_record_that_says_no_is_never_created_until_it_says_yes(
    org: Simulator, tmp_path: Path
) -> None:
    db = tmp_path / "store.duckdb"
    cycle(org, db, FIELDS)
    some_account = org.org.account_ids()[-1]
    hidden = org.org.create_contact(some_account, firstname="Hidden", new_synctomkto=False)
    filtered = cycle(org, db, FIELDS)
    assert filtered.counts.contacts_filtered == 1
    assert _one(db, "SELECT count(*) FROM contacts WHERE contactid = ?", [hidden]) == (0,)

    org.org.update_contact(hidden, new_synctomkto=True)
    created = cycle(org, db, FIELDS)
    assert created.counts.contacts_filtered == 0
    assert _one(
        db, "SELECT firstname, sync_filtered FROM contacts WHERE contactid = ?", [hidden]
    ) == (
        "Hidden",
        False,
    )
    # A new record takes its first values: no activity rows for it.
    with open_store(db, read_only=True) as con:
        logged = con.execute(
            "SELECT count(*) FROM activity_log WHERE contactid = ?", [hidden]
        ).fetchone()
    assert logged == (0,)


def test_contacts_of_an_account_kept_out_have_null_account_values(
    org: Simulator, tmp_path: Path
) -> None:
    db = tmp_path / "store.duckdb"
    kept_out = org.org.create_account(name="Never synced", new_synctomkto=False)
    member = org.org.create_contact(kept_out, firstname="Member")
    result = cycle(org, db, FIELDS)
    assert result.counts.accounts_filtered == 1
    assert _one(db, "SELECT count(*) FROM accounts WHERE accountid = ?", [kept_out]) == (0,)
    assert _one(
        db, "SELECT accountid, account_name FROM contacts WHERE contactid = ?", [member]
    ) == (UUID(kept_out), None)
    with open_store(db, read_only=True) as con:
        finding = contacts_reference_accounts(con)
        assert finding.passed, finding.description
        assert finding.metadata["contacts_of_filtered_accounts"] == 1
        assert con.execute("SELECT sum(accounts_filtered) FROM sync_runs").fetchone() == (1,)
    # The account turns Yes: it is created, and its contact takes its values.
    org.org.update_account(kept_out, new_synctomkto=True)
    cycle(org, db, FIELDS)
    assert _one(db, "SELECT account_name FROM contacts WHERE contactid = ?", [member]) == (
        "Never synced",
    )
    assert _one(db, "SELECT count(*) FROM filtered_records") == (0,)


def test_an_org_without_the_column_syncs_everything(sim: Simulator, tmp_path: Path) -> None:
    db = tmp_path / "store.duckdb"
    result = cycle(sim, db, FIELDS)
    assert result.plan.sync_filter == {}
    assert result.counts.accounts_filtered == result.counts.contacts_filtered == 0
    assert _one(db, "SELECT count(*) FROM accounts WHERE sync_filtered") == (0,)


def test_a_local_edit_through_a_contact_of_a_kept_out_account_is_refused(
    org: Simulator, tmp_path: Path
) -> None:
    """Its contacts carry NULLs: an edit there would hold a value no joining contact gets."""
    db = tmp_path / "store.duckdb"
    kept_out = org.org.create_account(name="Never synced", new_synctomkto=False)
    member = org.org.create_contact(kept_out, firstname="Member")
    cycle(org, db, FIELDS)
    with pytest.raises(LocalEditError, match="kept out by the sync filter"):
        set_account_field(db, member, "name", "Local name")
    assert _one(db, "SELECT count(*) FROM local_edits") == (0,)


def test_a_cycle_that_only_forgets_a_kept_out_record_is_published(
    org: Simulator, tmp_path: Path
) -> None:
    db = tmp_path / "store.duckdb"
    kept_out = org.org.create_account(name="Never synced", new_synctomkto=False)
    cycle(org, db, FIELDS)
    assert _one(db, "SELECT count(*) FROM filtered_records") == (1,)
    org.org.delete_account(kept_out)
    cycle(org, db, FIELDS)
    # What readers open (the published file) forgets it too, not only the working store.
    assert _one(db, "SELECT count(*) FROM filtered_records") == (0,)


def test_contacts_of_an_account_set_aside_before_it_ever_synced_pass_the_integrity_check(
    org: Simulator, tmp_path: Path
) -> None:
    """An account whose first sighting has a value its column cannot hold is not stored; its
    contacts keep their accountid, like those of an account the filter kept out."""
    db = tmp_path / "store.duckdb"
    org.org.add_attribute("account", "new_score", "DecimalType", precision=2)
    bad = org.org.create_account(name="Unstorable", new_score=1e40)
    member = org.org.create_contact(bad, firstname="Member")
    cycle(org, db, sync_settings(("name", "new_score"), ("firstname",)))
    assert _one(db, "SELECT count(*) FROM accounts WHERE accountid = ?", [bad]) == (0,)
    assert _one(db, "SELECT accountid FROM contacts WHERE contactid = ?", [member]) == (UUID(bad),)
    with open_store(db, read_only=True) as con:
        finding = contacts_reference_accounts(con)
    assert finding.passed, finding.description
