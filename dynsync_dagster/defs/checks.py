"""Asset checks: the store's integrity after every cycle (run in the same job).

The five checks are one op: one step, one read-only connection, instead of five steps that
each open the store and log their own start, output and success events. The UI still shows
five checks, each with its own result, and any subset can be run on its own.
"""

from collections.abc import Callable, Iterator
from datetime import datetime

import dagster as dg
import duckdb

from dynsync_dagster.defs.resources import DynsyncStore
from dynsync_dagster.store import integrity
from dynsync_dagster.store.connection import StoreNotReadyError
from dynsync_dagster.store.publish import confirmed_at, open_published
from dynsync_dagster.store.sync_status import records_set_aside

Check = Callable[[duckdb.DuckDBPyConnection], integrity.Finding]

# (asset, check name, what it verifies, the SQL behind it)
CHECKS: list[tuple[str, str, str, Check]] = [
    (
        "contacts",
        "contacts_reference_existing_accounts",
        "Every contact with an account points at an account stored in `accounts`.",
        integrity.contacts_reference_accounts,
    ),
    (
        "contacts",
        "propagated_values_match_accounts",
        "account_<field> on each contact equals its account's value, unless a local edit is "
        "pending.",
        integrity.propagation_consistent,
    ),
    (
        "contacts",
        "no_unsynced_columns",
        "No unselected or unreadable field has a column in accounts or contacts.",
        integrity.only_synced_columns,
    ),
    (
        "activity_log",
        "no_duplicate_activity",
        "No Change Data Value row is logged twice.",
        integrity.no_duplicate_activity,
    ),
    (
        "sync_runs",
        "last_cycle_within_15_minutes",
        "Freshness: the last committed scheduled cycle finished within 15 minutes.",
        integrity.last_cycle_fresh,
    ),
    (
        "sync_runs",
        "no_records_set_aside",
        "Sync Errors: warns (WARN, not an error) while a record is set aside because a value "
        "does not fit its column; `dynsync errors` lists them.",
        records_set_aside,
    ),
]
# Checks that warn instead of failing: a record set aside does not make the store wrong.
WARN_ONLY = {"no_records_set_aside"}
SEVERITY = {True: dg.AssetCheckSeverity.WARN, False: dg.AssetCheckSeverity.ERROR}


def _result(key: dg.AssetCheckKey, finding: integrity.Finding) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=key.asset_key,
        check_name=key.name,
        passed=finding.passed,
        severity=SEVERITY[key.name in WARN_ONLY],
        description=finding.description,
        metadata={
            k: dg.MetadataValue.json(v) if isinstance(v, dict | list) else v
            for k, v in finding.metadata.items()
        },
    )


def _fresh(con: duckdb.DuckDBPyConnection, confirmed: datetime | None) -> integrity.Finding:
    # A cycle that changed nothing confirms the published file without republishing it.
    return integrity.last_cycle_fresh(con, confirmed_at=confirmed)


@dg.multi_asset_check(
    specs=[dg.AssetCheckSpec(name, asset=asset, description=doc) for asset, name, doc, _ in CHECKS],
    can_subset=True,
    pool="duckdb_write",
)
def store_integrity(
    context: dg.AssetCheckExecutionContext, store: DynsyncStore
) -> Iterator[dg.AssetCheckResult]:
    """The store's integrity after a cycle: references, propagation, columns, duplicates, age."""
    selected = context.selected_asset_check_keys
    wanted = [
        (dg.AssetCheckKey(dg.AssetKey(asset), name), check)
        for asset, name, _doc, check in CHECKS
        if dg.AssetCheckKey(dg.AssetKey(asset), name) in selected
    ]
    confirmed = confirmed_at(store.path())
    try:
        with open_published(store.path()) as con:
            findings = [
                (key, _fresh(con, confirmed) if check is integrity.last_cycle_fresh else check(con))
                for key, check in wanted
            ]
    except StoreNotReadyError as exc:
        for key, _check in wanted:
            yield dg.AssetCheckResult(
                asset_key=key.asset_key, check_name=key.name, passed=False, description=str(exc)
            )
        return
    for key, finding in findings:
        yield _result(key, finding)


@dg.definitions
def checks() -> dg.Definitions:
    return dg.Definitions(asset_checks=[store_integrity])
