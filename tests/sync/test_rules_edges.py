"""Edges of the rules: merges, schema drift, no change tracking, checkpoints, bad records, types."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from dynsync_dagster.dynamics.client import DynamicsClient, RetryPolicy
from dynsync_dagster.dynamics.errors import TransientError
from dynsync_dagster.simulator import DatasetSpec, Simulator
from dynsync_dagster.sync.cycle import CycleOptions, run_cycle
from tests.support import Harness, sync_settings


def _sized(harness: Harness, n: int) -> str:
    org = harness.sim.org
    return next(a for a in org.account_ids() if len(org.contacts_of(a)) == n)


def test_merge_reparents_contacts_to_the_winner_logged(harness: Harness) -> None:
    harness.cycle()
    org = harness.sim.org
    winner, loser = _sized(harness, 12), _sized(harness, 8)
    losers_contacts = org.contacts_of(loser)
    org.merge_accounts(winner, loser)
    harness.cycle()
    rows = harness.rows(
        "SELECT DISTINCT CAST(accountid AS VARCHAR), account_name FROM contacts WHERE contactid IN "
        f"({', '.join('?' for _ in losers_contacts)})",
        losers_contacts,
    )
    assert rows == [(winner, org.get_account(winner)["name"])]
    moved = harness.scalar(
        "SELECT count(DISTINCT contactid) FROM activity_log WHERE attribute = 'name' AND reason LIKE "
        "'Contact moved%' AND accountid = ?",
        [winner],
    )
    assert moved == 8
    # The losing account is kept, deactivated as Dynamics reports it.
    assert harness.scalar("SELECT is_deleted FROM accounts WHERE accountid = ?", [loser]) is False


def test_selected_field_deleted_in_dynamics_stops_with_a_warning(harness: Harness) -> None:
    harness.cycle()
    harness.sim.org.delete_attribute("account", "address1_city")
    result = harness.cycle()
    assert any("address1_city" in w for w in result.plan.warnings)
    reason = harness.scalar(
        "SELECT reason FROM sync_fields WHERE entity = 'account' AND field = 'address1_city'"
    )
    assert reason.startswith("deleted in Dynamics")
    cols = {r[0] for r in harness.rows("SELECT column_name FROM information_schema.columns")}
    assert "address1_city" not in cols and "account_address1_city" not in cols
    # Everything else keeps syncing.
    account = _sized(harness, 8)
    harness.sim.org.update_account(account, name="Still syncing")
    harness.cycle()
    assert (
        harness.scalar("SELECT name FROM accounts WHERE accountid = ?", [account])
        == "Still syncing"
    )


def test_without_change_tracking_a_cursor_reads_changes(harness: Harness) -> None:
    org = harness.sim.org
    org.set_change_tracking("account", False)
    first = harness.cycle()
    assert first.modes["account"] == "full"
    assert harness.rows(
        "SELECT mode, delta_link IS NULL FROM sync_state WHERE entity = 'account'"
    ) == [("cursor", True)]
    account = _sized(harness, 8)
    org.update_account(account, name="Cursor")
    second = harness.cycle()
    assert second.modes["account"] == "cursor"
    assert 1 <= second.rows_read["account"] < len(org.account_ids())
    assert harness.scalar("SELECT count(*) FROM activity_log WHERE accountid = ?", [account]) == 8
    # The overlap re-reads the same version: nothing is logged twice.
    harness.cycle()
    assert harness.scalar("SELECT count(*) FROM activity_log WHERE accountid = ?", [account]) == 8


def test_a_failed_full_read_resumes_from_its_checkpoint(harness: Harness) -> None:
    sim = harness.sim
    sim.max_page_size = 20
    sim.faults.inject("503", times=None, path_contains="/contacts", after=6)
    client = DynamicsClient(
        harness.conn,
        retry=RetryPolicy(max_attempts=2, base_backoff_s=0.01, max_backoff_s=0.01),
        sleep=lambda s: None,
    )
    with pytest.raises(TransientError):
        run_cycle(harness.conn, harness.settings, harness.db, CycleOptions(), client=client)
    assert harness.scalar("SELECT count(*) FROM accounts") == 0  # nothing written
    sim.faults.clear()
    before = sum(1 for r in sim.requests if "/contacts" in r.path)
    result = harness.cycle()
    contact_requests = sum(1 for r in sim.requests if "/contacts" in r.path) - before
    pages = -(-len(sim.org.contact_ids()) // 20)
    assert contact_requests < pages  # it did not start again from zero
    assert harness.scalar("SELECT count(*) FROM contacts") == len(sim.org.contact_ids())
    assert result.modes["contact"] == "full"
    assert harness.cycle().modes == {"account": "delta", "contact": "delta"}


def test_a_record_with_an_unstorable_value_lands_in_sync_errors(harness: Harness) -> None:
    org = harness.sim.org
    org.add_attribute("account", "new_score", "DecimalType", precision=2)
    bad = _sized(harness, 8)
    org.update_account(bad, new_score=1e40)  # beyond DECIMAL(38,2)
    s = harness.settings
    harness.settings = s.__class__((*s.account_fields, "new_score"), s.contact_fields, 5000)
    result = harness.cycle()
    assert result.record_errors == 1
    assert harness.rows("SELECT entity, record_id, code FROM sync_errors") == [
        ("account", bad, "value_not_convertible")
    ]
    assert "new_score" in harness.scalar("SELECT message FROM sync_errors")
    assert harness.scalar("SELECT count(*) FROM accounts") == len(org.account_ids()) - 1


def test_a_full_read_does_not_take_a_record_set_aside_for_deleted(harness: Harness) -> None:
    org = harness.sim.org
    org.add_attribute("account", "new_score", "DecimalType", precision=2)
    harness.cycle()
    bad = _sized(harness, 8)
    org.update_account(bad, new_score=1e40, name="Renamed with a bad score")
    s = harness.settings
    harness.settings = s.__class__((*s.account_fields, "new_score"), s.contact_fields, 5000)
    result = harness.cycle()  # a new field: every account is read again, deletions reconciled
    assert result.modes["account"] == "full" and result.record_errors == 1
    # The record exists in Dynamics: it keeps its last stored values and is not deleted.
    assert harness.scalar("SELECT is_deleted FROM accounts WHERE accountid = ?", [bad]) is False
    assert harness.scalar("SELECT count(*) FROM accounts WHERE is_deleted") == 0
    assert harness.scalar("SELECT name FROM accounts WHERE accountid = ?", [bad]) != (
        "Renamed with a bad score"
    )


def test_a_restored_contact_takes_its_accounts_current_values(harness: Harness) -> None:
    """A deleted contact keeps the values it had; restored, it must catch up with its account."""
    org = harness.sim.org
    harness.cycle()
    account = _sized(harness, 8)
    contact = org.contacts_of(account)[0]
    old_name = org.get_account(account)["name"]
    org.delete_contact(contact)
    harness.cycle()
    org.update_account(account, name="Renamed While Deleted")
    harness.cycle()  # the deleted contact is left as it was
    assert (
        harness.scalar(
            "SELECT account_name FROM contacts WHERE contactid = ? AND is_deleted", [contact]
        )
        == old_name
    )
    org.restore_contact(contact)
    result = harness.cycle()
    assert harness.rows(
        "SELECT is_deleted, account_name FROM contacts WHERE contactid = ?", [contact]
    ) == [(False, "Renamed While Deleted")]
    assert harness.rows(
        "SELECT old_value, new_value, reason FROM activity_log WHERE contactid = ? "
        "AND attribute = 'name' AND run_id = ?",
        [contact, result.run_id],
    ) == [(old_name, "Renamed While Deleted", "Contact restored in Dynamics")]


def test_types_come_from_the_metadata(harness: Harness) -> None:
    harness.cycle()
    types = dict(
        harness.rows(
            "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns"
        )
    )
    assert types["contacts.birthdate"] == "DATE"
    assert types["accounts.modifiedon"] == "TIMESTAMP WITH TIME ZONE"
    assert types["accounts.revenue"] == "DECIMAL(38,4)"
    assert types["accounts.industrycode"] == "INTEGER"
    assert types["accounts.industrycode_label"] == "VARCHAR"
    assert types["accounts.parentaccountid"] == "UUID"
    assert types["accounts.parentaccountid_type"] == "VARCHAR"
    contact = next(
        c
        for c in harness.sim.org.contact_ids()
        if harness.sim.org.get_contact(c)["birthdate"] is not None
    )
    born = harness.scalar("SELECT birthdate FROM contacts WHERE contactid = ?", [contact])
    assert born == harness.sim.org.get_contact(contact)["birthdate"]
    assert isinstance(born, dt.date)
    label = harness.rows(
        "SELECT industrycode, industrycode_label FROM accounts WHERE industrycode IS NOT NULL LIMIT 1"
    )[0]
    assert label[1] == harness.scalar(
        "SELECT label FROM choice_labels WHERE field = 'industrycode' AND value = ?", [label[0]]
    )
    revenue = harness.scalar("SELECT revenue FROM accounts WHERE revenue IS NOT NULL LIMIT 1")
    assert isinstance(revenue, Decimal)


@pytest.fixture
def big_sim(tmp_path):
    spec = DatasetSpec(accounts=6, contacts=10_010, sized_accounts=(5000, 5001), seed=5)
    with Simulator(spec, state_dir=tmp_path / "big") as s:
        yield s


def test_5000_contacts_log_and_5001_do_not(big_sim: Simulator, tmp_path) -> None:
    h = Harness(big_sim, tmp_path / "big.duckdb")
    h.settings = sync_settings(
        account_fields=("name", "address1_city"), contact_fields=("firstname",)
    )
    h.cycle()
    org = big_sim.org
    at = next(a for a in org.account_ids() if len(org.contacts_of(a)) == 5000)
    over = next(a for a in org.account_ids() if len(org.contacts_of(a)) == 5001)
    org.update_account(at, name="At the limit")
    org.update_account(over, name="Over the limit")
    result = h.cycle()
    assert h.scalar("SELECT count(*) FROM activity_log WHERE accountid = ?", [at]) == 5000
    assert h.scalar("SELECT count(*) FROM activity_log WHERE accountid = ?", [over]) == 0
    assert (
        h.scalar(
            "SELECT count(*) FROM contacts WHERE accountid = ? AND account_name = 'Over the limit'",
            [over],
        )
        == 5001
    )
    assert result.counts.suppressed_accounts == [
        {"accountid": over, "contacts": 5001, "rows_suppressed": 5001}
    ]


def test_a_resumed_read_whose_delta_token_expired_starts_over(harness: Harness) -> None:
    """The failed cycle finished reading contacts, then failed on accounts; by the next cycle
    the contacts' delta token has expired, so its staged pages cannot be caught up: read again."""
    sim = harness.sim
    harness.cycle()
    s = harness.settings
    harness.settings = s.__class__(s.account_fields, (*s.contact_fields, "jobtitle"), 5000)
    sim.faults.inject("503", times=None, path_contains="/accounts")
    client = DynamicsClient(
        harness.conn,
        retry=RetryPolicy(max_attempts=2, base_backoff_s=0.01, max_backoff_s=0.01),
        sleep=lambda s: None,
    )
    with pytest.raises(TransientError):  # contacts read in full (a new field), accounts fail
        run_cycle(harness.conn, harness.settings, harness.db, CycleOptions(), client=client)
    sim.faults.clear()
    gone = sim.org.contact_ids()[0]
    sim.org.delete_contact(gone)
    sim.org.expire_delta_tokens()
    result = harness.cycle()
    assert result.modes["contact"] in ("full", "resync")
    assert harness.scalar("SELECT is_deleted FROM contacts WHERE contactid = ?", [gone]) is True
    assert harness.scalar("SELECT count(*) FROM contacts WHERE NOT is_deleted") == len(
        sim.org.contact_ids()
    )
