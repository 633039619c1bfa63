"""Re-propagation writes in place (few columns change) or by delete and append (many): both
ways must leave the same store. One simulator, two stores, the same cycles; each store forced
down one way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from dynsync_dagster.simulator import Org, Simulator
from dynsync_dagster.store.connection import open_store
from dynsync_dagster.store.integrity import propagation_consistent
from dynsync_dagster.sync import rules
from dynsync_dagster.sync.local_edit import set_account_field
from tests.support import Harness


def _sized(sim: Simulator, n: int) -> str:
    return next(a for a in sim.org.account_ids() if len(sim.org.contacts_of(a)) == n)


def _table(h: Harness, table: str) -> list[tuple]:
    """A table's content, without the columns that say when this store ran."""
    when = {"first_synced_at", "last_synced_at", "deleted_at", "last_run_id", "logged_at"}
    with open_store(h.db, read_only=True) as con:
        cols = [c for c in con.sql(f"SELECT * FROM {table} LIMIT 0").columns if c not in when]
        return con.execute(f"SELECT {', '.join(cols)} FROM {table} ORDER BY ALL").fetchall()


def _activity(h: Harness) -> list[tuple]:
    # activity_id follows insertion order within a cycle, which means nothing: compare content.
    # A local edit's time is the wall clock of each store's edit.
    return h.rows(
        "SELECT CAST(contactid AS VARCHAR), CAST(accountid AS VARCHAR), attribute, old_value, "
        "new_value, source, reason, "
        "CASE WHEN source = 'Dynamics sync' THEN occurred_at END FROM activity_log ORDER BY ALL"
    )


def _forced_cycles(
    monkeypatch: pytest.MonkeyPatch, in_place: Harness, rewritten: Harness
) -> tuple[Callable[[], None], dict[Path, list[str]]]:
    """A function running one cycle on each store, each forced down its way, and the tables
    each store rewrote from a whole copy of the touched contacts."""
    limit = {in_place.db: 10**6, rewritten.db: -1}
    ways: dict[Path, list[str]] = {in_place.db: [], rewritten.db: []}
    current: list[Path] = []
    real_rewrite = rules.rewrite_rows

    def spy(con, table, key, replace, source, **kw):
        if kw.get("current") == "touched":
            ways[current[0]].append(table)
        return real_rewrite(con, table, key, replace, source, **kw)

    monkeypatch.setattr(rules, "rewrite_rows", spy)

    def both() -> None:
        for h in (in_place, rewritten):
            monkeypatch.setattr(rules, "IN_PLACE_MAX_COLUMNS", limit[h.db])
            current[:] = [h.db]
            h.cycle()

    return both, ways


def _change_accounts_and_edit_locally(
    org: Org, stores: tuple[Harness, ...], both: Callable[[], None], twelve: str, eight: str
) -> None:
    """Three cycles of changes, some of them over local edits."""
    # Two fields of one account, and a contact moving between accounts.
    org.update_account(twelve, name="Two Fields Ltd", address1_city="Leiden")
    org.reparent_contact(org.contacts_of(twelve)[0], eight, "account")
    both()

    # A local edit, then Dynamics changes eight fields of that account: every field
    # overwrites the local value.
    for h in stores:
        set_account_field(h.db, org.contacts_of(eight)[0], "address1_city", "Local City")
    org.update_account(
        eight,
        name="Many Fields BV",
        accountnumber="MF-1",
        industrycode=3,
        revenue=1234.5,
        numberofemployees=42,
        address1_city="Delft",
        creditlimit=99.0,
        creditonhold=True,
    )
    both()

    # An update that changes no field still takes back a local edit.
    for h in stores:
        set_account_field(h.db, org.contacts_of(twelve)[1], "numberofemployees", "7")
    org.touch_account(twelve)
    both()


def _assert_same_store(in_place: Harness, rewritten: Harness) -> None:
    for table in ("accounts", "contacts", "local_edits"):
        assert _table(in_place, table) == _table(rewritten, table), table
    assert _activity(in_place) == _activity(rewritten)


def _assert_dynamics_overwrote_the_local_edit(h: Harness, org: Org, eight: str) -> None:
    logged = h.rows(
        "SELECT attribute, old_value, new_value FROM activity_log WHERE accountid = ? "
        "AND source = 'Dynamics sync' AND attribute = 'address1_city' AND old_value = 'Local City'",
        [eight],
    )
    assert len(logged) == len(org.contacts_of(eight))
    assert h.scalar(
        "SELECT count(*) FROM contacts WHERE accountid = ? AND account_name = 'Many Fields BV' "
        "AND account_address1_city = 'Delft' AND account_numberofemployees = 42",
        [eight],
    ) == len(org.contacts_of(eight))


def test_in_place_and_rewritten_propagation_leave_the_same_store(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_place = Harness(sim, tmp_path / "a" / "dynsync.duckdb")
    rewritten = Harness(sim, tmp_path / "b" / "dynsync.duckdb")
    both, ways = _forced_cycles(monkeypatch, in_place, rewritten)
    both()
    twelve, eight = _sized(sim, 12), _sized(sim, 8)

    _change_accounts_and_edit_locally(sim.org, (in_place, rewritten), both, twelve, eight)

    assert ways[in_place.db] == []
    assert ways[rewritten.db] == ["contacts"] * 3
    _assert_same_store(in_place, rewritten)
    _assert_dynamics_overwrote_the_local_edit(in_place, sim.org, eight)
    for h in (in_place, rewritten):
        with open_store(h.db, read_only=True) as con:
            finding = propagation_consistent(con)
        assert finding.passed, finding.description


def test_propagated_columns_are_stored_uncompressed(harness: Harness) -> None:
    """They are UPDATEd in place; compressed, DuckDB would re-encode them at every checkpoint."""
    harness.cycle()
    rows = harness.rows(
        "SELECT column_name, compression FROM pragma_storage_info('contacts') "
        "WHERE segment_type = 'VARCHAR' AND column_name IN ('account_name', 'firstname')"
    )
    kinds = {(c, k) for c, k in rows if k != "Constant"}
    assert {k for c, k in kinds if c == "account_name"} == {"Uncompressed"}
    assert {k for c, k in kinds if c == "firstname"} - {"Uncompressed"}  # left to DuckDB
