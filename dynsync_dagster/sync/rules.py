"""The account-sync rules as set-based SQL: apply a cycle's staged rows to the store.

Runs inside the cycle's single transaction, with the stage attached read-only as `stage`.
Rule numbers are those of README.md, "The rules, for analysts".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import duckdb

from dynsync_dagster.dynamics.fields import PRIMARY_KEY, FieldPlan, FieldSpec
from dynsync_dagster.store.outbox import record_cycle
from dynsync_dagster.store.schema import SchemaChange, literal, quote, rewrite_rows
from dynsync_dagster.sync.activity import (
    REASON_ACCOUNT_UPDATED,
    REASON_JOINED,
    REASON_LEFT,
    REASON_MOVED,
    REASON_RESTORED,
    SOURCE_SYNC,
    activity_value_sql,
    log_activity,
)
from dynsync_dagster.sync.stage import SYNC_FLAG, attached, rows_table, typed_view

# Re-propagation writes in place when at most this many columns change (see _repropagate).
IN_PLACE_MAX_COLUMNS = 6

# A contact's membership: the parent customer, and the account when the parent is one.
MEMBERSHIP = ("accountid", "parentcustomerid", "parentcustomerid_type")

# A contact of con_upd (alias u) that carries another account's values, or old ones: it
# joined an account, moved, left its account or was restored.
REPOINTED = "(NOT u.is_new AND (u.old_accountid IS DISTINCT FROM u.accountid OR u.was_deleted))"

# The scratch tables of one cycle's rules (acc_upd a view on a first load), dropped once
# they are applied.
SCRATCH_TABLES = (
    "acc_upd",
    "acc_old",
    "acc_before",
    "acc_after",
    "con_upd",
    "members",
    "prop",
    "prop_vals",
    "touched",
    "suppressions",
)


@dataclass
class MergeCounts:
    """What a cycle's rules did, for the run's report and metadata."""

    accounts_upserted: int = 0
    accounts_deleted: int = 0
    contacts_upserted: int = 0
    contacts_deleted: int = 0
    contacts_repropagated: int = 0
    local_edits_overwritten: int = 0
    activities_logged: int = 0
    activities_suppressed: int = 0
    suppressed_accounts: list[dict] = field(default_factory=list)
    # Records the sync filter kept out this cycle (staged with No): not created, or left stale.
    accounts_filtered: int = 0
    contacts_filtered: int = 0
    # (account, field) pairs whose Dynamics change stayed off the contacts (dynamics_sync block)
    updates_blocked: int = 0
    # Rows the sync filter changed: records gone stale, filtered_records added or removed.
    filter_changes: int = 0


@dataclass(frozen=True)
class MergeContext:
    """What the rules need to know about the cycle besides the stage."""

    plan: FieldPlan
    schema: SchemaChange
    reconcile_deletes: dict[str, bool]  # full reads: ids not seen were deleted in Dynamics
    run_id: str
    now: datetime
    contact_limit: int
    # Account fields whose Dynamics changes stay off the contacts (block_field_updates:
    # dynamics_sync), an explicit opt-in exception to rule 5.
    blocked_fields: frozenset[str] = frozenset()


def effective_accounts_sql(
    fields: list[FieldSpec], where: str = "", source: str = "accounts"
) -> str:
    """Account values as contacts should see them: Dynamics values, overlaid by pending local edits.

    `where` filters the accounts (alias a) before anything is joined to them, and the local
    edits are pivoted to one row per account, so the cost follows the accounts asked for.
    `source` is the accounts table or a copy of some of its rows.
    """
    cols = ["a.accountid"]
    pivot = ["accountid"]
    for i, f in enumerate(fields):
        has, value = f"has{i}", f"v{i}"
        pivot += [
            f"count(*) FILTER (WHERE field = {literal(f.name)}) > 0 AS {has}",
            f"any_value(value) FILTER (WHERE field = {literal(f.name)}) AS {value}",
        ]
        edited = f"coalesce(e.{has}, false)"
        cols.append(
            f"CASE WHEN {edited} THEN CAST(e.{value} AS {f.duck_type}) "
            f"ELSE a.{quote(f.name)} END AS {quote(f.name)}"
        )
        if f.label_column:
            cols.append(
                f"CASE WHEN {edited} THEN "
                f"(SELECT l.label FROM choice_labels l WHERE l.entity = 'account' "
                f"AND l.field = {literal(f.name)} AND l.value = CAST(e.{value} AS INTEGER)) "
                f"ELSE a.{quote(f.label_column)} END AS {quote(f.label_column)}"
            )
        if f.target_column:
            cols.append(f"a.{quote(f.target_column)}")
    edits = f"SELECT {', '.join(pivot)} FROM local_edits GROUP BY accountid"
    return (
        f"SELECT {', '.join(cols)} FROM (SELECT * FROM {source} a {where}) a "
        f"LEFT JOIN ({edits}) e ON e.accountid = a.accountid"
    )


def account_columns(plan: FieldPlan) -> list[str]:
    return [c for f in plan.synced("account") for c, _t in f.columns()]


def contact_columns(plan: FieldPlan) -> list[str]:
    return [c for f in plan.synced("contact") for c, _t in f.columns()]


def apply_cycle(con: duckdb.DuckDBPyConnection, ctx: MergeContext) -> MergeCounts:
    """Apply the staged rows: accounts, then contacts, then account values onto contacts."""
    counts = MergeCounts()
    # On the first load every record is inserted with all its values: nothing to refill.
    had_accounts, had_contacts = (
        bool(_scalar(con, f"SELECT count(*) FROM (SELECT 1 FROM {t} LIMIT 1)"))
        for t in ("accounts", "contacts")
    )
    _apply_accounts(con, ctx, counts, had_accounts)
    counts.accounts_filtered = _filter_out(con, ctx, counts, "account", "accounts", "acc_upd")
    if had_contacts:
        _apply_contacts(con, ctx, counts)
        _repropagate(con, ctx, counts)
        _refill_new_account_columns(con, ctx)
    else:
        # No contact existed before this cycle: none can change, move or be deleted, and
        # none needs its account values re-propagated.
        _insert_first_contacts(con, ctx, counts)
    counts.contacts_filtered = _filter_out(
        con, ctx, counts, "contact", "contacts", "con_upd" if had_contacts else None
    )
    # What PostgreSQL's copy must ship (store/outbox.py), read while prop_vals still exists.
    record_cycle(con, ctx.run_id, ctx.schema)
    found = con.execute("SELECT view_name FROM duckdb_views() WHERE temporary").fetchall()
    views = {r[0] for r in found}
    for t in SCRATCH_TABLES:
        con.execute(f"DROP {'VIEW' if t in views else 'TABLE'} IF EXISTS {t}")
    return counts


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> int:
    row = con.execute(sql, params or []).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def _written(result: duckdb.DuckDBPyConnection) -> int:
    """How many rows an INSERT, UPDATE or DELETE wrote (DuckDB returns the count)."""
    return int(result.fetchone()[0])


# ---- records: accounts, then contacts (rules 1, 3, 5) ------------------------------------


def _staged_updates(entity: str, table: str, stored: str = "") -> str:
    """The staged records that are new or newer than the stored ones, with `is_new`.

    Rule 5: only a higher versionnumber is an update; a re-read of the same version is not,
    and an older version (a backfill re-reading history) never overwrites newer data. A
    deleted record seen again at its version is back. `stored` adds columns of the stored
    row (alias t).
    """
    key = PRIMARY_KEY[entity]
    # The sync filter: a record Dynamics marks No is never created nor updated (_filter_out).
    return f"""
        SELECT s.*, t.{key} IS NULL AS is_new{stored}
        FROM {attached(typed_view(entity))} s LEFT JOIN {table} t USING ({key})
        WHERE NOT s._deleted AND s.{SYNC_FLAG} IS NOT false
          AND (t.{key} IS NULL OR s.versionnumber > t.versionnumber
               OR (t.is_deleted AND s.versionnumber >= t.versionnumber))
        """


def _rewrite_updated(
    con: duckdb.DuckDBPyConnection,
    ctx: MergeContext,
    entity: str,
    table: str,
    updates: str,
    columns: list[str],
    current: str | None = None,
) -> None:
    """Write the staged values of the updated, not new, records of `updates` over the stored
    ones: as a delete and an append, since an UPDATE of a thousand scattered rows rewrites
    nearly every block of the table."""
    rewrite_rows(
        con,
        table,
        PRIMARY_KEY[entity],
        {
            **{c: f"v.{quote(c)}" for c in [*columns, "modifiedon", "versionnumber"]},
            "is_deleted": "false",
            "deleted_at": "NULL",
            "sync_filtered": "false",  # a stale record the filter lets through again
            "last_synced_at": "$now",
            "last_run_id": "$run",
        },
        f"(SELECT * FROM {updates} WHERE NOT is_new)",
        params={"now": ctx.now, "run": ctx.run_id},
        current=current,
    )


def _fill_added_columns(
    con: duckdb.DuckDBPyConnection, entity: str, table: str, added: list[str]
) -> None:
    """A field added to the selection: fill it on records whose version did not change (the
    full re-read staged them all; the changed ones were written whole)."""
    if not added:
        return
    key = PRIMARY_KEY[entity]
    fill = ", ".join(f"{quote(c)} = s.{quote(c)}" for c in added)
    con.execute(
        f"UPDATE {table} t SET {fill} FROM {attached(typed_view(entity))} s "
        f"WHERE t.{key} = s.{key} AND NOT s._deleted AND s.versionnumber = t.versionnumber"
    )


def _mark_deleted(
    con: duckdb.DuckDBPyConnection, entity: str, table: str, ctx: MergeContext
) -> int:
    """Flag the records Dynamics deleted (their rows stay); return how many. A stale record
    (sync_filtered) takes no Dynamics change, its deletion included."""
    key = PRIMARY_KEY[entity]
    params = {"now": ctx.now, "run": ctx.run_id}
    deleted = _written(
        con.execute(
            f"""
            UPDATE {table} SET is_deleted = true, deleted_at = $now, last_run_id = $run
            WHERE NOT is_deleted AND NOT sync_filtered
              AND {key} IN (SELECT {key} FROM {attached(typed_view(entity))} WHERE _deleted)
            """,
            params,
        )
    )
    if ctx.reconcile_deletes.get(entity):
        # A full read saw every live record: anything stored but not seen is gone in Dynamics.
        # Seen means staged at all: a record set aside for a value it cannot store still
        # exists in Dynamics (the raw stage rows, not the typed view, which leaves it out).
        deleted += _written(
            con.execute(
                f"""
                UPDATE {table} t SET is_deleted = true, deleted_at = $now, last_run_id = $run
                WHERE NOT t.is_deleted AND NOT t.sync_filtered
                  AND NOT EXISTS (SELECT 1 FROM {attached(rows_table(entity))} s
                                  WHERE NOT s._deleted AND s._key = t.{key})
                """,
                params,
            )
        )
    return deleted


def _apply_accounts(
    con: duckdb.DuckDBPyConnection, ctx: MergeContext, counts: MergeCounts, refill: bool
) -> None:
    """Write the accounts Dynamics added or changed, flag the deleted ones, and drop the local
    edits Dynamics overwrote."""
    if refill:
        upserts = _staged_updates("account", "accounts")
        con.execute(f"CREATE OR REPLACE TEMP TABLE acc_upd AS {upserts}")
    else:
        # No account stored yet: every live staged one is new, read where it is rather than
        # copied (at 100,000 accounts 0.09 s and 37 MB of DuckDB's budget the contacts need).
        con.execute(
            "CREATE OR REPLACE TEMP VIEW acc_upd AS SELECT s.*, true AS is_new "
            f"FROM {attached(typed_view('account'))} s "
            f"WHERE NOT s._deleted AND s.{SYNC_FLAG} IS NOT false"
        )
    counts.accounts_upserted = _scalar(con, "SELECT count(*) FROM acc_upd")
    _keep_accounts_before(con, ctx)
    cols = account_columns(ctx.plan)
    _rewrite_updated(con, ctx, "account", "accounts", "acc_upd", cols, current="acc_old")
    names = ", ".join(quote(c) for c in ["accountid", *cols, "modifiedon", "versionnumber"])
    con.execute(
        f"""
        INSERT INTO accounts ({names}, first_synced_at, last_synced_at, last_run_id)
        SELECT {names}, $now, $now, $run FROM acc_upd WHERE is_new
        """,
        {"now": ctx.now, "run": ctx.run_id},
    )
    if refill:
        _fill_added_columns(con, "account", "accounts", ctx.schema.added.get("accounts", []))
    counts.accounts_deleted = _mark_deleted(con, "account", "accounts", ctx)
    counts.updates_blocked = _block_dynamics_updates(con, ctx)
    counts.local_edits_overwritten = _drop_overwritten_local_edits(con, ctx.blocked_fields)


def _filter_out(
    con: duckdb.DuckDBPyConnection,
    ctx: MergeContext,
    counts: MergeCounts,
    entity: str,
    table: str,
    upserts: str | None,
) -> int:
    """The sync filter (Marketo's new_synctomkto), after the entity's upserts: a stored record
    Dynamics now marks No goes stale (sync_filtered, its last synced values kept); one never
    synced is remembered in filtered_records, so that the integrity checks know why a contact
    points to an account the store does not have. Returns how many staged records said No."""
    key, staged = PRIMARY_KEY[entity], attached(typed_view(entity))
    params = {"entity": entity, "now": ctx.now, "run": ctx.run_id}
    gone = f"SELECT {key} FROM {staged} WHERE _deleted"
    if upserts:  # synced now: no longer kept out
        gone += f" UNION ALL SELECT {key} FROM {upserts} WHERE is_new"
    if ctx.reconcile_deletes.get(entity):  # a full read: not seen means deleted in Dynamics
        gone += (
            f" UNION ALL SELECT record_id FROM filtered_records WHERE entity = $entity "
            f"AND NOT EXISTS (SELECT 1 FROM {attached(rows_table(entity))} r "
            f"WHERE NOT r._deleted AND r._key = record_id)"
        )
    # Skipped when none is remembered (a first load): the ids to forget are a scan of the stage.
    if _scalar(con, "SELECT count(*) FROM filtered_records WHERE entity = ?", [entity]):
        counts.filter_changes += _written(
            con.execute(
                f"DELETE FROM filtered_records WHERE entity = $entity AND record_id IN ({gone})",
                {"entity": entity},
            )
        )
    if entity not in ctx.plan.sync_filter:
        return 0
    said_no = f"(SELECT * FROM {staged} WHERE NOT _deleted AND {SYNC_FLAG} IS false)"
    counts.filter_changes += _written(
        con.execute(
            f"""
        UPDATE {table} t SET sync_filtered = true, last_run_id = $run
        FROM {said_no} s
        WHERE t.{key} = s.{key} AND NOT t.sync_filtered AND NOT t.is_deleted
          AND s.versionnumber > t.versionnumber
        """,
            {"run": ctx.run_id},
        )
    )
    counts.filter_changes += _written(
        con.execute(
            f"""
        MERGE INTO filtered_records f
        USING (SELECT s.{key} AS record_id FROM {said_no} s
               WHERE NOT EXISTS (SELECT 1 FROM {table} t WHERE t.{key} = s.{key})) s
        ON f.entity = $entity AND f.record_id = s.record_id
        WHEN MATCHED THEN UPDATE SET last_seen_at = $now, run_id = $run
        WHEN NOT MATCHED THEN INSERT VALUES ($entity, s.record_id, $now, $now, $run)
        """,
            params,
        )
    )
    return _scalar(con, f"SELECT count(*) FROM {said_no}")


def _keep_accounts_before(con: duckdb.DuckDBPyConnection, ctx: MergeContext) -> None:
    """The updated accounts as stored, read once (acc_old): their rewrite copies them, and
    their values as contacts see them now (acc_before) tell re-propagation which columns
    change."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE acc_old AS SELECT * FROM accounts "
        "WHERE accountid IN (SELECT accountid FROM acc_upd WHERE NOT is_new)"
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE acc_before AS "
        + effective_accounts_sql(ctx.plan.synced("account"), source="acc_old")
    )


def _drop_overwritten_local_edits(con: duckdb.DuckDBPyConnection, blocked: frozenset[str]) -> int:
    """Rule 5: a Dynamics update made at or after a local edit overwrites it (modifiedon has
    second precision, so an update in the same second as the edit wins), except on a field
    blocked for Dynamics updates. Returns how many."""
    return _written(
        con.execute(
            """
            DELETE FROM local_edits e USING acc_upd s
            WHERE e.accountid = s.accountid AND s.modifiedon >= date_trunc('second', e.edited_at)
              AND NOT list_contains($blocked, e.field)
            """,
            {"blocked": sorted(blocked)},
        )
    )


def _block_dynamics_updates(con: duckdb.DuckDBPyConnection, ctx: MergeContext) -> int:
    """block_field_updates: dynamics_sync. Where Dynamics changed a blocked field of an updated
    account, the account row takes the new value but its contacts keep theirs: the value they
    had is pinned as a pending local edit (unless one is pending already), which rule 5 then
    leaves alone. The rest of the rules see the pin like any local edit, so contacts that join
    the account take the same value and no activity is logged. Returns the (account, field)
    pairs kept off the contacts."""
    # A field added to the selection this cycle has no value on contacts to keep yet: its
    # first values fill in as for any other new field.
    new = ctx.schema.new_account_fields()
    blocked = [
        f for f in ctx.plan.synced("account") if f.name in ctx.blocked_fields and f.name not in new
    ]
    kept = 0
    for f in blocked:
        changed = f"u.{quote(f.name)} IS DISTINCT FROM b.{quote(f.name)}"
        kept += _scalar(
            con,
            f"SELECT count(*) FROM acc_upd u JOIN acc_before b USING (accountid) "
            f"WHERE NOT u.is_new AND {changed}",
        )
        con.execute(
            f"""
            INSERT INTO local_edits (accountid, field, value, account_versionnumber, edited_at)
            SELECT u.accountid, $field, CAST(b.{quote(f.name)} AS VARCHAR), u.versionnumber, $now
            FROM acc_upd u JOIN acc_before b USING (accountid)
            WHERE NOT u.is_new AND {changed}
              AND NOT EXISTS (SELECT 1 FROM local_edits e
                              WHERE e.accountid = u.accountid AND e.field = $field)
            """,
            {"field": f.name, "now": ctx.now},
        )
    return kept


def _insert_new_contacts(
    con: duckdb.DuckDBPyConnection, ctx: MergeContext, source: str, account_filter: str
) -> None:
    """Rule 4: a new contact takes its account's values as part of the record (no activity)."""
    names = ["contactid", *MEMBERSHIP, *contact_columns(ctx.plan), "modifiedon", "versionnumber"]
    acc = account_columns(ctx.plan)
    target = ", ".join(quote(c) for c in [*names, *(f"account_{c}" for c in acc)])
    values = ", ".join([*(f"s.{quote(c)}" for c in names), *(f"eff.{quote(c)}" for c in acc)])
    eff = _account_values_sql(con, ctx, acc, account_filter)
    con.execute(
        f"""
        INSERT INTO contacts ({target}, first_synced_at, last_synced_at, last_run_id)
        SELECT {values}, $now, $now, $run
        FROM {source} s LEFT JOIN ({eff}) eff ON eff.accountid = s.accountid
        """,
        {"now": ctx.now, "run": ctx.run_id},
    )


def _account_values_sql(
    con: duckdb.DuckDBPyConnection, ctx: MergeContext, acc: list[str], account_filter: str
) -> str:
    """The values new contacts take: the accounts' own when no local edit is pending (always
    on a first load), which spares the edits' pivot and its label look-ups. At 1,000,000
    contacts that is ~0.2 s of the insert and ~30 MB of DuckDB's memory budget."""
    if _scalar(con, "SELECT count(*) FROM (SELECT 1 FROM local_edits LIMIT 1)"):
        return effective_accounts_sql(ctx.plan.synced("account"), account_filter)
    names = ", ".join(f"a.{quote(c)}" for c in ["accountid", *acc])
    return f"SELECT {names} FROM accounts a {account_filter}"


def _insert_first_contacts(
    con: duckdb.DuckDBPyConnection, ctx: MergeContext, counts: MergeCounts
) -> None:
    """The first load of contacts: straight from the stage, without an upsert set."""
    live = (
        f"(SELECT * FROM {attached(typed_view('contact'))} "
        f"WHERE NOT _deleted AND {SYNC_FLAG} IS NOT false)"
    )
    _insert_new_contacts(con, ctx, live, "")
    counts.contacts_upserted = _scalar(con, "SELECT count(*) FROM contacts")


def _apply_contacts(con: duckdb.DuckDBPyConnection, ctx: MergeContext, counts: MergeCounts) -> None:
    """Write the contacts Dynamics added or changed and flag the deleted ones. con_upd keeps
    each contact's account before this cycle: re-propagation needs it."""
    stored = ", t.accountid AS old_accountid, coalesce(t.is_deleted, false) AS was_deleted"
    con.execute(
        "CREATE OR REPLACE TEMP TABLE con_upd AS " + _staged_updates("contact", "contacts", stored)
    )
    counts.contacts_upserted = _scalar(con, "SELECT count(*) FROM con_upd")
    inserted = _scalar(con, "SELECT count(*) FROM con_upd WHERE is_new")
    if counts.contacts_upserted > inserted:
        own = [*MEMBERSHIP, *contact_columns(ctx.plan)]
        _rewrite_updated(con, ctx, "contact", "contacts", "con_upd", own)
    if inserted:
        _insert_new_contacts(
            con,
            ctx,
            "(SELECT * FROM con_upd WHERE is_new)",
            "WHERE a.accountid IN (SELECT accountid FROM con_upd WHERE is_new)",
        )
    added = [c for c in ctx.schema.added.get("contacts", []) if not c.startswith("account_")]
    _fill_added_columns(con, "contact", "contacts", added)
    counts.contacts_deleted = _mark_deleted(con, "contact", "contacts", ctx)


# ---- account values onto contacts (rules 4, 6, 7) -----------------------------------------


def _old(column: str) -> str:
    return quote("old_" + column)


def _new(column: str) -> str:
    return quote("new_" + column)


def _differs(column: str, alias: str = "") -> str:
    """A contact's old and new copy of an account column differ (prop_vals' old_/new_ pair)."""
    return f"{alias}{_old(column)} IS DISTINCT FROM {alias}{_new(column)}"


def _repropagate(con: duckdb.DuckDBPyConnection, ctx: MergeContext, counts: MergeCounts) -> None:
    """Rules 4, 6, 7: push account values onto existing contacts and log what changed.

    Reading the columns of every contact is what makes a cycle's cost grow with the store, and
    an account's contacts are scattered over the table. Two ways to write, picked by how many
    columns change on the updated accounts (before this cycle against after it, local edits
    included):
    - few: in place. Only those columns are read and UPDATEd; the propagated columns are
      stored uncompressed so that DuckDB rewrites them without re-encoding. A contact carries
      its account's values, which the `propagation` integrity check proves after every run,
      so its other columns already hold the new values.
    - many: delete and append. The touched contacts are read whole once; an UPDATE would
      rewrite each changed column of the whole table at the checkpoint.
    Measured at 1,000,000 contacts: 2 columns of 10,000 contacts 0.2 s in place against 0.3 s
    rewritten; 12 columns of 5,000 contacts 1.3 s in place against 0.4 s rewritten.
    A contact that joins, moves, leaves or is restored is read in every column: it carries
    another account's values, or old ones.
    """
    cols = account_columns(ctx.plan)
    if not cols or not _scalar(
        con,
        "SELECT (SELECT count(*) FROM acc_upd) "
        f"+ (SELECT count(*) FROM con_upd u WHERE {REPOINTED})",
    ):
        return  # no account changed, no contact changed account: nothing to propagate
    _values_after(con, ctx, cols)
    changing = _changing_columns(con, cols)
    in_place = len(changing) <= IN_PLACE_MAX_COLUMNS
    # In place, the old values of the changing columns are read as the contacts are found;
    # a rewrite reads the touched contacts whole instead.
    carried = changing if in_place else []
    _find_members(con, carried)
    _find_contacts_to_update(con, cols, carried, in_place)
    counts.contacts_repropagated = _scalar(con, "SELECT count(*) FROM prop")
    if counts.contacts_repropagated == 0:
        return
    _old_and_new_values(con, ctx, cols, carried, in_place)
    _log_changes(con, ctx, counts)
    _write_new_values(con, cols, in_place)


def _values_after(con: duckdb.DuckDBPyConnection, ctx: MergeContext, cols: list[str]) -> None:
    """acc_after: the values contacts take. An updated account's new values are its staged
    ones (its rewrite copied them); only the accounts contacts moved into are read from the
    table."""
    names = ", ".join(quote(c) for c in ["accountid", *cols])
    now_values = (
        f"(SELECT {names} FROM acc_upd UNION ALL SELECT {names} FROM accounts "
        f"WHERE accountid IN (SELECT u.accountid FROM con_upd u WHERE {REPOINTED}) "
        "AND accountid NOT IN (SELECT accountid FROM acc_upd))"
    )
    con.execute(
        "CREATE OR REPLACE TEMP TABLE acc_after AS "
        + effective_accounts_sql(ctx.plan.synced("account"), source=now_values)
    )


def _changing_columns(con: duckdb.DuckDBPyConnection, cols: list[str]) -> list[str]:
    """The account columns whose value (local edits included) changes on an updated account."""
    differing = con.execute(
        "SELECT "
        + ", ".join(
            f"count(*) FILTER (WHERE b.{quote(c)} IS DISTINCT FROM n.{quote(c)})" for c in cols
        )
        + " FROM acc_after n LEFT JOIN acc_before b ON b.accountid = n.accountid"
        " WHERE n.accountid IN (SELECT accountid FROM acc_upd)"
    ).fetchone()
    return [c for c, n in zip(cols, differing, strict=True) if n]


def _find_members(con: duckdb.DuckDBPyConnection, carried: list[str]) -> None:
    """members: the live contacts of the updated accounts, found in one scan, with their old
    values of the `carried` columns. They are both the contacts to re-propagate and the counts
    for the contact limit."""
    olds = "".join(f", c.{quote('account_' + c)} AS {_old(c)}" for c in carried)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE members AS
        SELECT c.contactid, c.accountid, a.modifiedon{olds}
        FROM contacts c JOIN acc_upd a ON c.accountid = a.accountid
        WHERE NOT c.is_deleted
        """
    )


def _find_contacts_to_update(
    con: duckdb.DuckDBPyConnection, cols: list[str], carried: list[str], in_place: bool
) -> None:
    """prop: every contact whose account values may change, with the reason and the account
    it had (and, in place, its old values): the repointed contacts, in every column, and the
    other members of the updated accounts, in the `carried` columns."""
    repointed_olds = members_olds = ""
    if in_place:
        repointed_olds = "".join(f", c.{quote('account_' + c)} AS {_old(c)}" for c in cols)
        members_olds = "".join(
            f", m.{_old(c)}" if c in carried else f", NULL AS {_old(c)}" for c in cols
        )
    # New contacts took their account's values when inserted; repointed ones are the first
    # half of the union.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE prop AS
        SELECT u.contactid, u.accountid AS new_accountid, u.old_accountid,
               CASE WHEN u.was_deleted THEN {literal(REASON_RESTORED)}
                    WHEN u.old_accountid IS NULL THEN {literal(REASON_JOINED)}
                    WHEN u.accountid IS NULL THEN {literal(REASON_LEFT)}
                    ELSE {literal(REASON_MOVED)} END AS reason,
               u.modifiedon AS occurred_at, false AS account_change{repointed_olds}
        FROM con_upd u JOIN contacts c USING (contactid)
        WHERE {REPOINTED}
        UNION ALL
        SELECT m.contactid, m.accountid, m.accountid, {literal(REASON_ACCOUNT_UPDATED)},
               m.modifiedon, true{members_olds}
        FROM members m
        WHERE NOT EXISTS (SELECT 1 FROM con_upd u WHERE u.contactid = m.contactid
                          AND (u.is_new OR {REPOINTED}))
        """
    )


def _old_and_new_values(
    con: duckdb.DuckDBPyConnection,
    ctx: MergeContext,
    cols: list[str],
    carried: list[str],
    in_place: bool,
) -> None:
    """prop_vals: each contact of prop with its old and new account values, its account's
    contact count, and whether the contact limit suppresses its activity."""
    if in_place:
        # A column that does not change on an updated account already holds the new value.
        olds = ", ".join(
            f"p.{_old(c)}"
            if c in carried
            else f"CASE WHEN p.account_change THEN eff.{quote(c)} ELSE p.{_old(c)} END AS {_old(c)}"
            for c in cols
        )
        kept, joined = f"p.* EXCLUDE ({', '.join(_old(c) for c in cols)})", ""
    else:
        # The touched contacts, whole, in one pass: their old values here and their rewrite
        # at the end both read this copy.
        con.execute(
            "CREATE OR REPLACE TEMP TABLE touched AS "
            "SELECT * FROM contacts WHERE contactid IN (SELECT contactid FROM prop)"
        )
        olds = ", ".join(f"c.{quote('account_' + c)} AS {_old(c)}" for c in cols)
        kept, joined = "p.*", "JOIN touched c USING (contactid)"
    news = ", ".join(f"eff.{quote(c)} AS {_new(c)}" for c in cols)
    # Rule 7: the limit is checked against the account's contacts after this cycle's moves.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE prop_vals AS
        SELECT {kept}, {olds}, {news}, coalesce(n.contact_count, 0) AS contact_count,
               p.account_change AND coalesce(n.contact_count, 0) > $limit AS suppressed
        FROM prop p {joined}
        LEFT JOIN acc_after eff ON eff.accountid = p.new_accountid
        LEFT JOIN (SELECT accountid, count(*) AS contact_count FROM members
                   GROUP BY accountid) n ON n.accountid = p.new_accountid
        """,
        {"limit": ctx.contact_limit},
    )


def _log_changes(con: duckdb.DuckDBPyConnection, ctx: MergeContext, counts: MergeCounts) -> None:
    """Rules 6 and 7: an activity row per contact per field whose value changes, or, for an
    account over the contact limit, a suppression row instead. A field new to the selection
    takes its first values without activity."""
    fresh = ctx.schema.new_account_fields()
    logged = [f for f in ctx.plan.synced("account") if f.name not in fresh]
    if not logged:
        return
    rows = " UNION ALL ".join(
        f"SELECT contactid, coalesce(new_accountid, old_accountid) AS accountid, "
        f"{literal(f.name)} AS attribute, {_logged_value(f, 'old_')} AS old_value, "
        f"{_logged_value(f, 'new_')} AS new_value, reason, occurred_at "
        f"FROM prop_vals WHERE NOT suppressed AND {_differs(f.name)}"
        for f in logged
    )
    counts.activities_logged = log_activity(
        con, rows, SOURCE_SYNC, run_id=ctx.run_id, logged_at=ctx.now
    )
    _log_suppressions(con, ctx, counts, [f.name for f in logged])


def _logged_value(f: FieldSpec, prefix: str) -> str:
    """The activity text of prop_vals' old_ or new_ copy of a field (and of its label)."""
    label = quote(prefix + f.label_column) if f.label_column else None
    return activity_value_sql(quote(prefix + f.name), f.duck_type, label)


def _log_suppressions(
    con: duckdb.DuckDBPyConnection, ctx: MergeContext, counts: MergeCounts, names: list[str]
) -> None:
    """Rule 7: one row per account over the contact limit, counting the rows it kept out."""
    per_field = " UNION ALL ".join(
        f"SELECT new_accountid AS accountid, {literal(n)} AS attribute, count(*) AS n, "
        f"any_value(contact_count) AS contact_count, max(occurred_at) AS occurred_at "
        f"FROM prop_vals WHERE suppressed AND {_differs(n)} GROUP BY new_accountid"
        for n in names
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE suppressions AS
        SELECT accountid, any_value(contact_count) AS contact_count, sum(n) AS rows_suppressed,
               list_sort(list(attribute)) AS attributes, max(occurred_at) AS occurred_at
        FROM ({per_field}) GROUP BY accountid
        """
    )
    con.execute(
        """
        INSERT INTO activity_suppressions (run_id, accountid, contact_count, contact_limit,
            attributes, rows_suppressed, occurred_at, logged_at)
        SELECT $run, accountid, contact_count, $limit, attributes, rows_suppressed,
               occurred_at, $now
        FROM suppressions ORDER BY accountid
        """,
        {"run": ctx.run_id, "limit": ctx.contact_limit, "now": ctx.now},
    )
    rows = con.execute(
        "SELECT CAST(accountid AS VARCHAR), contact_count, rows_suppressed "
        "FROM suppressions ORDER BY accountid"
    ).fetchall()
    counts.suppressed_accounts = [
        {"accountid": a, "contacts": int(n), "rows_suppressed": int(r)} for a, n, r in rows
    ]
    counts.activities_suppressed = sum(int(r) for _a, _n, r in rows)


def _write_new_values(con: duckdb.DuckDBPyConnection, cols: list[str], in_place: bool) -> None:
    """Write only the columns, and the contacts, whose value changes: DuckDB's UPDATE costs
    grow with every column it touches, and most cycles change a few fields."""
    found = con.execute(
        "SELECT "
        + ", ".join(f"count(*) FILTER (WHERE {_differs(c)})" for c in cols)
        + " FROM prop_vals"
    ).fetchone()
    changed = [c for c, n in zip(cols, found, strict=True) if n]
    if not changed:
        return
    where = " OR ".join(_differs(c, "v.") for c in changed)
    if in_place:
        sets = ", ".join(f"{quote('account_' + c)} = v.{_new(c)}" for c in changed)
        # Joined on the key, never on rowid: DuckDB 2.0.0 corrupts a table when an UPDATE
        # joins on the rowids of rows this transaction deleted and appended (seen here as a
        # segfault, a lost contact and a garbage activity_id in 1 run in 8 of a 9-cycle test).
        con.execute(
            f"UPDATE contacts c SET {sets} FROM prop_vals v "
            f"WHERE c.contactid = v.contactid AND ({where})"
        )
    else:
        rewrite_rows(
            con,
            "contacts",
            "contactid",
            {f"account_{c}": f"v.{_new(c)}" for c in changed},
            "prop_vals",
            where=f"WHERE {where}",
            current="touched",
        )


def _refill_new_account_columns(con: duckdb.DuckDBPyConnection, ctx: MergeContext) -> None:
    """A newly selected account field reaches every contact at once, without activity rows."""
    added = [
        c[len("account_") :]
        for c in ctx.schema.added.get("contacts", [])
        if c.startswith("account_")
    ]
    if not added:
        return
    fields = [f for f in ctx.plan.synced("account") if any(c in added for c, _t in f.columns())]
    eff = effective_accounts_sql(fields)
    sets = ", ".join(f"{quote('account_' + c)} = eff.{quote(c)}" for c in added)
    con.execute(f"UPDATE contacts c SET {sets} FROM ({eff}) eff WHERE c.accountid = eff.accountid")
