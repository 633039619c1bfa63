"""Generated data and Org mutations: determinism, sizes, versions, merge, cascade delete."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from dynsync_dagster.simulator import DatasetSpec, Simulator


def _org(tmp_path, spec: DatasetSpec):
    return Simulator(spec, state_dir=tmp_path).org  # generation only; no server needed


def test_generation_is_deterministic_and_sized(tmp_path) -> None:
    spec = DatasetSpec(
        accounts=10,
        contacts=100,
        sized_accounts=(30, 31),
        orphan_contacts=5,
        contact_parented_contacts=5,
        seed=9,
    )
    a, b = _org(tmp_path / "a", spec), _org(tmp_path / "b", spec)
    assert a.account_ids() == b.account_ids() and a.contact_ids() == b.contact_ids()
    ids = a.account_ids()
    first = a.get_account(ids[0])["accountnumber"]
    by_number = {a.get_account(i)["accountnumber"]: i for i in ids}
    assert first.startswith("ACC-")
    assert len(a.contacts_of(by_number["ACC-000001"])) == 30
    assert len(a.contacts_of(by_number["ACC-000002"])) == 31
    contacts = [a.get_contact(c) for c in a.contact_ids()]
    assert sum(c["parentcustomerid"] is None for c in contacts) == 5
    assert sum(c.get("parentcustomeridtype") == "contact" for c in contacts) == 5
    assert sum(len(a.contacts_of(i)) for i in ids) == 90
    now = datetime.now(UTC)
    assert all(now - timedelta(days=31) < c["createdon"] <= c["modifiedon"] for c in contacts)
    versions = [c["versionnumber"] for c in contacts]
    assert len(set(versions)) == len(versions)
    assert (
        _org(tmp_path / "c", DatasetSpec(accounts=10, contacts=100, seed=10)).account_ids()
        != a.account_ids()
    )


@pytest.mark.parametrize(
    "spec",
    [
        DatasetSpec(accounts=3, contacts=10, sized_accounts=(8, 5)),
        DatasetSpec(accounts=2, contacts=10, sized_accounts=(5, 4)),
        DatasetSpec(accounts=5, contacts=3, contact_parented_contacts=3),
    ],
)
def test_invalid_specs(spec: DatasetSpec) -> None:
    with pytest.raises(ValueError):
        spec.validate()


def test_mutations_bump_versions_and_stamp_modifiedon(tmp_path) -> None:
    org = _org(tmp_path, DatasetSpec(accounts=5, contacts=20))
    fixed = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    org.clock = lambda: fixed
    aid = org.account_ids()[0]
    start = org.current_version
    v1 = org.update_account(aid, name="A")
    v2 = org.touch_account(aid)
    assert start < v1 < v2 == org.get_account(aid)["versionnumber"]
    assert org.get_account(aid)["modifiedon"] == fixed.replace(microsecond=0)
    org.advance_clock(60)
    cid = org.create_contact(aid, "account", firstname="Ada", lastname="Lovelace")
    contact = org.get_contact(cid)
    assert contact["fullname"] == "Ada Lovelace" and contact["accountid"] == aid
    assert contact["createdon"] == fixed.replace(microsecond=0) + timedelta(seconds=60)
    with pytest.raises(ValueError):
        org.update_account(aid, versionnumber=1)
    with pytest.raises(ValueError):
        org.update_account(aid, nosuchfield=1)


def test_merge_accounts(tmp_path) -> None:
    org = _org(tmp_path, DatasetSpec(accounts=5, contacts=40))
    target, sub = org.account_ids()[:2]
    moved = org.contacts_of(sub)
    org.merge_accounts(target, sub)
    merged = org.get_account(sub)
    assert (merged["statecode"], merged["statuscode"], merged["merged"], merged["masterid"]) == (
        1,
        2,
        True,
        target,
    )
    assert org.contacts_of(sub) == []
    assert set(moved) <= set(org.contacts_of(target))
    assert all(org.get_contact(c)["accountid"] == target for c in moved)


def test_cascade_delete(tmp_path) -> None:
    org = _org(tmp_path, DatasetSpec(accounts=5, contacts=40))
    aid = org.account_ids()[0]
    contacts = org.contacts_of(aid)
    child = org.create_contact(contacts[0], "contact", lastname="Grandchild")
    org.delete_account(aid)
    assert aid not in org.account_ids()
    remaining = set(org.contact_ids())
    assert not remaining & set(contacts) and child not in remaining
    deleted = [e for e in org.tables["contact"].log_entries if e[1]]
    assert {e[0] for e in deleted} == {*contacts, child}


def test_random_changes_and_reparent(tmp_path) -> None:
    org = _org(tmp_path, DatasetSpec(accounts=5, contacts=40))
    before = org.current_version
    assert len(org.random_changes(25, random.Random(4))) == 25
    assert org.current_version > before
    cid = org.contact_ids()[0]
    other = org.contact_ids()[1]
    org.reparent_contact(cid, other, "contact")
    assert org.get_contact(cid)["accountid"] is None
    with pytest.raises(KeyError):
        org.reparent_contact(cid, "00000000-0000-0000-0000-000000000000", "account")


def test_backdated_commit_keeps_version_order(tmp_path) -> None:
    org = _org(tmp_path, DatasetSpec(accounts=3, contacts=3))
    first, second = org.account_ids()[:2]
    org.update_account(first, name="Early")
    with org.backdated(300):
        org.update_account(second, name="Late commit")
    a, b = org.get_account(first), org.get_account(second)
    assert b["versionnumber"] > a["versionnumber"]
    assert b["modifiedon"] < a["modifiedon"]


def test_trickle_makes_changes(tmp_path) -> None:
    import time

    with Simulator(
        DatasetSpec(accounts=5, contacts=20), state_dir=tmp_path, trickle_per_minute=1200
    ) as sim:
        before = sim.org.current_version
        deadline = time.monotonic() + 5
        while sim.org.current_version == before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sim.org.current_version > before
