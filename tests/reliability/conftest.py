"""Fixtures for the reliability tests: a tiny org over HTTPS with several pages per table."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dynsync_dagster.simulator import Simulator

from .support import TINY


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
