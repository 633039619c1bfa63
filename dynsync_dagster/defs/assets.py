"""The sync as assets: Dynamics sources -> fields -> accounts -> contacts -> activity log.

One multi-asset, because one cycle is one DuckDB transaction: every table of a cycle
commits together or not at all, and the graph still shows each table and its lineage.
"""

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime

import dagster as dg

from dynsync_dagster.defs.coverage import record
from dynsync_dagster.defs.partitions import daily_modifiedon
from dynsync_dagster.defs.resources import DynamicsResource, DynsyncStore
from dynsync_dagster.dynamics.fields import FieldPlan
from dynsync_dagster.store.lineage import column_sources, describe
from dynsync_dagster.sync.cycle import CycleOptions, CycleResult, run_cycle

OWNERS = ["team:data-engineering"]
GROUP = "dynsync"

dynamics_accounts = dg.AssetSpec(
    key=["dynamics", "account"],
    description="The `accounts` entity set of the Dynamics org (read-only source, Web API v9.2).",
    group_name="dynamics",
    kinds={"dynamics"},
    owners=OWNERS,
)
dynamics_contacts = dg.AssetSpec(
    key=["dynamics", "contact"],
    description="The `contacts` entity set of the Dynamics org (read-only source, Web API v9.2).",
    group_name="dynamics",
    kinds={"dynamics"},
    owners=OWNERS,
)


# Said on every table: what its partitions mean, and where its column lineage is shown.
_PARTITIONS_AND_LINEAGE = """

**Partitions** are days of Dynamics `modifiedon` (UTC). A day is materialized once a cycle has
read every change made on it: the first cycle (and any full read) covers every day up to today,
each later cycle today and the days since the last one, and a backfill re-reads its range.
Every run records all five tables, whichever one it was launched from. A day still missing
was covered by no cycle recorded here: backfill it to re-read it.

**Column lineage** is recorded in the `dagster/column_lineage` metadata and the store's
`column_lineage` table, but the open-source UI does not draw it: run
`dynsync lineage TABLE.COLUMN` (e.g. `dynsync lineage contacts.account_name`) to see a
column's sources back to the Dynamics attribute."""


def _spec(key: str, description: str, deps: list) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=key,
        description=description + _PARTITIONS_AND_LINEAGE,
        deps=deps,
        group_name=GROUP,
        kinds={"dynamics", "duckdb"},
        owners=OWNERS,
        partitions_def=daily_modifiedon,
        metadata={"dagster/table_name": f"dynsync.main.{key}"},
    )


SYNC_SPECS = [
    _spec(
        "sync_fields",
        "The filtered fields: the selection in the settings file intersected with the org's "
        "metadata (exists, valid for read) and column security. One row per attribute, with "
        "why it does or does not sync.",
        [dynamics_accounts, dynamics_contacts],
    ),
    _spec(
        "accounts",
        "Dynamics accounts with the synced account fields; deleted ones kept and flagged.",
        [dynamics_accounts, "sync_fields"],
    ),
    _spec(
        "contacts",
        "Dynamics contacts with their synced fields and every synced account field of their "
        "account copied on as `account_<field>` (local edits overlay until Dynamics updates "
        "the account).",
        [dynamics_contacts, "accounts", "sync_fields"],
    ),
    _spec(
        "activity_log",
        "The Change Data Value activity log: one row per contact per account field whose "
        "stored value changed (source `Dynamics sync` or `Local update`).",
        ["contacts"],
    ),
    _spec(
        "sync_runs",
        "One row per cycle: start, end, outcome, rows read and changed, activities logged and "
        "suppressed, requests and throttling.",
        ["activity_log"],
    ),
]


def _window(context: dg.AssetExecutionContext) -> tuple[datetime, datetime] | None:
    """A backfill, or a run for days before today, re-reads the records modified in its range.

    The scheduled run (today's partition) reads incrementally from where the last committed
    cycle stopped, whatever day that was.
    """
    if not context.has_partition_key_range:
        return None
    window = context.partition_time_window
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    in_backfill = "dagster/backfill" in context.run.tags
    if in_backfill or window.end <= today:
        return window.start, window.end
    return None


@dg.multi_asset(
    name="dynamics_sync",
    specs=SYNC_SPECS,
    partitions_def=daily_modifiedon,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="duckdb_write",
    # Any selection runs a whole cycle (one transaction) and records every table it wrote
    # (coverage.record). Subsettable only because Dagster 1.13's webserver refuses a range
    # backfill from the asset graph for a non-subsettable multi-asset (its partition-subset
    # equality check fails).
    can_subset=True,
)
def dynamics_sync(
    context: dg.AssetExecutionContext, dynamics: DynamicsResource, store: DynsyncStore
) -> Iterator[dg.MaterializeResult]:
    """One sync cycle: fetch what changed in Dynamics and apply the account-sync rules."""
    window = _window(context)
    trigger = context.run.tags.get("dynsync/trigger") or (
        "backfill" if "dagster/backfill" in context.run.tags else "manual"
    )
    result = run_cycle(
        dynamics.connection(),
        store.sync_settings(),
        store.path(),
        CycleOptions(window=window, trigger=trigger, run_id=context.run.run_id),
    )
    context.log.info(
        f"cycle {result.run_id}: modes {result.modes}, read {result.rows_read}, "
        f"{result.counts.activities_logged} activities logged, "
        f"{result.counts.activities_suppressed} suppressed"
    )
    yield from record(context, list(materializations(result)), result.modes)


def materializations(result: CycleResult) -> Iterator[dg.MaterializeResult]:
    """One result per table, each with its row count, schema, lineage and the cycle's figures."""
    for table, figures in (
        ("sync_fields", _field_figures(result)),
        ("accounts", _account_figures(result)),
        ("contacts", _contact_figures(result)),
        ("activity_log", _activity_figures(result)),
        ("sync_runs", _run_figures(result)),
    ):
        # Row counts and schemas were read by the cycle on its own connection: no second look
        # at the store.
        meta = _table_meta(table, result.table_schemas, result.table_rows, result.plan)
        yield dg.MaterializeResult(asset_key=table, metadata={**meta, **figures})


def _common(result: CycleResult) -> dict:
    return {
        "dynsync/run_id": result.run_id,
        "dynsync/modes": dg.MetadataValue.json(result.modes),
    }


def _field_figures(result: CycleResult) -> dict:
    return {
        "fields_excluded": dg.MetadataValue.md(_excluded_markdown(result.plan)),
        "sync_user_is_admin": result.plan.sync_user_is_admin,
        "change_tracking": dg.MetadataValue.json(result.plan.change_tracking),
        "warnings": dg.MetadataValue.json(result.plan.warnings),
    }


def _account_figures(result: CycleResult) -> dict:
    counts = result.counts
    return {
        **_common(result),
        "records_read": result.rows_read.get("account", 0),
        "deletions_read": result.deletions_read.get("account", 0),
        "records_upserted": counts.accounts_upserted,
        "records_deleted": counts.accounts_deleted,
        "local_edits_overwritten": counts.local_edits_overwritten,
        "records_filtered": counts.accounts_filtered,
        "sync_filter": result.plan.sync_filter.get("account") or "(none in the org)",
        "updates_blocked": counts.updates_blocked,
        **_reader_meta(result, "account"),
    }


def _contact_figures(result: CycleResult) -> dict:
    counts = result.counts
    return {
        **_common(result),
        "records_read": result.rows_read.get("contact", 0),
        "deletions_read": result.deletions_read.get("contact", 0),
        "records_upserted": counts.contacts_upserted,
        "records_deleted": counts.contacts_deleted,
        "contacts_repropagated": counts.contacts_repropagated,
        "records_filtered": counts.contacts_filtered,
        "sync_filter": result.plan.sync_filter.get("contact") or "(none in the org)",
        **_reader_meta(result, "contact"),
    }


def _activity_figures(result: CycleResult) -> dict:
    counts = result.counts
    return {
        **_common(result),
        "activities_logged": counts.activities_logged,
        "activities_suppressed": counts.activities_suppressed,
        "suppressed_accounts": dg.MetadataValue.json(counts.suppressed_accounts),
    }


def _run_figures(result: CycleResult) -> dict:
    stats = result.stats
    return {
        **_common(result),
        "requests": stats.requests,
        "retries": stats.retries,
        "throttled": stats.throttled,
        "throttle_wait_s": round(stats.throttle_wait_s, 3),
        "backoff_wait_s": round(stats.backoff_wait_s, 3),
        "fetch_s": round(result.fetch_s, 3),
        "write_s": round(result.write_s, 3),
        # Sync Errors: this cycle's; the no_records_set_aside check lists the latest ones
        "records_set_aside": result.record_errors,
    }


def _table_meta(table: str, schemas: dict, rows: dict, plan: FieldPlan) -> dict:
    described = describe(plan, table)
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(name=c, type=t, description=described.get(c))
            for c, t in schemas[table].items()
        ]
    )
    meta: dict = {
        "dagster/row_count": rows[table],
        "dagster/column_schema": schema,
    }
    deps = {}
    for s in column_sources(plan):
        if s.table != table or s.column not in schemas[table]:
            continue
        if s.source_table.startswith("dynamics."):
            key = dg.AssetKey(["dynamics", s.source_table.split(".", 1)[1]])
        else:
            key = dg.AssetKey(s.source_table)
        deps[s.column] = [dg.TableColumnDep(asset_key=key, column_name=s.source_column)]
    if deps:
        meta["dagster/column_lineage"] = dg.TableColumnLineage(deps_by_column=deps)
    return meta


def _reader_meta(result: CycleResult, entity: str) -> dict:
    state = result.reader_states.get(entity)
    if state is None:
        return {"reader_mode": result.modes.get(entity, "")}
    meta = {"reader_mode": result.modes.get(entity, ""), "reader_state": state.mode}
    if state.updated_at is not None:
        with contextlib.suppress(TypeError):
            age = datetime.now(UTC) - state.updated_at
            meta["reader_state_age_s"] = round(age.total_seconds(), 1)
    if state.cursor_modifiedon is not None:
        meta["cursor_modifiedon"] = state.cursor_modifiedon.isoformat()
    if state.delta_link and "$deltatoken=" in state.delta_link:
        # The delta token is a version stamp, not a secret; show the token, not the whole URL.
        # (A parallel first copy's `tracking` state holds a page link, not a token, yet.)
        meta["delta_token"] = state.delta_link.rsplit("$deltatoken=", 1)[-1][:80]
    return meta


def _excluded_markdown(plan: FieldPlan) -> str:
    rows = [d for d in plan.decisions if d.selected and not d.synced]
    if not rows:
        return "Every selected field syncs."
    lines = ["| entity | field | reason |", "|---|---|---|"]
    lines += [f"| {d.entity} | {d.field} | {d.reason} |" for d in rows]
    return "\n".join(lines)


@dg.definitions
def assets() -> dg.Definitions:
    return dg.Definitions(
        assets=[
            dynamics_accounts,
            dynamics_contacts,
            *dg.with_source_code_references([dynamics_sync]),
        ]
    )
