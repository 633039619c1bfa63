"""Daily partitions on Dynamics `modifiedon` (UTC): the unit of a date-range re-sync."""

import os

import dagster as dg

DEFAULT_PARTITION_START = "2025-01-01"

# Read when the code location loads: a partitions definition needs a fixed start date.
daily_modifiedon = dg.DailyPartitionsDefinition(
    start_date=os.environ.get("DYNSYNC_PARTITION_START") or DEFAULT_PARTITION_START,
    timezone="UTC",
    end_offset=1,  # today is a partition too: the scheduled cycle materializes it
)
