"""A launchpad job for local edits: exactly what `dynsync set-account-field` does."""

import dagster as dg

from dynsync_dagster.defs.resources import DynsyncStore
from dynsync_dagster.sync.local_edit import LocalEditError, set_account_field


class LocalEditConfig(dg.Config):
    """Which contact's account to edit, the account field (logical name) and the new value."""

    contact_id: str
    field: str
    value: str | None = None  # empty clears the field


@dg.op(pool="duckdb_write", tags={"kind": "duckdb"})
def set_account_field_locally(
    context: dg.OpExecutionContext, config: LocalEditConfig, store: DynsyncStore
) -> None:
    """Set an account field on every contact of the contact's account, in DuckDB only.

    Nothing is sent to Dynamics; the next update of the account in Dynamics overwrites it.
    """
    try:
        result = set_account_field(
            store.path(), config.contact_id, config.field, config.value, run_id=context.run.run_id
        )
    except LocalEditError as exc:
        raise dg.Failure(description=str(exc)) from None
    context.log.info(
        f"account {result.accountid}: {result.field} = {result.value!r} on "
        f"{result.contacts_changed} contact(s)"
    )
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
)
def local_edit_job() -> None:
    set_account_field_locally()


@dg.definitions
def local_edits() -> dg.Definitions:
    return dg.Definitions(jobs=[local_edit_job])
