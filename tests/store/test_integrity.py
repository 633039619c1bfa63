"""The integrity checks pass on a synced store and catch each kind of damage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dynsync_dagster.store import integrity
from dynsync_dagster.store.connection import open_store
from dynsync_dagster.store.publish import bump_generation, writing
from dynsync_dagster.sync.local_edit import set_account_field
from tests.support import Harness


def _findings(harness: Harness, now: datetime | None = None) -> dict[str, integrity.Finding]:
    with open_store(harness.db, read_only=True) as con:
        return {
            "refs": integrity.contacts_reference_accounts(con),
            "propagation": integrity.propagation_consistent(con),
            "columns": integrity.only_synced_columns(con),
            "dupes": integrity.no_duplicate_activity(con),
            "fresh": integrity.last_cycle_fresh(con, now),
        }


def _tamper(harness: Harness, sql: str) -> None:
    """Damage the working store and publish it, as if a cycle had written the damage."""
    with writing(harness.db, wait_s=5, run_id="tamper") as session:
        session.con.execute(sql)
        bump_generation(session.con, "tamper", datetime.now(UTC))


def test_checks_pass_after_sync_and_local_edit(harness: Harness) -> None:
    harness.cycle()
    org = harness.sim.org
    account = next(a for a in org.account_ids() if len(org.contacts_of(a)) == 8)
    set_account_field(harness.db, org.contacts_of(account)[0], "numberofemployees", "5")
    found = _findings(harness)
    assert all(f.passed for f in found.values()), {k: f.description for k, f in found.items()}


def test_checks_catch_damage(harness: Harness) -> None:
    harness.cycle()
    org = harness.sim.org
    account = next(a for a in org.account_ids() if len(org.contacts_of(a)) == 8)
    org.update_account(account, name="Logged")
    harness.cycle()
    _tamper(
        harness,
        f"UPDATE contacts SET account_name = 'wrong' WHERE contactid = '{org.contacts_of(account)[0]}'",
    )
    _tamper(harness, "ALTER TABLE contacts ADD COLUMN governmentid VARCHAR")
    _tamper(
        harness,
        "INSERT INTO activity_log SELECT * REPLACE (activity_id + 100000 AS activity_id) FROM activity_log LIMIT 1",
    )
    _tamper(harness, f"DELETE FROM accounts WHERE accountid = '{account}'")
    found = _findings(harness, now=datetime.now(UTC) + timedelta(minutes=16))
    assert not any(f.passed for f in found.values()), {k: f.description for k, f in found.items()}
    assert found["columns"].metadata["unexpected_columns"] == {"contacts": ["governmentid"]}
    assert found["refs"].metadata["dangling_contacts"] == 8
    assert found["dupes"].metadata["duplicate_groups"] == 1


def test_the_propagation_check_names_the_column_and_counts_the_contacts(harness: Harness) -> None:
    harness.cycle()
    org = harness.sim.org
    account = next(a for a in org.account_ids() if len(org.contacts_of(a)) == 8)
    contact = org.contacts_of(account)[0]
    # A pending local edit is what contacts should show: its account's other contacts agree.
    set_account_field(harness.db, contact, "address1_city", "Edited")
    _tamper(harness, f"UPDATE contacts SET account_name = 'wrong' WHERE contactid = '{contact}'")
    _tamper(
        harness,
        f"UPDATE contacts SET account_address1_city = 'stale' WHERE contactid = "
        f"'{org.contacts_of(account)[1]}'",
    )
    found = _findings(harness)["propagation"]
    assert not found.passed
    assert found.metadata["mismatched_by_column"] == {
        "account_name": 1,
        "account_address1_city": 1,
    }
