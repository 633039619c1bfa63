"""The DuckDB store: opening it and its locks, its tables, the sync's own status tables,
column lineage, integrity checks, and publishing the file readers open."""
