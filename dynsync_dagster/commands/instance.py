"""The Dagster instance configuration for a team: dynsync's policy on PostgreSQL storage.

The policy (one DuckDB writer at a time, the run queue, retries, run monitoring) is written
once, in dagster_home/dagster.yaml; a PostgreSQL instance is that file plus a `storage` block
whose every setting comes from a DAGSTER_PG_* environment variable, so no password is ever in
a file. `dynsync instance --postgres` prints it (README: "Running it for a team").
"""

from __future__ import annotations

from pathlib import Path

from dynsync_dagster.commands.runs import REPO_ROOT

POLICY = REPO_ROOT / "dagster_home" / "dagster.yaml"
PG_VARIABLES = ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USERNAME",
                "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB")  # fmt: skip

POSTGRES_STORAGE = """
# Runs, event logs and schedules in PostgreSQL, so that the webserver, the daemon and run
# workers on other machines share them. Every value comes from the environment.
storage:
  postgres:
    postgres_db:
      hostname: {env: DAGSTER_PG_HOST}
      port: {env: DAGSTER_PG_PORT}
      username: {env: DAGSTER_PG_USERNAME}
      password: {env: DAGSTER_PG_PASSWORD}
      db_name: {env: DAGSTER_PG_DB}
      # The driver dagster-postgres installs: SQLAlchemy 2.1 would otherwise pick psycopg 3.
      scheme: postgresql+psycopg2
"""


def instance_yaml(*, postgres: bool) -> str:
    """dagster.yaml for an instance: the project's policy, on PostgreSQL if asked."""
    policy = POLICY.read_text()
    return policy.rstrip() + "\n" + POSTGRES_STORAGE if postgres else policy


def write_home(home: Path, *, postgres: bool) -> Path:
    """Make `home` a DAGSTER_HOME with that configuration; returns its dagster.yaml."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    config.write_text(instance_yaml(postgres=postgres))
    return config
