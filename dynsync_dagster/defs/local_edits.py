"""A launchpad job for local edits: exactly what `dynsync set-account-field` does."""

import dagster as dg
from pydantic import Field

from dynsync_dagster.defs.resources import DynsyncStore
from dynsync_dagster.settings import SettingsError, SyncSettings
from dynsync_dagster.sync.local_edit import LocalEditError, confirmation, set_account_field

OP = "set_account_field_locally"


class LocalEditConfig(dg.Config):
    """The three things a user fills in the launchpad. The defaults keep the launchpad valid
    when it opens; a run launched without contact_id or field fails saying which to fill."""

    contact_id: str = Field(default="", description="GUID of a contact; its account is edited.")
    field: str = Field(
        default="", description="Logical name of a synced account field, e.g. address1_city."
    )
    value: str | None = Field(
        default=None, description="The new value; null (or leaving it out) clears the field."
    )


@dg.config_mapping
def launchpad_config(config: LocalEditConfig) -> dg.RunConfig:
    """The job's whole run config is these three fields: the store and the executor come from
    the code location (DYNSYNC_DUCKDB_PATH), so the launchpad does not offer them."""
    return dg.RunConfig(ops={OP: config})


def _missing(config: LocalEditConfig) -> str | None:
    for name, hint in (
        ("contact_id", "the GUID of a contact of the account to edit"),
        ("field", "the logical name of a synced account field, e.g. address1_city"),
    ):
        if not getattr(config, name).strip():
            return f"fill `{name}` in the launchpad config ({hint}); nothing was changed"
    return None


@dg.op(name=OP, pool="duckdb_write", tags={"kind": "duckdb"})
def set_account_field_locally(
    context: dg.OpExecutionContext, config: LocalEditConfig, store: DynsyncStore
) -> None:
    """Set an account field on every contact of the contact's account, in DuckDB only.

    Nothing is sent to Dynamics; the next update of the account in Dynamics overwrites it.
    """
    missing = _missing(config)
    if missing:
        raise dg.Failure(description=missing)
    try:
        result = set_account_field(
            store.path(),
            config.contact_id,
            config.field,
            config.value,
            run_id=context.run.run_id,
            sync=SyncSettings.load(),
        )
    except (LocalEditError, SettingsError) as exc:
        raise dg.Failure(description=str(exc)) from None
    context.log.info(confirmation(result))
    for key in ("contacts", "activity_log"):
        context.log_event(
            dg.AssetObservation(
                asset_key=key,
                metadata={
                    "local_edit/accountid": result.accountid,
                    "local_edit/field": result.field,
                    "local_edit/contacts_changed": result.contacts_changed,
                    "local_edit/activities_logged": result.activities_logged,
                },
            )
        )


@dg.job(
    description="Edit an account field locally on every contact of a contact's account "
    "(DuckDB only; never sent to Dynamics). Fill contact_id, field and value in the launchpad.",
    tags={"dynsync/writer": "duckdb"},
    config=launchpad_config,
)
def local_edit_job() -> None:
    set_account_field_locally()


@dg.definitions
def local_edits() -> dg.Definitions:
    return dg.Definitions(jobs=[local_edit_job])
