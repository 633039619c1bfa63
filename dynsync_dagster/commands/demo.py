"""`dynsync demo`: the whole product end to end on the built-in simulator."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from dynsync_dagster.commands.runs import REPO_ROOT, run_sync_job
from dynsync_dagster.simulator import DatasetSpec, Simulator
from dynsync_dagster.store.publish import open_published

BIG_ACCOUNT_CONTACTS = 5001  # just over the activity-log limit: its changes sync but do not log


def run_demo(work: Path, *, accounts: int = 300, contacts: int = 9000) -> str:
    """Start the simulator, sync everything, change a few accounts, sync again; return a summary."""

    work = work.resolve()
    db = work / "dynsync.duckdb"
    # The demo's own Dagster instance, reset with its store: its runs and 9,000-row
    # materializations must not show up as current in the project's UI (`dynsync dev`).
    home = work / "dagster_home"
    # Every file of the previous demo's store (the published file, its working store, spare,
    # stage, locks, record): a working store left behind holds the old simulator's delta links.
    store_files = [*work.glob(f"{db.name}*"), *work.glob(f".{db.name}*")]
    for p in (*store_files, work / "simulator", home):
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    home.mkdir(parents=True)  # run_sync_job gives it the project's dagster.yaml
    spec = DatasetSpec(
        accounts=accounts,
        contacts=max(contacts, BIG_ACCOUNT_CONTACTS + 200),
        sized_accounts=(BIG_ACCOUNT_CONTACTS, 40),
        orphan_contacts=25,
        contact_parented_contacts=10,
        seed=42,
        sync_filter_no_share=0.02,  # Marketo's sync filter: a few records say No
    )
    saved = dict(os.environ)
    with Simulator(spec, state_dir=work / "simulator") as sim:
        try:
            os.environ.update(sim.env(flow="client_credentials"))
            os.environ["DYNSYNC_DUCKDB_PATH"] = str(db)
            os.environ.setdefault("DYNSYNC_CONFIG", str(REPO_ROOT / "dynsync.yaml"))
            os.environ["DAGSTER_HOME"] = str(home)
            # The demo's own instance needs no history: partitions from a month back, so its first
            # cycle records ~30 days as covered instead of every day since 2025 (README).
            os.environ.setdefault("DYNSYNC_PARTITION_START", _a_month_ago())
            _big_account_syncs_whole(sim)
            print(f"simulator on {sim.org_url}: {accounts} accounts, {spec.contacts} contacts")
            print("cycle 1: the whole database ...")
            run_sync_job("demo")
            changed = _change_some_accounts(sim)
            print(f"changed in Dynamics: {changed}")
            print("cycle 2: only what changed ...")
            run_sync_job("demo")
        finally:
            os.environ.clear()
            os.environ.update(saved)
    return _summary(db)


def _big_account_syncs_whole(sim: Simulator) -> None:
    """The sync filter keeps ~2% of records out; none of the big account's contacts, so that
    it stays one contact over the activity-log limit, as the demo says."""
    org = sim.org
    big = max(org.account_ids(), key=lambda a: len(org.contacts_of(a)))
    for contact in org.contacts_of(big):
        if org.get_contact(contact).get("new_synctomkto") is False:
            org.update_contact(contact, new_synctomkto=True)


def _change_some_accounts(sim: Simulator) -> str:
    org = sim.org
    synced = [a for a in org.account_ids() if org.get_account(a).get("new_synctomkto") is not False]
    by_size = sorted(synced, key=lambda a: len(org.contacts_of(a)), reverse=True)
    big, mid, small = by_size[0], by_size[1], by_size[-1]
    org.update_account(big, name="Contoso Holdings (renamed)", numberofemployees=12000)
    org.update_account(mid, address1_city="Rotterdam", industrycode=7)
    org.update_account(small, telephone1="+31 10 555 0100")
    mover = org.contacts_of(mid)[0]
    org.reparent_contact(mover, small, "account")
    return (
        f"3 accounts updated (one with {len(org.contacts_of(big))} contacts), "
        "1 contact moved to another account"
    )


def _summary(db: Path) -> str:
    with open_published(db) as con:
        accounts, contacts = con.execute(
            "SELECT (SELECT count(*) FROM accounts), (SELECT count(*) FROM contacts)"
        ).fetchone()
        by_source = con.execute(
            "SELECT source, count(*) FROM activity_log GROUP BY source ORDER BY source"
        ).fetchall()
        suppressed = con.execute(
            "SELECT count(*), coalesce(sum(rows_suppressed), 0) FROM activity_suppressions"
        ).fetchone()
        kept_out = con.execute(
            "SELECT count(*) FILTER (WHERE entity = 'account'), "
            "count(*) FILTER (WHERE entity = 'contact') FROM filtered_records"
        ).fetchone()
        excluded = con.execute(
            "SELECT entity || '.' || field || ': ' || reason FROM sync_fields "
            "WHERE selected AND NOT synced ORDER BY entity, field"
        ).fetchall()
    logged = ", ".join(f"{n} from {s}" for s, n in by_source) or "none"
    lines = [
        "",
        f"accounts: {accounts}   contacts: {contacts}",
        f"Change Data Value activity rows: {logged}",
        f"suppressed (account over the contact limit): {suppressed[1]} rows on {suppressed[0]} account(s)",
        f"kept out by the sync filter (new_synctomkto = No): {kept_out[0]} accounts, "
        f"{kept_out[1]} contacts",
        "fields not synced: " + ("; ".join(r[0] for r in excluded) or "none"),
        f"DuckDB file: {db}",
        f"  query it:  uv run python -c \"import duckdb; print(duckdb.connect('{db}', read_only=True)"
        ".sql('SELECT attribute, old_value, new_value, reason FROM activity_log LIMIT 10'))\"",
        "next: the Dagster UI with the schedule syncing live simulated changes:  uv run dynsync dev",
    ]
    return "\n".join(lines)


def _a_month_ago() -> str:
    return (datetime.now(UTC) - timedelta(days=30)).strftime("%Y-%m-%d")
