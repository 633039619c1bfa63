"""The PostgreSQL copy of the store: readers on other machines query the synced tables there.

Optional: on only when DYNSYNC_POSTGRES_URL is set (DYNSYNC_POSTGRES_SCHEMA names the schema,
default `dynsync`, so that two stores can share a database). After every committed cycle and
local edit, still holding the writer lock, the publisher ships what changed since PostgreSQL
last applied the outbox (store/outbox.py says why that is exact), in ONE PostgreSQL
transaction that also records the outbox sequence it applied. A crash between the DuckDB
commit and the PostgreSQL commit leaves the entries in the outbox, and the next publish ships
them. A failure never touches the DuckDB commit: it is reported in one line and retried.

Readers never block the publish: plain reads take ACCESS SHARE locks and the publish only
deletes, inserts and copies rows (ROW EXCLUSIVE), never TRUNCATE or DROP TABLE, so a reader's
transaction keeps its snapshot (the old state) and the next one sees the new state. Only a
field added to or removed from the selection needs ALTER TABLE (ACCESS EXCLUSIVE): it waits
at most ALTER_LOCK_TIMEOUT for readers of that table; past that it is put off to a later
publish, the table's rows are still shipped in the columns both sides have, and the table is
copied whole once the ALTER gets through. Waiting longer would also queue every new reader
behind the ALTER.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import duckdb
import psycopg2
from psycopg2 import errors, sql

from dynsync_dagster.store import outbox
from dynsync_dagster.store.connection import not_yet_synced, open_working, writer_lock
from dynsync_dagster.store.schema import quote, table_columns

SCHEMA_VARIABLE = "DYNSYNC_POSTGRES_SCHEMA"
DEFAULT_SCHEMA = "dynsync"
STATE_TABLE = "_dynsync_publish"
ALTER_LOCK_TIMEOUT = "2s"
LOCK_TIMEOUT = "60s"  # row locks: only another writer of these rows could hold one

# Tables shipped by key (outbox entries), with the key column.
KEYED = {"accounts": "accountid", "contacts": "contactid", "sync_runs": "run_id"}
# Appended: the rows above PostgreSQL's largest id are the new ones (outbox.py).
APPENDED = {"activity_log": "activity_id"}
# Small tables, copied whole by every publish.
WHOLE_TABLES = ("sync_fields", "choice_labels", "local_edits", "column_lineage")
PUBLISHED_TABLES = ("sync_fields", "accounts", "contacts", "activity_log", "sync_runs")
ALL_TABLES = (*PUBLISHED_TABLES, "choice_labels", "local_edits", "column_lineage")
PRIMARY_KEYS = {"accounts": "accountid", "contacts": "contactid", "activity_log": "activity_id"}

_PG_TYPES = {
    "UUID": "uuid",
    "VARCHAR": "text",
    "BIGINT": "bigint",
    "INTEGER": "integer",
    "SMALLINT": "smallint",
    "TINYINT": "smallint",
    "BOOLEAN": "boolean",
    "DOUBLE": "double precision",
    "FLOAT": "real",
    "DATE": "date",
    "TIMESTAMP WITH TIME ZONE": "timestamp with time zone",
    "TIMESTAMPTZ": "timestamp with time zone",
    "TIMESTAMP": "timestamp without time zone",
    "TIME": "time without time zone",
    "BLOB": "bytea",
    "HUGEINT": "numeric(38,0)",
}
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class PostgresPublishError(RuntimeError):
    """Publishing to PostgreSQL failed; the message is one line that names the fix."""


@dataclass(frozen=True)
class Target:
    url: str
    schema: str = DEFAULT_SCHEMA

    def redact(self, text: str) -> str:
        """`text` without the URL or its password (a connection error may quote either)."""
        secret = unquote(urlsplit(self.url).password or "")
        for s in (self.url, secret):
            if s:
                text = text.replace(s, "***")
        return re.sub(r"(password\s*=\s*)\S+", r"\1***", text, flags=re.IGNORECASE)

    @property
    def where(self) -> str:
        """host:port/database, for messages (never the user or password)."""
        parts = urlsplit(self.url)
        return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or ''}"


def target_from_env(env: dict[str, str] | None = None) -> Target | None:
    """The PostgreSQL target, or None when DYNSYNC_POSTGRES_URL is unset."""
    env = os.environ if env is None else env
    url = env.get(outbox.URL_VARIABLE, "").strip()
    if not url:
        return None
    schema = env.get(SCHEMA_VARIABLE, "").strip() or DEFAULT_SCHEMA
    if not _SCHEMA_NAME.match(schema):
        raise PostgresPublishError(
            f"{SCHEMA_VARIABLE}={schema!r} is not a plain schema name: use lower-case letters, "
            "digits and underscores"
        )
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise PostgresPublishError(
            f"{outbox.URL_VARIABLE} must be a postgresql://user:password@host:port/database URL"
        )
    return Target(url, schema)


def pg_type(duck_type: str) -> str:
    """The PostgreSQL type that holds a DuckDB column's values faithfully."""
    kind = duck_type.strip().upper()
    if kind.endswith("[]"):
        return pg_type(kind[:-2]) + "[]"
    found = re.fullmatch(r"DECIMAL\((\d+),\s*(\d+)\)", kind)
    if found:
        return f"numeric({found.group(1)},{found.group(2)})"
    return _PG_TYPES.get(kind, "text")


@dataclass
class PostgresPublished:
    """One publish to PostgreSQL: what it shipped and what it put off."""

    mode: str  # full or incremental
    applied_seq: int
    shipped: dict[str, int] = field(default_factory=dict)  # rows written per table
    deleted: dict[str, int] = field(default_factory=dict)  # rows deleted per table
    deferred: list[str] = field(default_factory=list)  # column changes waiting for readers
    seconds: float = 0.0
    duckdb_s: float = 0.0  # of which DuckDB writing the rows to ship (the rest is PostgreSQL)


# -- the publish ------------------------------------------------------------------------------


def publish(
    con: duckdb.DuckDBPyConnection,
    target: Target,
    workdir: Path,
    run_id: str | None = None,
    *,
    full: bool = False,
) -> PostgresPublished:
    """Ship the committed changes (or everything, with `full`) to PostgreSQL in one transaction.

    `con` is the working store, with no transaction open, held under the writer lock.
    Raises PostgresPublishError (one line) on failure; PostgreSQL is then unchanged.
    """
    t0 = time.perf_counter()
    store_id, newest, skipped = outbox.pending(con)
    try:
        with _pg_transaction(target) as cur:
            _prepare(cur, target.schema)
            state = _state(cur, target.schema)
            reason = _why_full(state, store_id, skipped) if not full else "asked for"
            mode = "full" if reason else "incremental"
            applied, activity_rows = (0, None) if reason else (state[1], state[2])
            done = PostgresPublished(mode, newest)
            ship = _Ship(con, cur, target.schema, workdir, applied, done, activity_rows)
            for table in ALL_TABLES:
                ship.table(table, whole=bool(reason) or table in WHOLE_TABLES)
            rows = ship.rows_now("activity_log")
            _record_state(cur, target.schema, (store_id, newest, rows, run_id, mode))
    except (psycopg2.Error, OSError, duckdb.Error) as exc:
        raise PostgresPublishError(describe_failure(exc, target)) from None
    outbox.trim(con, newest)
    done.seconds = round(time.perf_counter() - t0, 4)
    return done


def _why_full(state: tuple | None, store_id: str, skipped: int) -> str | None:
    if state is None:
        return "the PostgreSQL schema is empty"
    if state[0] != store_id:
        return "the PostgreSQL schema holds another store's copy"
    if state[1] < skipped:
        return "changes were made while DYNSYNC_POSTGRES_URL was unset"
    return None


@contextlib.contextmanager
def _pg_transaction(target: Target) -> Iterator[psycopg2.extensions.cursor]:
    """One PostgreSQL transaction, committed when the body returns, rolled back otherwise."""
    conn = psycopg2.connect(
        target.url,
        connect_timeout=10,
        application_name="dynsync publish",
        client_encoding="UTF8",
        # A server that vanishes mid-publish must fail it, not hang the cycle's writer lock.
        keepalives=1,
        keepalives_idle=30,
        keepalives_interval=10,
        keepalives_count=3,
    )
    try:
        with conn.cursor() as cur:
            cur.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
            yield cur
        conn.commit()
    finally:
        conn.close()  # without a commit, closing rolls the transaction back


def _prepare(cur: psycopg2.extensions.cursor, schema: str) -> None:
    """The schema and the publish state, created on the first publish; one publisher at a time
    per schema (two stores pointed at one schema take turns)."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"dynsync publish {schema}"])
    # A schema an admin made beforehand needs no CREATE privilege on the database, and
    # CREATE SCHEMA IF NOT EXISTS would check that privilege anyway.
    cur.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", [schema])
    if not cur.fetchone()[0]:
        cur.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    cur.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (store_id text NOT NULL, applied_seq bigint NOT NULL, "
            "activity_rows bigint, run_id text, mode text NOT NULL, "
            "published_at timestamptz NOT NULL)"
        ).format(sql.Identifier(schema, STATE_TABLE))
    )


def _state(cur: psycopg2.extensions.cursor, schema: str) -> tuple | None:
    cur.execute(
        sql.SQL("SELECT store_id, applied_seq, activity_rows FROM {} FOR UPDATE").format(
            sql.Identifier(schema, STATE_TABLE)
        )
    )
    return cur.fetchone()


def _record_state(cur: psycopg2.extensions.cursor, schema: str, values: tuple) -> None:
    """(store id, applied sequence, activity rows, run id, mode), with the time."""
    state = sql.Identifier(schema, STATE_TABLE)
    cur.execute(sql.SQL("DELETE FROM {}").format(state))
    cur.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, %s, now())").format(state), values)


def read_state(target: Target) -> dict | None:
    """What PostgreSQL last applied (store id, sequence, run, mode, when), or None."""
    conn = psycopg2.connect(target.url, connect_timeout=10)
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", [f'"{target.schema}"."{STATE_TABLE}"'])
        if cur.fetchone()[0] is None:
            return None
        cur.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(target.schema, STATE_TABLE)))
        row = cur.fetchone()
        names = [d[0] for d in cur.description]
    return dict(zip(names, row, strict=True)) if row else None


# -- shipping one table -----------------------------------------------------------------------


@dataclass
class _Ship:
    """The shipping of the tables within one publish."""

    con: duckdb.DuckDBPyConnection
    cur: psycopg2.extensions.cursor
    schema: str
    workdir: Path
    applied: int  # the outbox sequence PostgreSQL holds (0: nothing)
    done: PostgresPublished
    prior_rows: int | None = None  # activity_log's rows in PostgreSQL before (None: unknown)

    def table(self, table: str, *, whole: bool) -> None:
        duck = table_columns(self.con, table)
        if not duck:
            return  # not in this store (an older one): nothing to copy
        created, altered, columns = self._align(table, duck)
        if created or altered or whole or self._marked_whole(table):
            self._replace_all(table, columns, index_after=created)
            return
        key = KEYED.get(table) or APPENDED.get(table)
        watermark = self._watermark(table) if table in APPENDED else None
        self._ship_keys(table, key, duck[key], columns, watermark)
        if watermark is not None:
            self._copy_rows(table, columns, f"WHERE {quote(key)} > {watermark}")
            self._drop_unrecorded_deletions(table, key)

    def rows_now(self, table: str) -> int:
        return int(self.con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    def _drop_unrecorded_deletions(self, table: str, key: str) -> None:
        """A writer that deleted appended rows without recording them (activity retention's
        purge) is caught by the count: PostgreSQL then drops the rows DuckDB no longer has,
        comparing ids (a scan, only after such a deletion)."""
        shipped = self.done.shipped.get(table, 0) - self.done.deleted.get(table, 0)
        if self.prior_rows is not None and self.prior_rows + shipped == self.rows_now(table):
            return
        self.cur.execute("CREATE TEMP TABLE _dynsync_ids (k bigint) ON COMMIT DROP")
        with self._csv(f"SELECT {quote(key)} FROM {table}") as path, open(path, "rb") as f:
            self.cur.copy_expert("COPY _dynsync_ids FROM STDIN WITH (FORMAT csv)", f)
        self.cur.execute("ANALYZE _dynsync_ids")
        self.cur.execute(
            sql.SQL(
                "DELETE FROM {} t WHERE NOT EXISTS (SELECT 1 FROM _dynsync_ids i WHERE i.k = t.{})"
            ).format(self._name(table), sql.Identifier(key))
        )
        self._count(self.done.deleted, table, self.cur.rowcount)
        self.cur.execute("DROP TABLE _dynsync_ids")

    def _marked_whole(self, table: str) -> bool:
        return bool(
            self.con.execute(
                "SELECT count(*) FROM postgres_outbox WHERE table_name = ? AND seq > ? "
                "AND key IS NULL",
                [table, self.applied],
            ).fetchone()[0]
        )

    def _align(self, table: str, duck: dict[str, str]) -> tuple[bool, bool, list[str]]:
        """Create the table, or make its columns DuckDB's. Returns (created, altered, the
        columns to ship: DuckDB's, or those both sides share when the ALTER is put off)."""
        want = {c: pg_type(t) for c, t in duck.items()}
        have = _pg_columns(self.cur, self.schema, table)
        if have is None:
            cols = sql.SQL(", ").join(
                sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in want.items()
            )
            self.cur.execute(sql.SQL("CREATE TABLE {} ({})").format(self._name(table), cols))
            return True, False, list(want)
        drop = [c for c in have if want.get(c) != have[c]]
        add = [c for c in want if have.get(c) != want[c]]
        if not (drop or add):
            return False, False, list(want)
        if self._alter(table, drop, {c: want[c] for c in add}):
            return False, True, list(want)
        return False, False, [c for c in want if have.get(c) == want[c]]

    def _alter(self, table: str, drop: list[str], add: dict[str, str]) -> bool:
        """ALTER TABLE within ALTER_LOCK_TIMEOUT; False (and a deferred note) when readers
        hold the table past it."""
        actions = [sql.SQL("DROP COLUMN {}").format(sql.Identifier(c)) for c in drop]
        actions += [
            sql.SQL("ADD COLUMN {} {}").format(sql.Identifier(c), sql.SQL(t))
            for c, t in add.items()
        ]
        self.cur.execute("SAVEPOINT dynsync_alter")
        try:
            self.cur.execute(f"SET LOCAL lock_timeout = '{ALTER_LOCK_TIMEOUT}'")
            self.cur.execute(
                sql.SQL("ALTER TABLE {} {}").format(self._name(table), sql.SQL(", ").join(actions))
            )
        except errors.LockNotAvailable:
            self.cur.execute("ROLLBACK TO SAVEPOINT dynsync_alter")
            self.done.deferred.append(
                f"{self.schema}.{table}: adding {sorted(add) or 'no'} and dropping "
                f"{sorted(drop) or 'no'} columns waits for {_holders(self.cur, self.schema, table)}"
            )
            return False
        finally:
            self.cur.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        self.cur.execute("RELEASE SAVEPOINT dynsync_alter")
        return True

    def _watermark(self, table: str) -> int:
        key = APPENDED[table]
        self.cur.execute(
            sql.SQL("SELECT coalesce(max({}), 0) FROM {}").format(
                sql.Identifier(key), self._name(table)
            )
        )
        return int(self.cur.fetchone()[0])

    def _ship_keys(
        self, table: str, key: str, key_type: str, columns: list[str], below: int | None
    ) -> None:
        """Replace the rows whose keys have outbox entries PostgreSQL has not applied: delete
        them, then copy DuckDB's current rows (none for a row DuckDB no longer has)."""
        keys = (
            f"SELECT DISTINCT CAST(key AS {key_type}) FROM postgres_outbox "
            f"WHERE table_name = {_literal(table)} AND seq > {int(self.applied)} AND key IS NOT NULL"
        )
        if not self.con.execute(f"SELECT count(*) FROM ({keys})").fetchone()[0]:
            return
        self.cur.execute(
            sql.SQL("CREATE TEMP TABLE _dynsync_keys (k {}) ON COMMIT DROP").format(
                sql.SQL(pg_type(key_type))
            )
        )
        with self._csv(keys) as path, open(path, "rb") as f:
            self.cur.copy_expert("COPY _dynsync_keys FROM STDIN WITH (FORMAT csv)", f)
        self.cur.execute(
            sql.SQL("DELETE FROM {} t USING _dynsync_keys k WHERE t.{} = k.k").format(
                self._name(table), sql.Identifier(key)
            )
        )
        self._count(self.done.deleted, table, self.cur.rowcount)
        self.cur.execute("DROP TABLE _dynsync_keys")
        where = f"WHERE {quote(key)} IN ({keys})"
        if below is not None:
            where += f" AND {quote(key)} <= {below}"
        self._copy_rows(table, columns, where)

    def _replace_all(self, table: str, columns: list[str], *, index_after: bool) -> None:
        """Every row anew. DELETE, not TRUNCATE: TRUNCATE would wait for every reader of the
        table, and a reader's open snapshot would see it empty."""
        if not index_after:
            self.cur.execute(sql.SQL("DELETE FROM {}").format(self._name(table)))
            self._count(self.done.deleted, table, self.cur.rowcount)
        self._copy_rows(table, columns, "")
        key = PRIMARY_KEYS.get(table)
        if index_after and key:
            self.cur.execute(
                sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                    self._name(table), sql.Identifier(key)
                )
            )
        elif index_after and table in KEYED:
            self.cur.execute(
                sql.SQL("CREATE INDEX ON {} ({})").format(
                    self._name(table), sql.Identifier(KEYED[table])
                )
            )

    def _copy_rows(self, table: str, columns: list[str], where: str) -> None:
        """COPY DuckDB's rows of `table` matching `where` into PostgreSQL, through a CSV file."""
        duck = table_columns(self.con, table)
        select = ", ".join(_export(c, duck[c]) for c in columns)
        with self._csv(f"SELECT {select} FROM {table} {where}") as path, open(path, "rb") as f:
            target = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
                self._name(table), sql.SQL(", ").join(map(sql.Identifier, columns))
            )
            self.cur.copy_expert(target.as_string(self.cur), f)
            self._count(self.done.shipped, table, self.cur.rowcount)

    @contextlib.contextmanager
    def _csv(self, query: str) -> Iterator[str]:
        """DuckDB writes the query's rows as CSV into a private file beside the store."""
        fd, path = tempfile.mkstemp(prefix=".postgres-copy-", suffix=".csv", dir=self.workdir)
        os.close(fd)
        try:
            escaped = path.replace("'", "''")
            t0 = time.perf_counter()
            self.con.execute(f"COPY ({query}) TO '{escaped}' (FORMAT csv, HEADER false)")
            self.done.duckdb_s = round(self.done.duckdb_s + time.perf_counter() - t0, 4)
            yield path
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _name(self, table: str) -> sql.Identifier:
        return sql.Identifier(self.schema, table)

    @staticmethod
    def _count(into: dict[str, int], table: str, n: int) -> None:
        into[table] = into.get(table, 0) + max(n, 0)


def _export(column: str, duck_type: str) -> str:
    """A column as PostgreSQL's COPY reads it: DuckDB's CSV text, except for lists (PostgreSQL
    array literals) and types without a mapping (text)."""
    name = quote(column)
    kind = duck_type.strip().upper()
    if kind.endswith("[]"):
        element = (
            "CASE WHEN x IS NULL THEN 'NULL' ELSE "
            "'\"' || replace(replace(CAST(x AS VARCHAR), '\\', '\\\\'), '\"', '\\\"') || '\"' END"
        )
        return (
            f"CASE WHEN {name} IS NULL THEN NULL ELSE "
            f"'{{' || array_to_string(list_transform({name}, lambda x: {element}), ',') || '}}' END"
        )
    if pg_type(kind) == "text" and kind != "VARCHAR":
        return f"CAST({name} AS VARCHAR)"
    return name


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _pg_columns(cur: psycopg2.extensions.cursor, schema: str, table: str) -> dict[str, str] | None:
    """Column -> type of a PostgreSQL table, in order; None when the table does not exist."""
    cur.execute("SELECT to_regclass(%s)", [f'"{schema}"."{table}"'])
    if cur.fetchone()[0] is None:
        return None
    cur.execute(
        "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        [f'"{schema}"."{table}"'],
    )
    return dict(cur.fetchall())


def _holders(cur: psycopg2.extensions.cursor, schema: str, table: str) -> str:
    """Who holds a lock on the table: the sessions a put-off ALTER waits for."""
    cur.execute(
        "SELECT a.pid, coalesce(nullif(a.application_name, ''), a.usename), a.xact_start "
        "FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
        "WHERE l.relation = %s::regclass AND l.granted AND a.pid <> pg_backend_pid()",
        [f'"{schema}"."{table}"'],
    )
    found = [
        f"pid {pid} ({who}, in a transaction since {since:%H:%M:%S})"
        for pid, who, since in cur.fetchall()
    ]
    return ", ".join(found) or "a reader"


# -- failures in words ------------------------------------------------------------------------


def describe_failure(exc: BaseException, target: Target) -> str:
    """One line: what failed, that DuckDB is committed, and the fix."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, errors.InsufficientPrivilege):
        fix = (
            f"grant the user of {outbox.URL_VARIABLE} CREATE on the database and ownership of "
            f"schema {target.schema}"
        )
    elif isinstance(exc, psycopg2.OperationalError):
        fix = (
            f"check that PostgreSQL at {target.where} is up and that {outbox.URL_VARIABLE} is right"
        )
    elif isinstance(exc, OSError):
        fix = "free disk space beside the store (the copy goes through a temporary CSV file)"
    else:
        fix = "run `dynsync publish --full` if it repeats"
    text = (
        f"publishing to PostgreSQL ({target.where}, schema {target.schema}) failed: {first}. "
        f"The DuckDB store is committed; the next cycle retries. Fix: {fix}"
    )
    return target.redact(" ".join(text.split()))


def publish_after_commit(
    con: duckdb.DuckDBPyConnection, workdir: Path, run_id: str | None
) -> tuple[PostgresPublished | None, str | None]:
    """The publish a writer runs after its DuckDB commit: (what it did, or the one-line failure).
    Never raises: the DuckDB commit stands whatever PostgreSQL does."""
    try:
        target = target_from_env()
    except PostgresPublishError as exc:
        return None, str(exc)
    if target is None:
        return None, None
    try:
        return publish(con, target, workdir, run_id), None
    except PostgresPublishError as exc:
        return None, str(exc)
    except Exception as exc:  # nothing here may undo the committed cycle
        return None, describe_failure(exc, target)


def publish_store(
    db_path: Path, *, full: bool, wait_s: float = 60.0, target: Target | None = None
) -> PostgresPublished:
    """`dynsync publish [--full]`: ship what is pending now, or rebuild the copy whole, holding
    the writer lock so that no cycle or local edit changes the store meanwhile."""
    target = target or target_from_env()
    if target is None:
        raise PostgresPublishError(
            f"{outbox.URL_VARIABLE} is not set: set it to postgresql://user:password@host:port/"
            "database to publish the store to PostgreSQL"
        )
    db_path = Path(db_path)
    if missing := not_yet_synced(db_path):
        raise PostgresPublishError(missing)
    with writer_lock(db_path, wait_s), open_working(db_path, wait_s=wait_s) as con:
        return publish(con, target, db_path.parent, full=full)


def table_facts(target: Target, tables: tuple[str, ...]) -> dict[str, tuple[int, dict[str, str]]]:
    """Row count and columns (name -> type) of each PostgreSQL table, for the asset catalog."""
    facts = {}
    try:
        conn = psycopg2.connect(target.url, connect_timeout=10, application_name="dynsync assets")
        with contextlib.closing(conn), conn.cursor() as cur:
            for table in tables:
                columns = _pg_columns(cur, target.schema, table)
                if columns is None:
                    continue
                name = sql.Identifier(target.schema, table)
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(name))
                facts[table] = (int(cur.fetchone()[0]), columns)
    except psycopg2.Error as exc:
        raise PostgresPublishError(describe_failure(exc, target)) from None
    return facts
