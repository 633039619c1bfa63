"""Resources: the Dynamics connection (secrets via EnvVar) and the DuckDB store with its settings."""

import os
from pathlib import Path

import dagster as dg

from dynsync_dagster.settings import (
    DEFAULT_AUTHORITY_HOST,
    ConnectionSettings,
    SyncSettings,
    duckdb_path,
)


class DynamicsResource(dg.ConfigurableResource):
    """The Dynamics org to read. Set from DYNAMICS_* environment variables; the UI shows their
    names, never their values. DYNAMICS_USERNAME/PASSWORD (ROPC) and DYNAMICS_CA_BUNDLE are
    optional and read from the environment when the run starts."""

    url: str
    tenant_id: str
    client_id: str
    client_secret: str
    authority_host: str = DEFAULT_AUTHORITY_HOST

    def connection(self) -> ConnectionSettings:
        env = {k: v for k, v in os.environ.items() if k.startswith("DYNAMICS_")}
        env.update(
            DYNAMICS_URL=self.url,
            DYNAMICS_TENANT_ID=self.tenant_id,
            DYNAMICS_CLIENT_ID=self.client_id,
            DYNAMICS_CLIENT_SECRET=self.client_secret,
        )
        env.setdefault("DYNAMICS_AUTHORITY_HOST", self.authority_host)
        return ConnectionSettings.from_env(env)


class DynsyncStore(dg.ConfigurableResource):
    """The DuckDB file and the settings YAML. Empty values fall back to DYNSYNC_DUCKDB_PATH /
    DYNSYNC_CONFIG and then to data/dynsync.duckdb / dynsync.yaml."""

    duckdb_path: str = ""
    config_path: str = ""

    def path(self) -> Path:
        return Path(self.duckdb_path) if self.duckdb_path else duckdb_path()

    def sync_settings(self) -> SyncSettings:
        return SyncSettings.load(self.config_path or None)


def build_resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "dynamics": DynamicsResource(
            url=dg.EnvVar("DYNAMICS_URL"),
            tenant_id=dg.EnvVar("DYNAMICS_TENANT_ID"),
            client_id=dg.EnvVar("DYNAMICS_CLIENT_ID"),
            client_secret=dg.EnvVar("DYNAMICS_CLIENT_SECRET"),
        ),
        "store": DynsyncStore(),
    }


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources())
