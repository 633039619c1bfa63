"""`dynsync lineage` as a user reads it: a tree indented by depth, lookups described as they are."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynsync_dagster.simulator import Simulator
from tests.commands.test_cli import REPO, _base_env, _run


@pytest.fixture
def lineage_env(sim: Simulator, tmp_path: Path) -> dict[str, str]:
    """The environment of a store that one `dynsync sync` filled from the simulator."""
    env = _base_env(tmp_path)
    env.update(sim.env(flow="client_credentials"))
    env["DYNSYNC_DUCKDB_PATH"] = str(tmp_path / "l.duckdb")
    env["DYNSYNC_CONFIG"] = str(REPO / "dynsync.yaml")
    synced = _run(["sync"], env)
    assert synced.returncode == 0, synced.stderr
    return env


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def test_many_sources_are_a_tree_indented_by_depth(lineage_env: dict[str, str]) -> None:
    result = _run(["lineage", "activity_log.old_value"], lineage_env)
    assert result.returncode == 0, result.stderr
    head, *lines = result.stdout.splitlines()
    assert head == "activity_log.old_value"
    assert len(lines) >= 30
    # Three depths, not one step per source: every direct source shares the first indent.
    by_indent: dict[int, list[str]] = {}
    for line in lines:
        by_indent.setdefault(_indent(line), []).append(line.strip())
    assert sorted(by_indent) == [2, 4, 6]
    assert all(s.startswith("<- contacts.account_") for s in by_indent[2])
    assert all(s.startswith("<- accounts.") for s in by_indent[4])
    assert all(s.startswith("<- dynamics.account.") for s in by_indent[6])
    # Depth first: each contact column is followed by the account column it copies, and that
    # by its Dynamics attribute.
    at = next(i for i, line in enumerate(lines) if "<- contacts.account_revenue " in line)
    assert lines[at + 1].strip().startswith("<- accounts.revenue ")
    assert lines[at + 2].strip().startswith("<- dynamics.account.revenue ")
    # A choice's text is its label: the label column is a source too.
    assert any("<- contacts.account_industrycode_label " in line for line in lines)
    # The descriptions line up in one column.
    assert len({line.index("   When attribute") for line in lines if _indent(line) == 2}) == 1


def test_a_contacts_account_is_its_parent_customer_lookup(lineage_env: dict[str, str]) -> None:
    result = _run(["lineage", "contacts.accountid"], lineage_env)
    assert result.returncode == 0, result.stderr
    head, *lines = result.stdout.splitlines()
    assert head == "contacts.accountid"
    assert len(lines) == 1, lines
    assert lines[0].strip().startswith("<- dynamics.contact._parentcustomerid_value ")
    assert "parentcustomerid" in lines[0].split("   ", 1)[1]
    assert "parent customer" in lines[0] and "Primary key" not in lines[0]
