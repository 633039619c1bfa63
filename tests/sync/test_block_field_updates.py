"""Block Field Updates (Marketo): refuse local edits of a field, or keep the contacts' value of
a field when Dynamics changes it. Real cycles against the simulator over HTTPS."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from dynsync_dagster.simulator import Simulator
from dynsync_dagster.store.connection import open_store
from dynsync_dagster.store.integrity import propagation_consistent
from dynsync_dagster.sync.local_edit import LocalEditError, set_account_field
from tests.support import canonical, cycle, pick_sized, sync_settings

BASE = sync_settings(("name", "industrycode", "numberofemployees"), ("firstname",))


def _rows(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    with open_store(db, read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


def test_a_field_blocked_for_local_updates_refuses_the_edit_and_changes_nothing(
    tiny: Simulator, tmp_path: Path
) -> None:
    db = tmp_path / "store.duckdb"
    settings = replace(BASE, block_field_updates={"industrycode": frozenset({"local_update"})})
    cycle(tiny, db, settings)
    contact = tiny.org.contacts_of(tiny.org.account_ids()[0])[0]
    before = canonical(db)
    with pytest.raises(LocalEditError, match="industrycode is blocked for local updates"):
        set_account_field(db, contact, "industrycode", "3", sync=settings)
    assert canonical(db) == before
    # Another field of the same account is still editable.
    set_account_field(db, contact, "numberofemployees", "12", sync=settings)


def test_a_field_blocked_for_dynamics_sync_keeps_the_contacts_value(
    sim: Simulator, tmp_path: Path
) -> None:
    db = tmp_path / "store.duckdb"
    settings = replace(BASE, block_field_updates={"name": frozenset({"dynamics_sync"})})
    account = pick_sized(sim, 12)
    cycle(sim, db, settings)
    (old_name,) = _rows(db, "SELECT name FROM accounts WHERE accountid = ?", [account])[0]

    sim.org.update_account(account, name="Renamed in Dynamics", numberofemployees=4321)
    result = cycle(sim, db, settings)
    assert result.counts.updates_blocked == 1
    # The account row stores Dynamics' value; its contacts keep theirs, with no activity for it.
    assert _rows(db, "SELECT name FROM accounts WHERE accountid = ?", [account]) == [
        ("Renamed in Dynamics",)
    ]
    assert _rows(
        db, "SELECT DISTINCT account_name FROM contacts WHERE accountid = ?", [account]
    ) == [(old_name,)]
    logged = _rows(
        db,
        "SELECT attribute, count(*) FROM activity_log WHERE accountid = ? AND run_id = ? "
        "GROUP BY attribute",
        [account, result.run_id],
    )
    # The other field changed as rule 5 says: on every contact, logged on each.
    assert logged == [("numberofemployees", 12)]
    assert _rows(
        db,
        "SELECT updates_blocked FROM sync_runs WHERE run_id = ?",
        [result.run_id],
    ) == [(1,)]

    # A contact that joins the account takes the value its contacts keep.
    newcomer = sim.org.create_contact(account, firstname="Newcomer")
    sim.org.update_account(account, name="Renamed twice")
    again = cycle(sim, db, settings)
    assert again.counts.updates_blocked == 1
    assert _rows(db, "SELECT account_name FROM contacts WHERE contactid = ?", [newcomer]) == [
        (old_name,)
    ]
    with open_store(db, read_only=True) as con:
        assert propagation_consistent(con).passed


def test_without_the_block_dynamics_overwrites_the_contacts(sim: Simulator, tmp_path: Path) -> None:
    db = tmp_path / "store.duckdb"
    account = pick_sized(sim, 8)
    cycle(sim, db, BASE)
    sim.org.update_account(account, name="Unblocked rename")
    result = cycle(sim, db, BASE)
    assert result.counts.updates_blocked == 0
    assert _rows(
        db, "SELECT DISTINCT account_name FROM contacts WHERE accountid = ?", [account]
    ) == [("Unblocked rename",)]


def test_a_field_added_and_blocked_at_once_fills_its_first_values(
    sim: Simulator, tmp_path: Path
) -> None:
    """Blocking keeps the contacts' value; a field new to the selection has none to keep."""
    db = tmp_path / "store.duckdb"
    account = pick_sized(sim, 8)
    cycle(sim, db, BASE)
    sim.org.update_account(account, address1_city="Gent")
    added = replace(
        sync_settings((*BASE.account_fields, "address1_city"), BASE.contact_fields),
        block_field_updates={"address1_city": frozenset({"dynamics_sync"})},
    )
    result = cycle(sim, db, added)
    assert result.counts.updates_blocked == 0
    assert _rows(db, "SELECT count(*) FROM local_edits") == [(0,)]
    assert _rows(
        db, "SELECT DISTINCT account_address1_city FROM contacts WHERE accountid = ?", [account]
    ) == [("Gent",)]
    with open_store(db, read_only=True) as con:
        assert propagation_consistent(con).passed
