"""The PostgreSQL copy (store/postgres.py, store/outbox.py) on a real server and real cycles.

One throwaway PostgreSQL server (commands/postgres.py) for the module; each test publishes to
a schema of its own. After every cycle and local edit the PostgreSQL tables must equal the
working store's, row for row and column for column.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg2
import pytest

from dynsync_dagster.commands.postgres import ThrowawayPostgres, bin_dir
from dynsync_dagster.simulator import Simulator
from dynsync_dagster.store.connection import open_store, working_path
from dynsync_dagster.store.postgres import (
    ALL_TABLES,
    STATE_TABLE,
    Target,
    pg_type,
    publish_store,
    read_state,
)
from dynsync_dagster.store.publish import bump_generation, writing
from dynsync_dagster.sync.local_edit import set_account_field
from tests.support import (
    REPO,
    RULES_ACCOUNT_FIELDS,
    RULES_CONTACT_FIELDS,
    Harness,
    clean_env,
    closed_port,
    pick_sized,
    run_cli,
    sync_settings,
)


@pytest.fixture(scope="module")
def postgres() -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres() as pg:
        yield pg


@pytest.fixture
def target(postgres: ThrowawayPostgres, monkeypatch: pytest.MonkeyPatch) -> Target:
    """Publishing on, into a schema of this test's own."""
    schema = f"t_{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("DYNSYNC_POSTGRES_URL", postgres.url())
    monkeypatch.setenv("DYNSYNC_POSTGRES_SCHEMA", schema)
    return Target(postgres.url(), schema)


def _value(v: object) -> object:
    if isinstance(v, uuid.UUID):
        return str(v)
    if isinstance(v, list):
        return [_value(x) for x in v]
    return v


def _sorted(rows: list[tuple]) -> list[tuple]:
    rows = [tuple(_value(v) for v in r) for r in rows]
    return sorted(rows, key=lambda r: tuple("" if v is None else str(v) for v in r))


def duck_tables(db: Path) -> dict[str, tuple[dict[str, str], list[tuple]]]:
    """Each published table of the working store: its columns (PostgreSQL types) and rows."""
    out = {}
    with open_store(working_path(db), read_only=True, wait_s=30) as con:
        for table in ALL_TABLES:
            cols = con.execute("SELECT name, type FROM pragma_table_info(?)", [table]).fetchall()
            names = ", ".join(f'"{c}"' for c, _t in cols)
            rows = con.execute(f"SELECT {names} FROM {table}").fetchall()
            out[table] = ({c: pg_type(t) for c, t in cols}, _sorted(rows))
    return out


def pg_tables(target: Target) -> dict[str, tuple[dict[str, str], list[tuple]]]:
    out = {}
    with psycopg2.connect(target.url) as conn, conn.cursor() as cur:
        for table in ALL_TABLES:
            cur.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped "
                "ORDER BY attnum",
                [f"{target.schema}.{table}"],
            )
            cols = dict(cur.fetchall())
            names = ", ".join(f'"{c}"' for c in cols)
            cur.execute(f"SELECT {names} FROM {target.schema}.{table}")
            out[table] = (cols, _sorted(cur.fetchall()))
    conn.close()
    return out


def work_scalar(db: Path, query: str) -> object:
    """A value from the working store (the published file may lag a killed cycle)."""
    with open_store(working_path(db), read_only=True, wait_s=30) as con:
        return con.execute(query).fetchone()[0]


def assert_same(db: Path, target: Target, where: str = "") -> None:
    want, got = duck_tables(db), pg_tables(target)
    for table in ALL_TABLES:
        assert got[table][0] == want[table][0], f"{where}: columns of {table}"
        assert len(got[table][1]) == len(want[table][1]), f"{where}: rows of {table}"
        assert got[table][1] == want[table][1], f"{where}: values of {table}"


def _changes(sim: Simulator, rng: random.Random) -> None:
    """Seeded Dynamics changes: updates, moves, deletes, account renames and merges."""
    org = sim.org
    org.random_changes(rng.randint(2, 8), rng)
    contacts, accounts = org.contact_ids(), org.account_ids()
    if rng.random() < 0.6:
        org.update_account(rng.choice(accounts), name=f"Renamed {rng.randrange(10**6)}")
    if rng.random() < 0.5:
        org.reparent_contact(rng.choice(contacts), rng.choice(accounts), "account")
    if rng.random() < 0.3:
        org.delete_contact(rng.choice(contacts))
    if rng.random() < 0.2:
        org.reparent_contact(rng.choice(contacts), None)
    if rng.random() < 0.15 and len(accounts) > 4:
        target, sub = rng.sample(accounts, 2)
        org.merge_accounts(target, sub)


def _local_edit(harness: Harness, rng: random.Random) -> None:
    live = harness.rows(
        "SELECT CAST(contactid AS VARCHAR) FROM contacts WHERE accountid IS NOT NULL "
        "AND NOT is_deleted ORDER BY contactid"
    )
    contact = rng.choice(live)[0]
    set_account_field(harness.db, contact, "address1_city", f"Edited {rng.randrange(10**6)}")


def test_after_every_cycle_and_local_edit_postgres_equals_the_store(
    harness: Harness, target: Target
) -> None:
    rng = random.Random(1515)
    full = harness.settings
    fewer = sync_settings(
        tuple(f for f in RULES_ACCOUNT_FIELDS if f != "creditlimit"),
        tuple(f for f in RULES_CONTACT_FIELDS if f != "birthdate"),
    )
    harness.cycle()
    assert read_state(target)["mode"] == "full"  # the first publish into an empty schema
    assert_same(harness.db, target, "first cycle")
    contacts = harness.scalar("SELECT count(*) FROM contacts")
    for step in range(8):
        _changes(harness.sim, rng)
        if step == 2:
            harness.settings = fewer  # a field removed from each table
        if step == 5:
            harness.settings = full  # and added back
        result = harness.cycle()
        assert_same(harness.db, target, f"cycle {step}")
        state = read_state(target)
        assert (state["mode"], state["run_id"]) == ("incremental", result.run_id)
        if step in (1, 4, 6):
            _local_edit(harness, rng)
            assert_same(harness.db, target, f"local edit after cycle {step}")
    # Shipped by change: the outbox keeps nothing PostgreSQL has applied.
    assert work_scalar(harness.db, "SELECT count(*) FROM postgres_outbox") == 0
    assert contacts > 200


def test_an_account_update_ships_only_the_contacts_it_changed(
    harness: Harness, target: Target
) -> None:
    harness.cycle()
    account = pick_sized(harness.sim, 12)
    harness.sim.org.update_account(account, address1_city="Somewhere new")
    result = harness.cycle()
    assert result.counts.contacts_repropagated == 12
    assert_same(harness.db, target)
    with psycopg2.connect(target.url) as conn, conn.cursor() as cur:
        cur.execute(
            f"SELECT count(*) FROM {target.schema}.contacts WHERE account_address1_city = %s",
            ["Somewhere new"],
        )
        assert cur.fetchone()[0] == 12
    conn.close()


_KILL_BETWEEN_COMMITS = """
import os, signal, sys
from pathlib import Path
import dynsync_dagster.store.postgres as pg
from dynsync_dagster.settings import ConnectionSettings
from dynsync_dagster.sync.cycle import CycleOptions, run_cycle
from tests.support import sync_settings, RULES_ACCOUNT_FIELDS, RULES_CONTACT_FIELDS

where = sys.argv[2]
original = getattr(pg, where) if where == "_record_state" else pg.outbox.trim

def killed(*args, **kwargs):
    if where == "_record_state":
        original(*args, **kwargs)  # the PostgreSQL transaction is written, not committed
    os.kill(os.getpid(), signal.SIGKILL)

if where == "_record_state":
    pg._record_state = killed
else:
    pg.outbox.trim = killed  # PostgreSQL committed, the outbox not yet trimmed
settings = sync_settings(RULES_ACCOUNT_FIELDS, RULES_CONTACT_FIELDS)
run_cycle(ConnectionSettings.from_env(), settings, Path(sys.argv[1]), CycleOptions())
"""


@pytest.mark.parametrize("where", ["_record_state", "trim"])
def test_a_kill_between_the_two_commits_heals_on_the_next_cycle(
    harness: Harness, target: Target, tmp_path: Path, where: str
) -> None:
    harness.cycle()
    before = read_state(target)
    account = pick_sized(harness.sim, 8)
    harness.sim.org.update_account(account, address1_city="Changed before the kill")
    harness.sim.org.random_changes(5, random.Random(7))
    env = {
        **clean_env(tmp_path),
        **harness.sim.env(),
        "DYNSYNC_POSTGRES_URL": target.url,
        "DYNSYNC_POSTGRES_SCHEMA": target.schema,
    }
    done = subprocess.run(
        [sys.executable, "-c", _KILL_BETWEEN_COMMITS, str(harness.db), where],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    runs = work_scalar(harness.db, "SELECT count(*) FROM sync_runs WHERE outcome = 'success'")
    assert runs == 2  # the DuckDB commit stands
    after_kill = read_state(target)
    if where == "_record_state":
        assert after_kill["applied_seq"] == before["applied_seq"]  # PostgreSQL rolled back
        with pytest.raises(AssertionError):
            assert_same(harness.db, target)
    else:
        assert after_kill["applied_seq"] > before["applied_seq"]
        assert work_scalar(harness.db, "SELECT count(*) FROM postgres_outbox") > 0  # untrimmed
    harness.cycle()  # nothing new in Dynamics: the leftovers alone
    assert read_state(target)["mode"] == "incremental"
    assert_same(harness.db, target, "after the next cycle")
    assert work_scalar(harness.db, "SELECT count(*) FROM postgres_outbox") == 0


class _Psql:
    """A `psql` session on stdin/stdout: the reader a BI tool or an analyst would be."""

    def __init__(self, target: Target, postgres: ThrowawayPostgres) -> None:
        env = {**os.environ, "PGPASSWORD": postgres.password}
        self.proc = subprocess.Popen(
            [str(bin_dir() / "psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
             "-h", "127.0.0.1", "-p", str(postgres.port), "-U", "dynsync", "dagster"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, env=env,
        )  # fmt: skip
        self.buffer = ""

    def ask(self, statement: str) -> str:
        """Run one statement; returns its output (read up to an echoed marker)."""
        marker = uuid.uuid4().hex
        self.proc.stdin.write(f"{statement}\n\\echo {marker}\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.fileno()
        while f"{marker}\n" not in self.buffer:
            ready, _, _ = select.select([out], [], [], 60)
            assert ready, f"psql went quiet after {statement!r}: {self.buffer}"
            chunk = os.read(out, 65536)
            assert chunk, f"psql ended: {self.buffer}"
            self.buffer += chunk.decode()
        answer, _, self.buffer = self.buffer.partition(f"{marker}\n")
        return answer.strip()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


def test_a_reader_holding_a_long_transaction_never_blocks_publishing(
    harness: Harness, target: Target, postgres: ThrowawayPostgres
) -> None:
    harness.cycle()
    reader = _Psql(target, postgres)
    try:
        reader.ask("BEGIN ISOLATION LEVEL REPEATABLE READ;")
        counts = "SELECT " + ", ".join(
            f"(SELECT count(*) FROM {target.schema}.{t})" for t in ALL_TABLES
        )
        seen = reader.ask(counts + ";")
        city = f"SELECT count(*) FROM {target.schema}.contacts WHERE account_address1_city = 'X';"
        assert reader.ask(city) == "0"
        account = pick_sized(harness.sim, 12)
        harness.sim.org.update_account(account, address1_city="X")
        harness.sim.org.random_changes(6, random.Random(3))
        harness.cycle()  # data changes only: rows deleted and copied under the reader
        assert_same(harness.db, target, "data under a reader")
        harness.settings = sync_settings(
            tuple(f for f in RULES_ACCOUNT_FIELDS if f != "creditlimit"), RULES_CONTACT_FIELDS
        )
        harness.sim.org.update_account(account, address1_city="Y")
        result = harness.cycle()  # a column change: the ALTER is put off, the rows shipped
        state = read_state(target)
        assert state["run_id"] == result.run_id
        with psycopg2.connect(target.url) as conn, conn.cursor() as cur:
            cur.execute(
                f"SELECT count(*) FROM {target.schema}.contacts WHERE account_address1_city = 'Y'"
            )
            assert cur.fetchone()[0] == 12  # shipped, although the old columns stay a while
            cur.execute(
                "SELECT count(*) FROM information_schema.columns WHERE table_schema = %s "
                "AND column_name = 'account_creditlimit'",
                [target.schema],
            )
            assert cur.fetchone()[0] == 1  # the DROP COLUMN waits for the reader
        conn.close()
        # The reader still sees its snapshot: the state before both cycles.
        assert reader.ask(counts + ";") == seen
        assert reader.ask(city) == "0"
        reader.ask("COMMIT;")
    finally:
        reader.close()
    harness.cycle()  # nobody holds the table now: the put-off ALTER goes through
    assert_same(harness.db, target, "after the reader finished")


def test_publish_full_equals_incremental(harness: Harness, target: Target, tmp_path: Path) -> None:
    rng = random.Random(77)
    harness.cycle()
    for _ in range(3):
        _changes(harness.sim, rng)
        harness.cycle()
    _local_edit(harness, rng)
    incremental = pg_tables(target)
    env = {
        **clean_env(tmp_path),
        "DYNSYNC_DUCKDB_PATH": str(harness.db),
        "DYNSYNC_POSTGRES_URL": target.url,
        "DYNSYNC_POSTGRES_SCHEMA": target.schema,
    }
    done = run_cli(["publish", "--full"], env, REPO)
    assert done.returncode == 0, done.stderr
    assert "published to PostgreSQL (full)" in done.stdout
    assert target.url not in done.stdout + done.stderr
    assert read_state(target)["mode"] == "full"
    assert pg_tables(target) == incremental
    assert_same(harness.db, target, "after publish --full")


def test_a_postgres_failure_leaves_the_cycle_committed_and_is_retried(
    harness: Harness, target: Target, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    password = "s3cret-never-shown"
    down = f"postgresql://dynsync:{password}@127.0.0.1:{closed_port()}/dagster"
    monkeypatch.setenv("DYNSYNC_POSTGRES_URL", down)
    with caplog.at_level("WARNING", logger="dynsync.publish"):
        harness.cycle()
    assert harness.scalar("SELECT count(*) FROM sync_runs WHERE outcome = 'success'") == 1
    failures = [r.getMessage() for r in caplog.records if "PostgreSQL" in r.getMessage()]
    assert len(failures) == 1, failures
    message = failures[0]
    assert "\n" not in message and password not in message
    assert "The DuckDB store is committed; the next cycle retries" in message
    assert "DYNSYNC_POSTGRES_URL" in message  # the fix names the variable
    monkeypatch.setenv("DYNSYNC_POSTGRES_URL", target.url)
    harness.cycle()  # the server is back: the empty schema gets everything
    assert read_state(target)["mode"] == "full"
    assert_same(harness.db, target, "after the server came back")
    # Changes made while publishing was off went unrecorded: the next publish is a full one.
    monkeypatch.delenv("DYNSYNC_POSTGRES_URL")
    harness.sim.org.random_changes(4, random.Random(5))
    harness.cycle()
    monkeypatch.setenv("DYNSYNC_POSTGRES_URL", target.url)
    harness.sim.org.random_changes(4, random.Random(6))
    harness.cycle()
    assert read_state(target)["mode"] == "full"
    assert_same(harness.db, target, "after publishing was switched on again")
    harness.sim.org.random_changes(4, random.Random(8))
    harness.cycle()
    assert read_state(target)["mode"] == "incremental"
    assert_same(harness.db, target, "incremental again")


def test_activity_rows_deleted_without_a_record_are_deleted_in_postgres_too(
    harness: Harness, target: Target
) -> None:
    """Activity retention's purge deletes activity rows without an outbox entry; the count
    gives it away and the next publish drops them too."""
    harness.cycle()
    for city in ("First", "Second"):
        harness.sim.org.update_account(pick_sized(harness.sim, 12), address1_city=city)
        harness.cycle()
    logged = work_scalar(harness.db, "SELECT count(*) FROM activity_log")
    assert logged >= 24
    with writing(harness.db, wait_s=30) as session:
        session.con.execute("BEGIN TRANSACTION")
        session.con.execute(
            "DELETE FROM activity_log WHERE activity_id IN "
            "(SELECT activity_id FROM activity_log ORDER BY activity_id LIMIT 10)"
        )
        bump_generation(session.con, None, datetime.now(UTC))
        session.con.execute("COMMIT")
    assert session.postgres is not None and session.postgres.deleted["activity_log"] == 10
    assert_same(harness.db, target, "after a purge")


def test_publish_needs_the_url(harness: Harness, tmp_path: Path) -> None:
    env = {**clean_env(tmp_path), "DYNSYNC_DUCKDB_PATH": str(harness.db)}
    done = run_cli(["publish", "--full"], env, REPO)
    assert done.returncode == 2
    assert "DYNSYNC_POSTGRES_URL is not set" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_state_table_is_in_the_schema(harness: Harness, target: Target) -> None:
    harness.cycle()
    publish_store(harness.db, full=False)
    state = read_state(target)
    assert state is not None and state["store_id"]
    assert STATE_TABLE.startswith("_")


def test_a_schema_made_by_an_admin_needs_no_create_privilege_on_the_database(
    harness: Harness, postgres: ThrowawayPostgres, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    role, schema, password = f"pub_{uuid.uuid4().hex[:8]}", f"t_{uuid.uuid4().hex[:10]}", "pw-1"
    with psycopg2.connect(postgres.url()) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        cur.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {role}")
    conn.close()
    url = f"postgresql://{role}:{password}@127.0.0.1:{postgres.port}/dagster"
    monkeypatch.setenv("DYNSYNC_POSTGRES_URL", url)
    monkeypatch.setenv("DYNSYNC_POSTGRES_SCHEMA", schema)
    harness.cycle()
    assert_same(harness.db, Target(url, schema), "in the admin's schema")
    # A schema it may not create: the failure names the privilege to grant.
    monkeypatch.setenv("DYNSYNC_POSTGRES_SCHEMA", f"{schema}_new")
    with caplog.at_level("WARNING", logger="dynsync.publish"):
        harness.cycle()
    (message,) = [r.getMessage() for r in caplog.records if "PostgreSQL" in r.getMessage()]
    assert "permission denied" in message and "grant the user" in message
    assert password not in message
