"""The short model-based soak (the long one: `python -m tests.reliability.soak --cycles 200`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynsync_dagster.simulator.schema import INDUSTRY_OPTIONS

from .model import SYNC, Model, Snapshot
from .soak import run_soak


@pytest.mark.parametrize("seed", [16])
def test_thirty_random_cycles_match_the_reference_model(tmp_path: Path, seed: int) -> None:
    report = run_soak(30, seed, tmp_path)
    assert report.succeeded + report.failed_as_expected == 30
    assert report.failed_as_expected > 0, "the seed should include faults no retry gets past"
    assert report.activity_rows[SYNC] > 0
    # The seed reaches the sync filter and Block Field Updates, not only the older rules.
    assert report.peak_stale["accounts"] > 0 and report.peak_stale["contacts"] > 0
    assert report.thawed["accounts"] > 0, "a stale account should turn Yes again"
    assert report.peak_kept_out > 0
    assert report.edits["refused, blocked"] > 0, "a local_update block should refuse an edit"
    assert report.pinned > 0, "a dynamics_sync block should keep a value on contacts"


def test_random_cycles_with_parallel_first_copies_match_the_reference_model(
    tmp_path: Path,
) -> None:
    """Every full read (the first, and those a selection change or an expired delta token
    forces) in parallel key ranges; the request log shows that none went page by page. A
    503 storm in the contacts' ranges stops one copy part-way; the next cycle resumes it."""
    report = run_soak(20, 4, tmp_path, parallel=True)
    assert report.succeeded + report.failed_as_expected == 20
    assert report.failed_as_expected > 0
    reads, events = report.full_reads, report.parallel_events
    assert reads["contact parallel"] >= 3 and reads["account parallel"] >= 3, reads
    assert reads["contact sequential"] == reads["account sequential"] == 0, reads
    assert events["contact reads failed with their cycle"] > 0, events
    assert events["contact copies resumed after a failed cycle"] > 0, events


def test_the_model_applies_the_contact_limit_at_its_boundary(tmp_path: Path) -> None:
    """A self-check of the model, without any store: rule 7's 5-logs-6-does-not boundary."""
    from dynsync_dagster.simulator import DatasetSpec, Simulator

    spec = DatasetSpec(accounts=3, contacts=11, sized_accounts=(6, 5), seed=3)
    with Simulator(spec, state_dir=tmp_path / "sim") as sim:
        org = sim.org
        model = Model(labels=dict(INDUSTRY_OPTIONS), contact_limit=5)
        fields = ("name",)
        model.cycle(Snapshot.of(org), fields, ())
        six = next(a for a in org.account_ids() if len(org.contacts_of(a)) == 6)
        five = next(a for a in org.account_ids() if len(org.contacts_of(a)) == 5)
        org.update_account(six, name="Six")
        org.update_account(five, name="Five")
        model.cycle(Snapshot.of(org), fields, ())
    assert {row[1] for row in model.activity} == {five}  # 5 logs, 6 (over the limit) does not
    assert len(model.activity) == 5 and model.suppressed == 6


def test_the_model_freezes_a_stale_account_and_keeps_a_blocked_value(tmp_path: Path) -> None:
    """A self-check of the model, without any store: Yes -> No -> Yes on an account with
    contacts (frozen, then logged), and a dynamics_sync block keeping the contacts' value."""
    from dynsync_dagster.simulator import DatasetSpec, Simulator

    spec = DatasetSpec(
        accounts=3, contacts=11, sized_accounts=(6, 5), seed=3, sync_filter_no_share=0
    )
    with Simulator(spec, state_dir=tmp_path / "sim") as sim:
        org = sim.org
        model = Model(labels=dict(INDUSTRY_OPTIONS), contact_limit=6)
        fields = ("name", "numberofemployees")
        model.cycle(Snapshot.of(org), fields, ())
        five = next(a for a in org.account_ids() if len(org.contacts_of(a)) == 5)
        before = model.accounts[five].values["name"]
        org.update_account(five, new_synctomkto=False, name="While No")
        model.cycle(Snapshot.of(org), fields, ())
        assert model.accounts[five].stale and model.accounts[five].values["name"] == before
        assert model.activity == []
        org.update_account(five, new_synctomkto=True)
        model.cycle(Snapshot.of(org), fields, ())
        assert not model.accounts[five].stale
        assert {(r[2], r[3], r[4]) for r in model.activity} == {("name", before, "While No")}
        assert len(model.activity) == 5

        model.blocks = {"name": frozenset({"dynamics_sync"})}
        org.update_account(five, name="Blocked", numberofemployees=7)
        model.cycle(Snapshot.of(org), fields, ())
        carried = {model.contacts[c].account_values["name"] for c in org.contacts_of(five)}
        assert carried == {"While No"} and model.accounts[five].values["name"] == "Blocked"
        assert {r[2] for r in model.activity[5:]} == {"numberofemployees"}
