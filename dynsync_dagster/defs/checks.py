"""Asset checks: the store's integrity after every cycle (run in the same job)."""

from collections.abc import Callable

import dagster as dg
import duckdb

from .. import integrity
from ..store import StoreBusyError, open_store
from .resources import DynsyncStore


def _run(store: DynsyncStore, check: Callable[[duckdb.DuckDBPyConnection], integrity.Finding]):
    try:
        with open_store(store.path(), read_only=True, wait_s=60) as con:
            finding = check(con)
    except StoreBusyError as exc:
        return dg.AssetCheckResult(passed=False, description=str(exc))
    return dg.AssetCheckResult(
        passed=finding.passed,
        description=finding.description,
        metadata={
            k: dg.MetadataValue.json(v) if isinstance(v, dict | list) else v
            for k, v in finding.metadata.items()
        },
    )


@dg.asset_check(asset="contacts", pool="duckdb_write")
def contacts_reference_existing_accounts(store: DynsyncStore) -> dg.AssetCheckResult:
    """Every contact with an account points at an account stored in `accounts`."""
    return _run(store, integrity.contacts_reference_accounts)


@dg.asset_check(asset="contacts", pool="duckdb_write")
def propagated_values_match_accounts(store: DynsyncStore) -> dg.AssetCheckResult:
    """account_<field> on each contact equals its account's value, unless a local edit is pending."""
    return _run(store, integrity.propagation_consistent)


@dg.asset_check(asset="contacts", pool="duckdb_write")
def no_unsynced_columns(store: DynsyncStore) -> dg.AssetCheckResult:
    """No unselected or unreadable field has a column in accounts or contacts."""
    return _run(store, integrity.only_synced_columns)


@dg.asset_check(asset="activity_log", pool="duckdb_write")
def no_duplicate_activity(store: DynsyncStore) -> dg.AssetCheckResult:
    """No Change Data Value row is logged twice."""
    return _run(store, integrity.no_duplicate_activity)


@dg.asset_check(asset="sync_runs", pool="duckdb_write")
def last_cycle_within_15_minutes(store: DynsyncStore) -> dg.AssetCheckResult:
    """Freshness: the last committed scheduled cycle finished within 15 minutes."""
    return _run(store, integrity.last_cycle_fresh)


@dg.definitions
def checks() -> dg.Definitions:
    return dg.Definitions(
        asset_checks=[
            contacts_reference_existing_accounts,
            propagated_values_match_accounts,
            no_unsynced_columns,
            no_duplicate_activity,
            last_cycle_within_15_minutes,
        ]
    )
