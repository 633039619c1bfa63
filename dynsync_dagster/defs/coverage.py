"""Which daily partitions a cycle covered, and the materializations that record them.

A partition is a day of Dynamics `modifiedon`. It is covered once a cycle has read every change
made on it: a full read (the first cycle, an expired delta token, a changed selection) covers
every day up to today; any other cycle covers today, the days since the last covered day, and a
backfill's range. Dagster records the run's own partitions of the selected tables; this module
records the rest, so that the catalog shows what the store holds, not which day a run was for.
"""

from collections.abc import Iterator, Sequence

import dagster as dg

from dynsync_dagster.defs.partitions import daily_modifiedon

# Reader modes that read every record of the table, whatever day it was modified.
READ_WHOLE = {"full", "resync"}


def covered_days(
    instance: dg.DagsterInstance, key: dg.AssetKey, modes: dict[str, str], run_days: Sequence[str]
) -> list[str]:
    """The days of `key` this cycle covered that no run has recorded yet, oldest first."""
    every = daily_modifiedon.get_partition_keys()  # the last one is today
    recorded = instance.get_materialized_partitions(key)
    if READ_WHOLE & set(modes.values()):
        covered = set(every)
    else:
        # Every cycle first reads everything changed since the last committed one.
        last = max((day for day in recorded if day <= every[-1]), default=every[-1])
        covered = {day for day in every if day >= last} | set(run_days)
    return sorted(covered - recorded - set(run_days))


def record(
    context: dg.AssetExecutionContext,
    results: Sequence[dg.MaterializeResult],
    modes: dict[str, str],
) -> Iterator[dg.MaterializeResult]:
    """Log what Dagster would not record itself, then yield the selected tables' results.

    Every table the cycle wrote is recorded, whatever the selection: a run launched from one
    asset's page still ran the whole cycle. The earlier days go first, so that each table's
    latest materialization is the one with this run's figures.
    """
    run_days = context.partition_keys
    how = "full read" if READ_WHOLE & set(modes.values()) else "incremental read"
    logged = 0
    for result in results:
        for day in covered_days(context.instance, result.asset_key, modes, run_days):
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=result.asset_key, partition=day, metadata={"covered_by": how}
                )
            )
            logged += 1
    if logged:
        context.log.info(f"{how}: recorded {logged} earlier partition(s) as covered")
    selected = context.selected_asset_keys
    for result in results:
        if result.asset_key in selected:
            yield result
            continue
        for day in run_days:
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=result.asset_key, partition=day, metadata=result.metadata or {}
                )
            )
