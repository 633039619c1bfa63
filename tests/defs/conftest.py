"""Fixtures for running the Dagster jobs in process against the simulator."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from dynsync_dagster.simulator import Simulator
from tests.support import REPO, bound_now


@pytest.fixture
def sync_env(sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The simulator's DYNAMICS_* variables and a store of this test's own; returns the store."""
    for key, value in sim.env(flow="client_credentials").items():
        monkeypatch.setenv(key, value)
    db = tmp_path / "dagster.duckdb"
    monkeypatch.setenv("DYNSYNC_DUCKDB_PATH", str(db))
    monkeypatch.setenv("DYNSYNC_CONFIG", str(REPO / "dynsync.yaml"))
    return db


@pytest.fixture
def bound_definitions(sync_env: Path, definitions: dg.Definitions) -> dg.Definitions:
    """The session's code location, its resources bound to this test's variables."""
    return bound_now(definitions)
