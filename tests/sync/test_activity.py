"""Activity values read like Marketo's Change Data Value: a choice by its label, money and
decimals with the digits they need (README.md, `activity_log`;
activity_value_sql in sync/activity.py)."""

from __future__ import annotations

import pytest

from dynsync_dagster.simulator.schema import INDUSTRY_OPTIONS
from dynsync_dagster.sync.local_edit import set_account_field
from tests.support import Harness

LABELS = dict(INDUSTRY_OPTIONS)
# A decimal with two places and one with none (DECIMAL(38,0): its zeros are significant).
EXTRA = ("new_score", "new_units")


def _sized(harness: Harness, n: int) -> str:
    org = harness.sim.org
    return next(a for a in org.account_ids() if len(org.contacts_of(a)) == n)


def _with_decimals(harness: Harness) -> None:
    org = harness.sim.org
    org.add_attribute("account", "new_score", "DecimalType", precision=2)
    org.add_attribute("account", "new_units", "DecimalType", precision=0)
    s = harness.settings
    harness.settings = s.__class__((*s.account_fields, *EXTRA), s.contact_fields, 5000)


def _logged(harness: Harness, account: str, source: str) -> set[tuple]:
    return set(
        harness.rows(
            "SELECT DISTINCT attribute, old_value, new_value FROM activity_log "
            "WHERE accountid = ? AND source = ?",
            [account, source],
        )
    )


# Few changed columns are written in place, many by a delete and append (rules._repropagate):
# both must log the same text.
@pytest.mark.parametrize("also", [{}, {"name": "N", "accountnumber": "A-1", "address1_city": "C"}])
def test_a_cycle_logs_choices_by_label_and_money_without_trailing_zeros(
    harness: Harness, also: dict
) -> None:
    _with_decimals(harness)
    org = harness.sim.org
    account, other = _sized(harness, 8), _sized(harness, 12)
    org.update_account(account, industrycode=3, revenue=1000.5, new_score=2.25, new_units=100)
    org.update_account(other, industrycode=5, revenue=77.25)
    harness.cycle()
    org.update_account(
        account, industrycode=7, revenue=3096917551.66, new_score=7, new_units=120, **also
    )
    org.update_account(other, industrycode=None, revenue=12)
    harness.cycle()
    got = {r for r in _logged(harness, account, "Dynamics sync") if r[0] not in also}
    assert got == {
        ("industrycode", LABELS[3], LABELS[7]),
        ("revenue", "1000.5", "3096917551.66"),
        ("new_score", "2.25", "7"),
        ("new_units", "100", "120"),
    }
    assert _logged(harness, other, "Dynamics sync") == {
        ("industrycode", LABELS[5], None),
        ("revenue", "77.25", "12"),
    }
    # The code is still on the contacts, beside its label.
    assert harness.rows(
        "SELECT DISTINCT account_industrycode, account_industrycode_label FROM contacts "
        "WHERE accountid = ?",
        [account],
    ) == [(7, LABELS[7])]


def test_a_contact_moving_logs_the_labels_of_both_accounts(harness: Harness) -> None:
    org = harness.sim.org
    left, joined = _sized(harness, 8), _sized(harness, 12)
    org.update_account(left, industrycode=2, revenue=0.5)
    org.update_account(joined, industrycode=4, revenue=10)
    harness.cycle()
    mover = org.contacts_of(left)[0]
    org.reparent_contact(mover, joined)
    harness.cycle()
    assert set(
        harness.rows(
            "SELECT attribute, old_value, new_value FROM activity_log WHERE contactid = ? "
            "AND attribute IN ('industrycode', 'revenue')",
            [mover],
        )
    ) == {("industrycode", LABELS[2], LABELS[4]), ("revenue", "0.5", "10")}


def test_a_local_edit_logs_the_same_text_as_a_cycle(harness: Harness) -> None:
    _with_decimals(harness)
    org = harness.sim.org
    account = _sized(harness, 8)
    org.update_account(account, industrycode=3, revenue=1000.5, new_units=100)
    harness.cycle()
    contact = org.contacts_of(account)[0]
    set_account_field(harness.db, contact, "industrycode", "9")
    set_account_field(harness.db, contact, "revenue", "1234.50")
    set_account_field(harness.db, contact, "new_units", "1200")
    assert _logged(harness, account, "Local update") == {
        ("industrycode", LABELS[3], LABELS[9]),
        ("revenue", "1000.5", "1234.5"),
        ("new_units", "100", "1200"),
    }
    # Dynamics speaks: the account's values come back, logged with the same text.
    org.touch_account(account)
    harness.cycle()
    assert _logged(harness, account, "Dynamics sync") == {
        ("industrycode", LABELS[9], LABELS[3]),
        ("revenue", "1234.5", "1000.5"),
        ("new_units", "1200", "100"),
    }
    # Clearing a choice locally logs its old label and no value.
    set_account_field(harness.db, contact, "industrycode", None)
    assert ("industrycode", LABELS[3], None) in _logged(harness, account, "Local update")
