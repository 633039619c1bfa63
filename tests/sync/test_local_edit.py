"""A local edit stores exactly what was asked, or refuses it; its confirmation echoes what
was stored, the way the activity log shows it (sync/local_edit.py)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from dynsync_dagster.simulator.schema import INDUSTRY_OPTIONS
from dynsync_dagster.sync.local_edit import LocalEditError, confirmation, set_account_field
from tests.support import Harness

LABELS = dict(INDUSTRY_OPTIONS)


def _contact_of_sized(harness: Harness, n: int) -> tuple[str, str]:
    org = harness.sim.org
    account = next(a for a in org.account_ids() if len(org.contacts_of(a)) == n)
    return account, org.contacts_of(account)[0]


def _with_whole_decimal(harness: Harness) -> None:
    """A decimal of precision 0 (DECIMAL(38,0)) beside the rules selection."""
    harness.sim.org.add_attribute("account", "new_units", "DecimalType", precision=0)
    s = harness.settings
    harness.settings = s.__class__((*s.account_fields, "new_units"), s.contact_fields, 5000)


def _stored(harness: Harness, account: str, field: str) -> tuple[set, list]:
    """The contacts' copies of the field, and the pending edit's text in local_edits."""
    on_contacts = harness.rows(
        f"SELECT DISTINCT account_{field} FROM contacts WHERE accountid = ? AND NOT is_deleted",
        [account],
    )
    pending = harness.rows(
        "SELECT value FROM local_edits WHERE accountid = ? AND field = ?", [account, field]
    )
    return {r[0] for r in on_contacts}, [r[0] for r in pending]


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("numberofemployees", "12.5", ["Integer", "INTEGER", "round it to 13", "whole number"]),
        ("numberofemployees", "3000000000", ["INTEGER", "-2147483648 to 2147483647"]),
        ("numberofemployees", "0x10", ["whole number"]),
        ("revenue", "12.34567", ["Money", "DECIMAL(38,4)", "12.3457", "4 decimal places"]),
        ("revenue", "NaN", ["Money", "4 decimal places"]),
        ("new_units", "1.5", ["Decimal", "DECIMAL(38,0)", "whole number"]),
        ("industrycode", "12.5", ["not an option of industrycode", LABELS[1]]),
    ],
)
def test_a_value_its_column_cannot_hold_exactly_is_refused_and_nothing_changes(
    harness: Harness, field: str, value: str, words: list[str]
) -> None:
    _with_whole_decimal(harness)
    harness.cycle()
    _account, contact = _contact_of_sized(harness, 8)
    before = harness.snapshot()
    with pytest.raises(LocalEditError) as refused:
        set_account_field(harness.db, contact, field, value)
    message = str(refused.value)
    assert field in message and repr(value) in message
    for word in words:
        assert word in message, message
    assert harness.snapshot() == before


def test_a_value_its_column_holds_exactly_is_stored_as_given(harness: Harness) -> None:
    harness.cycle()
    account, contact = _contact_of_sized(harness, 8)
    # 1e6 is the whole number 1000000 written another way: nothing is lost, so it is stored.
    edit = set_account_field(harness.db, contact, "numberofemployees", "1e6")
    assert _stored(harness, account, "numberofemployees") == ({1000000}, ["1000000"])
    assert "numberofemployees = 1000000 on 8 contact(s)" in confirmation(edit)
    # Money keeps four decimals, whatever its display precision: 12.345 is held exactly.
    edit = set_account_field(harness.db, contact, "revenue", "12.345")
    assert _stored(harness, account, "revenue") == ({Decimal("12.345")}, ["12.345"])
    assert "revenue = 12.345 on" in confirmation(edit)
    edit = set_account_field(harness.db, contact, "revenue", "1e6")
    assert _stored(harness, account, "revenue") == ({Decimal("1000000")}, ["1000000"])
    assert "revenue = 1000000 on" in confirmation(edit)
    logged = harness.rows(
        "SELECT DISTINCT new_value FROM activity_log WHERE accountid = ? AND attribute = 'revenue' "
        "AND source = 'Local update' ORDER BY new_value",
        [account],
    )
    assert logged == [("1000000",), ("12.345",)]


def test_the_confirmation_names_the_account_and_shows_null_as_null(harness: Harness) -> None:
    harness.cycle()
    account, contact = _contact_of_sized(harness, 8)
    name = harness.sim.org.get_account(account)["name"]
    cleared = confirmation(set_account_field(harness.db, contact, "address1_city", None))
    assert cleared.startswith(f'account "{name}" ({account}): address1_city = NULL on 8 contact(s)')
    assert "None" not in cleared
    text = confirmation(set_account_field(harness.db, contact, "address1_city", " Ghent "))
    assert 'address1_city = " Ghent " on' in text  # text is stored as typed, quoted to show it


@pytest.mark.parametrize("given", ["9", LABELS[9], LABELS[9].upper()])
def test_a_choice_by_code_or_label_stores_the_code_and_echoes_the_label(
    harness: Harness, given: str
) -> None:
    harness.cycle()
    account, contact = _contact_of_sized(harness, 8)
    edit = set_account_field(harness.db, contact, "industrycode", given)
    assert f'industrycode = "{LABELS[9]}" on' in confirmation(edit)
    assert harness.rows(
        "SELECT DISTINCT account_industrycode, account_industrycode_label FROM contacts "
        "WHERE accountid = ?",
        [account],
    ) == [(9, LABELS[9])]
    assert _stored(harness, account, "industrycode")[1] == ["9"]


def test_a_pending_edit_survives_the_next_cycle_exactly(harness: Harness) -> None:
    """local_edits keeps the value as the activity log writes it; the cycle casts it back."""
    harness.cycle()
    account, contact = _contact_of_sized(harness, 8)
    set_account_field(harness.db, contact, "revenue", "1e6")
    harness.sim.org.update_account(_contact_of_sized(harness, 12)[0], name="Someone else")
    harness.cycle()
    assert _stored(harness, account, "revenue") == ({Decimal("1000000")}, ["1000000"])
