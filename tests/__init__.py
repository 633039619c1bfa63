"""The test suite. Imported before any test module, so the settings below hold for all of them.

The assets' daily partitions start at DYNSYNC_PARTITION_START (default 2025-01-01), and the first
sync of a Dagster instance records every day up to today as covered: ~3,500 events on SQLite,
tens of seconds per fresh instance, and the suite makes dozens. Tests use a start two weeks
back (subprocesses too: support.clean_env keeps it); the snapshot test records the start as a
placeholder and checks the default on its own.
"""

import os
from datetime import UTC, datetime, timedelta

TEST_PARTITION_START = (datetime.now(UTC) - timedelta(days=14)).strftime("%Y-%m-%d")
os.environ["DYNSYNC_PARTITION_START"] = TEST_PARTITION_START
