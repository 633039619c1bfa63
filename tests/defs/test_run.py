"""A real Dagster materialization of the sync against the simulator."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg


def test_job_materializes_every_table_with_metadata(sync_env: Path, bound_definitions) -> None:
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    with dg.instance_for_test() as instance:
        job = bound_definitions.resolve_job_def("dynamics_sync_job")
        result = job.execute_in_process(instance=instance, partition_key=today)
        assert result.success
        mats = {
            m.asset_key.to_user_string(): m
            for m in result.asset_materializations_for_node("dynamics_sync")
        }
        assert set(mats) == {"sync_fields", "accounts", "contacts", "activity_log", "sync_runs"}
        contacts = mats["contacts"].metadata
        assert contacts["dagster/row_count"].value > 0
        schema = contacts["dagster/column_schema"].schema
        described = {c.name: c.description for c in schema.columns}
        assert "accounts.name" in described["account_name"]
        lineage = contacts["dagster/column_lineage"].lineage
        dep = lineage.deps_by_column["account_name"][0]
        assert (dep.asset_key, dep.column_name) == (dg.AssetKey("accounts"), "name")
        assert mats["accounts"].metadata["reader_mode"].value == "full"
        for table in ("activity_log", "sync_runs", "sync_fields"):
            columns = mats[table].metadata["dagster/column_schema"].schema.columns
            blank = [c.name for c in columns if not (c.description or "").strip()]
            assert columns and not blank, f"{table}: no description for {blank}"
        excluded = mats["sync_fields"].metadata["fields_excluded"].value
        assert "creditonhold" in excluded

        second = job.execute_in_process(instance=instance, partition_key=today)
        assert second.success
        again = {
            m.asset_key.to_user_string(): m
            for m in second.asset_materializations_for_node("dynamics_sync")
        }
        assert again["accounts"].metadata["reader_mode"].value == "delta"
        assert again["accounts"].metadata["records_read"].value == 0


def test_local_edit_job_does_what_the_cli_does(sync_env: Path, bound_definitions, sim) -> None:
    from dynsync_dagster.store.connection import open_store

    today = datetime.now(UTC).strftime("%Y-%m-%d")
    org = sim.org
    account = next(a for a in org.account_ids() if len(org.contacts_of(a)) == 8)
    contact = org.contacts_of(account)[0]
    with dg.instance_for_test() as instance:
        assert (
            bound_definitions.resolve_job_def("dynamics_sync_job")
            .execute_in_process(instance=instance, partition_key=today)
            .success
        )
        edit = bound_definitions.resolve_job_def("local_edit_job")
        config = {"contact_id": contact, "field": "name", "value": "Edited in the launchpad"}
        result = edit.execute_in_process(instance=instance, run_config=config)
        assert result.success
        with open_store(sync_env, read_only=True) as con:
            names = con.execute(
                "SELECT DISTINCT account_name FROM contacts WHERE accountid = ?", [account]
            ).fetchall()
            logged = con.execute(
                "SELECT count(*) FROM activity_log WHERE source = 'Local update'"
            ).fetchone()[0]
        assert names == [("Edited in the launchpad",)]
        assert logged == 8
        orphan = next(
            c for c in org.contact_ids() if org.get_contact(c)["parentcustomerid"] is None
        )
        config["contact_id"] = orphan
        refused = edit.execute_in_process(
            instance=instance, run_config=config, raise_on_error=False
        )
        assert not refused.success
        failure = refused.get_step_failure_events()[0].step_failure_data
        assert "accounts are created in Dynamics only" in failure.user_failure_data.description
        # Every check passes after a sync and a local edit.
        sync = bound_definitions.resolve_job_def("dynamics_sync_job").execute_in_process(
            instance=instance, partition_key=today
        )
        checks = sync.get_asset_check_evaluations()
        assert len(checks) == 6 and all(c.passed for c in checks), [
            (c.check_name, c.description) for c in checks if not c.passed
        ]


def test_the_local_edit_launchpad_asks_for_three_fields_and_opens_valid(definitions) -> None:
    """The launchpad opens without a config error and offers only what a user sets."""
    edit = definitions.resolve_job_def("local_edit_job")
    fields = edit.run_config_schema.config_type.fields
    assert set(fields) == {"contact_id", "field", "value"}
    assert all(f.description for f in fields.values())
    assert dg.validate_run_config(edit, {})  # raises on a config error


def test_a_local_edit_launched_empty_says_which_field_to_fill(
    sync_env: Path, bound_definitions
) -> None:
    with dg.instance_for_test() as instance:
        edit = bound_definitions.resolve_job_def("local_edit_job")  # inside: see support.bound_now
        result = edit.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    message = result.get_step_failure_events()[0].step_failure_data.user_failure_data.description
    assert message == (
        "fill `contact_id` in the launchpad config (the GUID of a contact of the account to "
        "edit); nothing was changed"
    )
    assert not sync_env.exists()
