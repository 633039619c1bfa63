"""A sync user that may not read its own security roles (no prvReadRole) still syncs."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynsync_dagster.dynamics.client import DynamicsClient
from dynsync_dagster.dynamics.errors import DynamicsError
from dynsync_dagster.dynamics.fields import resolve_fields
from dynsync_dagster.settings import ConnectionSettings
from dynsync_dagster.simulator import Simulator
from dynsync_dagster.sync.cycle import CycleOptions, run_cycle
from tests.support import RULES_ACCOUNT_FIELDS, RULES_CONTACT_FIELDS, SMALL, sync_settings


@pytest.fixture
def no_role_sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(SMALL, state_dir=tmp_path / "sim", sync_user_can_read_roles=False) as s:
        yield s


def _conn(sim: Simulator, flow: str) -> ConnectionSettings:
    return ConnectionSettings.from_env(sim.env(flow=flow))


@pytest.mark.parametrize("flow", ["client_credentials", "ropc"])
def test_roles_lookup_is_403_with_dataverse_shape(no_role_sim: Simulator, flow: str) -> None:
    with DynamicsClient(_conn(no_role_sim, flow)) as client:
        user_id = client.whoami()["UserId"]
        with pytest.raises(DynamicsError) as caught:
            client.role_names(user_id)
    err = caught.value
    assert (err.status, err.code) == (403, "0x80040220")
    assert "is missing prvReadRole privilege" in err.message
    assert f"Principal user (Id={user_id}" in err.message
    # The hint names the missing privilege instead of blaming read access on the table.
    assert "prvReadRole privilege: add it to its security role" in err.message
    assert "read on the table" not in err.message


def test_default_simulator_still_answers_roles(sim: Simulator) -> None:
    with DynamicsClient(_conn(sim, "client_credentials")) as client:
        assert "Dynsync Reader" in client.role_names(client.whoami()["UserId"])


def test_fields_fall_back_to_column_privileges(no_role_sim: Simulator) -> None:
    with DynamicsClient(_conn(no_role_sim, "client_credentials")) as client:
        plan = resolve_fields(client, RULES_ACCOUNT_FIELDS, RULES_CONTACT_FIELDS)
    assert plan.sync_user_is_admin is False
    [warning] = plan.warnings
    assert "could not read the sync user's security roles" in warning
    assert "0x80040220" in warning and "prvReadRole" in warning
    # RetrievePrincipalAttributePrivileges decided the secured columns, as for any non-admin.
    expected = {
        name
        for name in ("creditlimit", "creditonhold")
        if no_role_sim.org.can_read(no_role_sim.org.app_user_id, "account", name)
    }
    synced = {f.name for f in plan.synced("account")}
    assert synced & {"creditlimit", "creditonhold"} == expected
    assert {"name", "industrycode"} <= synced


def test_cycle_succeeds_and_warns_once(
    no_role_sim: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dynsync"):
        result = run_cycle(
            _conn(no_role_sim, "client_credentials"),
            sync_settings(RULES_ACCOUNT_FIELDS, RULES_CONTACT_FIELDS),
            tmp_path / "dynsync.duckdb",
            CycleOptions(),
        )
    assert any("security roles" in w for w in result.plan.warnings)
    logged = [r for r in caplog.records if "security roles" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].name.startswith("dynsync")


def test_column_privileges_403_leaves_secured_columns_out(tmp_path: Path) -> None:
    with (
        Simulator(
            SMALL,
            state_dir=tmp_path / "sim",
            sync_user_can_read_roles=False,
            sync_user_can_read_users=False,
        ) as sim,
        DynamicsClient(_conn(sim, "client_credentials")) as client,
    ):
        user_id = client.whoami()["UserId"]
        with pytest.raises(DynamicsError) as caught:
            client.attribute_privileges(user_id)
        assert (caught.value.status, caught.value.code) == (403, "0x80040220")
        assert "is missing prvReadUser privilege" in caught.value.message
        plan = resolve_fields(client, RULES_ACCOUNT_FIELDS, RULES_CONTACT_FIELDS)
    assert len(plan.warnings) == 2
    assert "column privileges" in plan.warnings[1] and "prvReadUser" in plan.warnings[1]
    synced = {(f.entity, f.name) for e in ("account", "contact") for f in plan.synced(e)}
    secured = {("account", "creditlimit"), ("account", "creditonhold"), ("contact", "governmentid")}
    assert not synced & secured
    assert ("account", "name") in synced
    reasons = {(d.entity, d.field): d.reason for d in plan.decisions}
    assert "could not be read" in reasons[("account", "creditlimit")]


def test_simulator_cli_flags_model_the_minimal_role() -> None:
    from dynsync_dagster.simulator.__main__ import _parser

    args = _parser().parse_args(["--sync-user-cannot-read-roles", "--sync-user-cannot-read-users"])
    assert args.sync_user_cannot_read_roles and args.sync_user_cannot_read_users
    defaults = _parser().parse_args([])
    assert not defaults.sync_user_cannot_read_roles and not defaults.sync_user_cannot_read_users
