"""Resources: the Dynamics connection and the DuckDB store, each setting bound to its variable.

Every field is set with `dg.EnvVar`, so the UI and the run config show the variable's name,
never its value. Only variables that are set when the code location loads are bound: Dagster
fails a run on an unset `EnvVar` with a multi-line config error and offers no default, and
the optional settings (DYNAMICS_USERNAME, DYNAMICS_CA_BUNDLE, ...) must stay optional.
A missing required variable then fails the run in one line, from `connection()`.
"""

import os
from pathlib import Path

import dagster as dg

from dynsync_dagster.settings import (
    CONNECTION_VARIABLES,
    DEFAULT_CONFIG_PATH,
    DEFAULT_DUCKDB_PATH,
    ConnectionSettings,
    SettingsError,
    SyncSettings,
)


class DynamicsResource(dg.ConfigurableResource):
    """The Dynamics org to read and how to sign in (DYNAMICS_* variables).

    URL, tenant id, client id and client secret are required; DYNAMICS_USERNAME and
    DYNAMICS_PASSWORD (the username/password flow), DYNAMICS_AUTHORITY_HOST and
    DYNAMICS_CA_BUNDLE are optional.
    """

    url: str | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    username: str | None = None
    password: str | None = None
    authority_host: str | None = None
    ca_bundle: str | None = None

    def connection(self) -> ConnectionSettings:
        """The checked settings; a missing or malformed one fails the run in one line."""
        try:
            return ConnectionSettings.checked(
                url=self.url,
                tenant_id=self.tenant_id,
                client_id=self.client_id,
                client_secret=self.client_secret,
                username=self.username,
                password=self.password,
                authority_host=self.authority_host,
                ca_bundle=self.ca_bundle,
            )
        except SettingsError as exc:  # its message names the variable and the fix
            raise dg.Failure(description=str(exc)) from None


class DynsyncStore(dg.ConfigurableResource):
    """The DuckDB file the sync writes, and the settings YAML that selects the fields."""

    duckdb_path: str = DEFAULT_DUCKDB_PATH  # DYNSYNC_DUCKDB_PATH
    config_path: str = DEFAULT_CONFIG_PATH  # DYNSYNC_CONFIG

    def path(self) -> Path:
        return Path(self.duckdb_path or DEFAULT_DUCKDB_PATH)

    def sync_settings(self) -> SyncSettings:
        return SyncSettings.load(self.config_path or DEFAULT_CONFIG_PATH)


STORE_VARIABLES = {"duckdb_path": "DYNSYNC_DUCKDB_PATH", "config_path": "DYNSYNC_CONFIG"}


def _bound(variables: dict[str, str]) -> dict[str, dg.EnvVar]:
    """Field -> `dg.EnvVar` for each variable set now (see the module docstring)."""
    return {field: dg.EnvVar(name) for field, name in variables.items() if name in os.environ}


def build_resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "dynamics": DynamicsResource(**_bound(CONNECTION_VARIABLES)),
        "store": DynsyncStore(**_bound(STORE_VARIABLES)),
    }


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources=build_resources())
