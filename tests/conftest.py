"""Fixtures: a real simulator over HTTPS and a real DuckDB file per test (helpers: support.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynsync_dagster.simulator import Simulator
from tests.support import SMALL, TINY, Harness


@pytest.fixture(scope="session")
def definitions():
    """The code location, loaded once, without any DYNAMICS_*/DYNSYNC_* variable (but the
    suite's partition start, tests/__init__.py): what it holds
    must not depend on which test ran first. A test that runs a job binds its own variables
    with `support.bound_now`. (A later load inside or after `instance_for_test` would pick up
    the test instance's state storage, which Dagster keeps globally.)"""
    from dynsync_dagster.definitions import defs

    with pytest.MonkeyPatch.context() as env:
        for name in list(os.environ):
            if name.startswith(("DYNAMICS_", "DYNSYNC_")) and name != "DYNSYNC_PARTITION_START":
                env.delenv(name)
        return defs()


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(SMALL, state_dir=tmp_path / "sim") as s:
        yield s


@pytest.fixture
def harness(sim: Simulator, tmp_path: Path) -> Harness:
    return Harness(sim, tmp_path / "store" / "dynsync.duckdb")


@pytest.fixture
def tiny(tmp_path: Path) -> Iterator[Simulator]:
    """A small org served in pages of 8, so every read spans several pages."""
    with Simulator(TINY, state_dir=tmp_path / "sim", max_page_size=8) as sim:
        yield sim


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """The store under test."""
    return tmp_path / "store" / "dynsync.duckdb"


@pytest.fixture
def control(tmp_path: Path) -> Path:
    """A second store that sees the same Dynamics history without faults: the reference."""
    return tmp_path / "control" / "dynsync.duckdb"
