"""The resources bind each setting to its variable by name, keep the optional ones optional,
and fail a run in one line when a required one is missing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest

from dynsync_dagster.defs.resources import build_resources
from dynsync_dagster.settings import (
    CONNECTION_VARIABLES,
    DEFAULT_AUTHORITY_HOST,
    DEFAULT_CONFIG_PATH,
    DEFAULT_DUCKDB_PATH,
)
from tests.support import bound_now

REQUIRED = {
    "DYNAMICS_URL": "https://contoso.crm.dynamics.com",
    "DYNAMICS_TENANT_ID": "tenant",
    "DYNAMICS_CLIENT_ID": "client",
    "DYNAMICS_CLIENT_SECRET": "client-secret-value",
}


@pytest.fixture
def required_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The four required variables and none of the optional ones."""
    for name in (*CONNECTION_VARIABLES.values(), "DYNSYNC_DUCKDB_PATH", "DYNSYNC_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)


def test_without_the_optional_variables_the_defaults_apply(required_only) -> None:
    with dg.build_resources(build_resources()) as resources:
        conn = resources.dynamics.connection()
        store_path, settings_path = resources.store.duckdb_path, resources.store.config_path
    assert conn.flow == "client_credentials"
    assert (conn.authority_host, conn.ca_bundle) == (DEFAULT_AUTHORITY_HOST, None)
    assert (store_path, settings_path) == (DEFAULT_DUCKDB_PATH, DEFAULT_CONFIG_PATH)


def test_each_field_holds_its_variable_name_and_the_run_reads_the_value(
    required_only, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DYNAMICS_USERNAME", "sync@contoso.com")
    monkeypatch.setenv("DYNAMICS_PASSWORD", "password-value")
    monkeypatch.setenv("DYNSYNC_DUCKDB_PATH", str(tmp_path / "store.duckdb"))
    resources = build_resources()
    dynamics = resources["dynamics"]
    # What the UI and the run config show: names, never the secrets.
    assert (dynamics.client_secret, dynamics.password) == (
        "DYNAMICS_CLIENT_SECRET",
        "DYNAMICS_PASSWORD",
    )
    assert resources["store"].duckdb_path == "DYNSYNC_DUCKDB_PATH"
    with dg.build_resources(resources) as built:
        conn = built.dynamics.connection()
        store_path = built.store.path()
    assert (conn.flow, conn.password) == ("ropc", "password-value")
    assert store_path == tmp_path / "store.duckdb"


def test_a_missing_required_variable_fails_the_run_in_one_line(
    required_only, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, definitions
) -> None:
    monkeypatch.delenv("DYNAMICS_URL")
    monkeypatch.setenv("DYNSYNC_DUCKDB_PATH", str(tmp_path / "store.duckdb"))
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    with dg.instance_for_test() as instance:
        job = bound_now(definitions).resolve_job_def("dynamics_sync_job")
        result = job.execute_in_process(
            instance=instance, partition_key=today, raise_on_error=False
        )
    assert not result.success
    failure = result.get_step_failure_events()[0].step_failure_data
    message = failure.user_failure_data.description
    assert message.startswith("missing environment variable(s) DYNAMICS_URL:")
    assert "\n" not in message
    assert not (tmp_path / "store.duckdb").exists()  # nothing was written
