"""dynsync: a Dagster project that keeps a DuckDB copy of Dynamics accounts and contacts."""
