"""The model-based soak: seeded random cycles, Dynamics changes, local edits and faults.

After every cycle the DuckDB store must equal what the reference model (model.py) predicts:
accounts, contacts with their account values, the sync filter's stale flags and kept-out
records, and the activity log row for row. The org has Marketo's sync filter column; records
flip it Yes, No and empty, and segments of the run block one account field for Dynamics
updates and another for local edits.

    uv run python -m tests.reliability.soak --cycles 200 --seed 1
    uv run python -m tests.reliability.soak --cycles 200 --seed 1 --write-results

`--write-results` rewrites tests/reliability/SOAK_RESULTS.md with this run's outcome.

    uv run python -m tests.reliability.soak --cycles 200 --seed 1 --parallel-read

`--parallel-read` runs every full read (the first cycle's, and each one a selection change or
an expired delta token forces) as the parallel first copy of `sync/parallel_read.py`, as
`DYNSYNC_PARALLEL_READ=1` does, with 2, 4 or 16 key ranges drawn per cycle (few ranges span
several pages each). The simulator's request log says how each full read went: the soak
fails if one went the other way than asked. On cycles that read a table whole it adds, from
a generator of its own, 503 storms in one table's key ranges (the copy fails part-way and the
next cycle resumes it); now and then it slows the key read, so a copy commits without it and
the next cycle finishes it. With `--write-results` such a run replaces its
seed's section of SOAK_RESULTS_PARALLEL.md. The threads' requests interleave in no fixed
order, so a fault armed "after n requests" can land on another request than in a previous
run of the same seed: a parallel run is repeatable in its changes, not request for request.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import platform
import random
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dynsync_dagster.dynamics.client import DynamicsClient, Page
from dynsync_dagster.dynamics.errors import DynamicsError
from dynsync_dagster.dynamics.fields import ENTITY_SET, PRIMARY_KEY
from dynsync_dagster.settings import ConnectionSettings, SyncSettings
from dynsync_dagster.simulator import DatasetSpec, Org, RequestRecord, Simulator
from dynsync_dagster.simulator import org as org_module
from dynsync_dagster.simulator.schema import INDUSTRY_OPTIONS
from dynsync_dagster.store.connection import open_store
from dynsync_dagster.sync import parallel_read
from dynsync_dagster.sync.cycle import CycleOptions, CycleResult, run_cycle
from dynsync_dagster.sync.local_edit import LocalEditError, set_account_field
from tests.support import Sleeps, fast_client

from .model import (
    ACCOUNT_KINDS,
    CONTACT_KINDS,
    SYNC_FILTER_FIELD,
    LocalEditRefused,
    Model,
    Snapshot,
)

RESULTS = Path(__file__).with_name("SOAK_RESULTS.md")
PARALLEL_RESULTS = Path(__file__).with_name("SOAK_RESULTS_PARALLEL.md")
RANGE_COUNTS = (2, 4, 16)  # key ranges of a parallel read; 16 is the product's default
CONTACT_LIMIT = 6

# Always selected (and the only ones edited locally); the optional ones come and go.
FIXED_ACCOUNT = ("name", "numberofemployees", "industrycode", "revenue")
OPTIONAL_ACCOUNT = ("accountnumber", "address1_city", "description", "parentaccountid")
FIXED_CONTACT = ("firstname", "lastname")
OPTIONAL_CONTACT = ("emailaddress1", "jobtitle")

NAMES = (
    "Contoso",
    "O'Brien & Co",
    'Quote "Q" Ltd',
    "Zürich AG 🚀",
    "back\\slash",
    "'); DROP TABLE accounts; --",
    "漢字 株式会社",
)
EVERYTHING = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))
CITIES = ("Amsterdam", "München", "Gent", "Zürich", "Kraków", None)
LOCAL_UPDATE, DYNAMICS_SYNC = "local_update", "dynamics_sync"


class SoakMismatch(AssertionError):
    """The store and the model disagree (or a cycle did not end as its faults say it must)."""


@dataclass
class Selection:
    """Which fields the settings select, and whether the sync user may read creditlimit."""

    account: set[str] = field(default_factory=lambda: set(OPTIONAL_ACCOUNT))
    contact: set[str] = field(default_factory=lambda: set(OPTIONAL_CONTACT))
    creditlimit_readable: bool = True
    # block_field_updates: only fields always selected are blocked (the settings refuse a
    # block on a field that is not selected)
    blocks: dict[str, frozenset[str]] = field(default_factory=dict)

    def settings(self) -> SyncSettings:
        account = [*FIXED_ACCOUNT, *sorted(self.account), "creditlimit"]
        contact = [*FIXED_CONTACT, *sorted(self.contact)]
        return SyncSettings(
            tuple(account), tuple(contact), CONTACT_LIMIT, block_field_updates=dict(self.blocks)
        )

    def synced_account(self) -> tuple[str, ...]:
        fields = [*FIXED_ACCOUNT, *sorted(self.account)]
        if self.creditlimit_readable:
            fields.append("creditlimit")
        return tuple(fields)

    def synced_contact(self) -> tuple[str, ...]:
        return (*FIXED_CONTACT, *sorted(self.contact))


@dataclass
class SoakReport:
    seed: int
    cycles: int
    succeeded: int = 0
    failed_as_expected: int = 0
    faults: Counter = field(default_factory=Counter)
    changes: Counter = field(default_factory=Counter)
    edits: Counter = field(default_factory=Counter)
    selection_changes: int = 0
    backfills: int = 0
    activity_rows: Counter = field(default_factory=Counter)
    suppressed_rows: int = 0
    block_segments: Counter = field(default_factory=Counter)  # the blocks each segment set
    # the most records stale, and kept out, after any one cycle; pinned values (rule 9)
    peak_stale: Counter = field(default_factory=Counter)
    peak_kept_out: int = 0
    pinned: int = 0
    thawed: Counter = field(default_factory=Counter)  # stale records that turned Yes again
    parallel: bool = False  # full reads in parallel key ranges (--parallel-read)
    # full reads per entity, as the simulator's request log shows them: "parallel" (key
    # ranges and the key read for the delta link) or "sequential" (one page at a time)
    full_reads: Counter = field(default_factory=Counter)
    range_requests: int = 0  # requests of parallel reads: key ranges and key reads
    parallel_events: Counter = field(default_factory=Counter)  # see check_full_reads
    seconds: float = 0.0


# ---- random Dynamics changes ---------------------------------------------------------------------


def _account_value(name: str, rng: random.Random, accounts: list[str]) -> Any:
    if rng.random() < 0.1:
        return None
    if name == "name":
        return f"{rng.choice(NAMES)} {rng.randrange(1000)}"
    if name == "accountnumber":
        return f"ACC-{rng.randrange(10**5)}"
    if name == "address1_city":
        return rng.choice(CITIES)
    if name == "description":
        return "Ünïcödé “text” 'quoted' \\ 🙂\n" * rng.choice((1, 3, 80))
    if name == "numberofemployees":
        return rng.randrange(0, 100_000)
    if name == "industrycode":
        return rng.choice(INDUSTRY_OPTIONS)[0]
    if name in ("revenue", "creditlimit"):
        return float(rng.randrange(0, 10**7)) + rng.choice((0, 0.5, 0.25, 0.01))
    if name == "parentaccountid":
        return rng.choice(accounts)
    raise ValueError(name)


def _contact_values(rng: random.Random) -> dict[str, Any]:
    return {
        "firstname": rng.choice(("Anna", "Zoë", "O'Neil", None, "Jürgen")),
        "lastname": f"{rng.choice(('Smith', 'de Vries', 'Nguyễn', 'Ω'))} {rng.randrange(1000)}",
        "emailaddress1": rng.choice((None, f"p{rng.randrange(1000)}@example.com")),
        "jobtitle": rng.choice((None, "CEO", "Buyer", "'; --")),
    }


def dynamics_change(sim: Simulator, rng: random.Random) -> str:
    """One random change in Dynamics; returns its kind."""
    org = sim.org
    accounts, contacts = org.account_ids(), org.contact_ids()
    kind = rng.choices(
        ("update_account", "touch_account", "create_account", "create_contact",
         "update_contact", "reparent_contact", "delete_contact", "delete_account", "merge",
         "filter_account", "filter_contact"),
        weights=(8, 1, 1, 2, 2, 3, 1, 0.5, 0.5, 1.5, 1.5),
    )[0]  # fmt: skip
    if len(accounts) < 6 and kind in ("delete_account", "merge"):
        kind = "create_account"
    contact_kinds = ("update_contact", "reparent_contact", "delete_contact", "filter_contact")
    if not contacts and kind in contact_kinds:
        kind = "create_contact"
    if kind in ("filter_account", "filter_contact"):
        return _filter_change(org, rng, kind)
    if kind == "update_account":
        aid = rng.choice(accounts)
        names = rng.sample(sorted(ACCOUNT_KINDS), rng.randint(1, 3))
        others = [a for a in accounts if a != aid]
        org.update_account(aid, **{n: _account_value(n, rng, others) for n in names})
    elif kind == "touch_account":
        org.touch_account(rng.choice(accounts))
    elif kind == "create_account":
        values = {n: _account_value(n, rng, accounts) for n in ("name", "industrycode", "revenue")}
        org.create_account(**values, **_new_flag(rng))
    elif kind == "create_contact":
        parent, parent_type = _parent(rng, accounts, contacts)
        org.create_contact(parent, parent_type, **_contact_values(rng), **_new_flag(rng))
    elif kind == "update_contact":
        values = _contact_values(rng)
        names = rng.sample(sorted(values), rng.randint(1, 2))
        org.update_contact(rng.choice(contacts), **{n: values[n] for n in names})
    elif kind == "reparent_contact":
        cid = rng.choice(contacts)
        parent, parent_type = _parent(rng, accounts, [c for c in contacts if c != cid])
        org.reparent_contact(cid, parent, parent_type)
    elif kind == "delete_contact":
        org.delete_contact(rng.choice(contacts))
    elif kind == "delete_account":
        org.delete_account(rng.choice(accounts))
    else:
        target, subordinate = rng.sample(accounts, 2)
        org.merge_accounts(target, subordinate)
    return kind


def _new_flag(rng: random.Random) -> dict[str, bool | None]:
    """The sync filter's value of a new record: now and then No (kept out), or Yes."""
    return {SYNC_FILTER_FIELD: rng.choices((None, False, True), weights=(6, 3, 1))[0]}


def _filter_change(org: Org, rng: random.Random, kind: str) -> str:
    """Flip a record's sync filter, or change a record that says No (it must stay as it was).
    Half the time a record that says No is picked (to bring it back), and accounts with
    contacts are picked first: their contacts' values freeze and thaw."""
    entity = "account" if kind == "filter_account" else "contact"
    ids = org.account_ids() if entity == "account" else org.contact_ids()
    get = org.get_account if entity == "account" else org.get_contact
    if rng.random() < 0.5:
        ids = [r for r in ids if get(r).get(SYNC_FILTER_FIELD) is False] or ids
    elif entity == "account" and rng.random() < 0.7:
        ids = [a for a in ids if org.contacts_of(a)] or ids
    rid = rng.choice(ids)
    says_no = get(rid).get(SYNC_FILTER_FIELD) is False
    if says_no and rng.random() < 0.4:  # stays No, with a change the store must not take
        if entity == "account":
            name = rng.choice(sorted(ACCOUNT_KINDS))
            others = [a for a in org.account_ids() if a != rid]
            org.update_account(rid, **{name: _account_value(name, rng, others)})
        elif rng.random() < 0.5:
            parent, parent_type = _parent(rng, org.account_ids(), [])
            org.reparent_contact(rid, parent, parent_type)
        else:
            org.update_contact(rid, lastname=f"Changed while No {rng.randrange(1000)}")
        return f"{kind}_while_no"
    flag = rng.choice((True, None)) if says_no else rng.choice((False, False, True, None))
    changes: dict[str, Any] = {SYNC_FILTER_FIELD: flag}
    if rng.random() < 0.5:  # the flip and a change in one update
        if entity == "account":
            name = rng.choice(FIXED_ACCOUNT)
            changes[name] = _account_value(name, rng, [a for a in org.account_ids() if a != rid])
        else:
            changes["firstname"] = rng.choice(("Flip", "Flop", None))
    update = org.update_account if entity == "account" else org.update_contact
    update(rid, **changes)
    return f"{kind}_{'no' if flag is False else 'yes' if flag else 'empty'}"


def _parent(
    rng: random.Random, accounts: list[str], contacts: list[str]
) -> tuple[str | None, str | None]:
    roll = rng.random()
    if roll < 0.1:
        return None, None
    if roll < 0.15 and contacts:
        return rng.choice(contacts), "contact"
    return rng.choice(accounts), "account"


# ---- faults ------------------------------------------------------------------------------------

PATHS = ("/contacts", "/accounts", "/api/data/", "EntityDefinitions")


def arm_fault(sim: Simulator, rng: random.Random) -> tuple[str, bool]:
    """Arm a random fault; returns its name and whether the cycle must still succeed."""
    faults = sim.faults
    path = rng.choice(PATHS)
    kind = rng.choices(
        ("none", "429", "5xx", "drop", "malformed", "401 once", "expired delta",
         "429 storm", "503 storm", "401 always", "malformed storm"),
        weights=(40, 8, 8, 5, 5, 5, 5, 3, 2, 2, 2),
    )[0]  # fmt: skip
    after = rng.randint(0, 2)
    if kind == "429":
        faults.inject(
            "429", times=1, path_contains=path, after=after, retry_after=rng.randint(0, 5)
        )
    elif kind == "5xx":
        code = rng.choice(("500", "502", "503", "504"))
        faults.inject(code, times=rng.randint(1, 2), path_contains=path, after=after, retry_after=0)
        kind = code
    elif kind in ("drop", "malformed"):
        faults.inject(kind, times=1, path_contains=path, after=after)
    elif kind == "401 once":
        faults.inject("401", times=1, path_contains=path, after=after)
    elif kind == "expired delta":
        sim.org.expire_delta_tokens()
    elif kind == "429 storm":
        faults.inject("429", times=None, path_contains=path, retry_after=20)
    elif kind == "503 storm":
        faults.inject("503", times=None, path_contains=path, retry_after=0)
    elif kind == "401 always":
        faults.inject("401", times=None, path_contains=path)
    elif kind == "malformed storm":
        faults.inject("malformed", times=None, path_contains=path)
    return kind, "storm" not in kind and kind != "401 always"


# ---- comparing the store with the model -------------------------------------------------------------


def compare(db: Path, model: Model) -> list[str]:
    """Differences between the store and the model's prediction (empty: they agree)."""
    if not db.exists():
        empty = not model.accounts and not model.contacts and not model.activity
        return [] if empty else ["the store does not exist"]
    acc_cols = list(model.account_columns({}, model.account_fields))
    own_cols = list(model.contact_columns({}, model.contact_fields))
    with open_store(db, read_only=True, wait_s=30) as con:
        problems = _compare_columns(con, model, acc_cols, own_cols)
        if problems:
            return problems
        problems += _compare_accounts(con, model, acc_cols)
        problems += _compare_contacts(con, model, acc_cols, own_cols)
        problems += _compare_activity(con, model)
        problems += _compare_kept_out(con, model)
    return problems


def _compare_columns(con, model: Model, acc_cols: list[str], own_cols: list[str]) -> list[str]:
    every_account = model.account_columns({}, ACCOUNT_KINDS)
    every_contact = model.contact_columns({}, CONTACT_KINDS)
    have = {t: set(con.sql(f"SELECT * FROM {t} LIMIT 0").columns) for t in ("accounts", "contacts")}
    return _columns("accounts", have["accounts"], acc_cols, every_account) + _columns(
        "contacts",
        have["contacts"],
        [*own_cols, *(f"account_{c}" for c in acc_cols)],
        [*every_contact, *(f"account_{c}" for c in every_account)],
    )


def _compare_accounts(con, model: Model, acc_cols: list[str]) -> list[str]:
    select = "".join(f', CAST("{c}" AS VARCHAR)' for c in acc_cols)
    got = {
        r[0]: (True,) if r[1] else (False, *r[2:])
        for r in con.execute(
            "SELECT CAST(accountid AS VARCHAR), is_deleted, sync_filtered, "
            f"CAST(versionnumber AS VARCHAR){select} FROM accounts"
        ).fetchall()
    }
    names = ["sync_filtered", "versionnumber", *acc_cols]
    return _rows("accounts", got, model.expected_accounts(), names)


def _compare_contacts(con, model: Model, acc_cols: list[str], own_cols: list[str]) -> list[str]:
    select = "".join(f', CAST("{c}" AS VARCHAR)' for c in own_cols)
    select += "".join(f', CAST("account_{c}" AS VARCHAR)' for c in acc_cols)
    got = {
        r[0]: (True, r[2]) if r[1] else (False, *r[2:])
        for r in con.execute(
            "SELECT CAST(contactid AS VARCHAR), is_deleted, CAST(accountid AS VARCHAR), "
            f"sync_filtered{select} FROM contacts"
        ).fetchall()
    }
    names = ["accountid", "sync_filtered", *own_cols, *(f"account_{c}" for c in acc_cols)]
    return _rows("contacts", got, model.expected_contacts(), names)


def _compare_activity(con, model: Model) -> list[str]:
    problems = []
    suppressed = con.execute(
        "SELECT coalesce(sum(rows_suppressed), 0) FROM activity_suppressions"
    ).fetchone()[0]
    if int(suppressed) != model.suppressed:  # rule 7: the suppression itself is on record
        problems.append(
            f"activity_suppressions: {suppressed} rows recorded, expected {model.suppressed}"
        )
    logged = Counter(
        con.execute(
            "SELECT CAST(contactid AS VARCHAR), CAST(accountid AS VARCHAR), attribute, "
            "old_value, new_value, source FROM activity_log"
        ).fetchall()
    )
    expected = Counter(model.activity)
    for row, n in (logged - expected).items():
        problems.append(f"activity_log: unexpected {n}x {row}")
    for row, n in (expected - logged).items():
        problems.append(f"activity_log: missing {n}x {row}")
    return problems


def _compare_kept_out(con, model: Model) -> list[str]:
    """filtered_records: the records Dynamics says No to that never synced."""
    got = set(
        con.execute("SELECT entity, CAST(record_id AS VARCHAR) FROM filtered_records").fetchall()
    )
    out = [f"filtered_records: unexpected {r}" for r in sorted(got - model.filtered)]
    return out + [f"filtered_records: missing {r}" for r in sorted(model.filtered - got)]


def _columns(table: str, have: set[str], want: list[str], possible: list[str]) -> list[str]:
    out = [f"{table}: column {c} is missing" for c in want if c not in have]
    out += [
        f"{table}: column {c} is there but the field is not synced"
        for c in possible
        if c in have and c not in want
    ]
    return out


def _rows(table: str, got: dict, want: dict, names: list[str]) -> list[str]:
    out = []
    for key in sorted(set(got) | set(want)):
        if key not in got:
            out.append(f"{table}: {key} missing, expected {want[key]}")
        elif key not in want:
            out.append(f"{table}: {key} unexpected: {got[key]}")
        elif got[key] != want[key]:
            g, w = got[key], want[key]
            if g[0] != w[0] or len(g) != len(w):
                out.append(f"{table}: {key} is {g}, expected {w}")
                continue
            diffs = [
                f"{names[i - 1]}: {g[i]!r} != expected {w[i]!r}"
                for i in range(1, len(g))
                if g[i] != w[i]
            ]
            out.append(f"{table}: {key}: " + "; ".join(diffs))
    return out


# ---- how the full reads went, from the simulator's request log ---------------------------------------


def full_read_kinds(requests: list[RequestRecord], entity: str) -> Counter:
    """How a cycle's requests read `entity` whole: "parallel" requests (a key range, or the
    key read that brings the delta link) and "sequential" ones (the change-tracked read of
    every column, or the pages after its checkpoint). Delta polls and `modifiedon` reads
    (cursors, backfills) are neither. The soak's tables have change tracking: a sequential
    full read of a table without it would also be ordered by the key.

    And what a parallel read that did not start in this cycle did: "resumed copy" (a
    failed cycle's copy went on: ranges read, no new key read), "resumed parts" (parts that
    went on from a saved page link) and "key read finished" (a key read went on from a
    saved link with no range read: a copy that committed without it)."""
    kinds: Counter = Counter()
    entity_set, key = ENTITY_SET[entity], PRIMARY_KEY[entity]
    started, went_on = set(), set()
    for record in requests:
        path = urlsplit(record.path)
        if record.method != "GET" or not path.path.endswith(f"/{entity_set}"):
            continue
        query = parse_qs(path.query)
        if "$deltatoken" in query or "modifiedon" in query.get("$filter", [""])[0]:
            continue
        key_read = query.get("$select") == [key]
        if key_read or query.get("$orderby", [""])[0].startswith(key):
            kinds["parallel"] += 1
            kinds["key read" if key_read else "range"] += 1
            part = (key_read, query.get("$filter", [""])[0])
            (went_on if "$skiptoken" in query else started).add(part)
        else:
            kinds["sequential"] += 1
    new_key_read = any(is_key for is_key, _ in started)
    kinds["resumed copy"] = int(kinds["range"] > 0 and not new_key_read)
    kinds["resumed parts"] = len(went_on - started)
    kinds["key read finished"] = int(kinds["key read"] > 0 and not kinds["range"] + new_key_read)
    return kinds


def check_full_reads(
    requests: list[RequestRecord], report: SoakReport, result: CycleResult | None, fault: str
) -> list[str]:
    """Count the cycle's full reads by how they went; one that went the other way than the
    run asked (parallel or not) is a problem."""
    problems = []
    for entity in ("contact", "account"):
        if result is not None and not result.plan.change_tracking[entity]:
            problems.append(f"{entity}: the soak expects change tracking")
        kinds = full_read_kinds(requests, entity)
        report.range_requests += kinds["parallel"]
        for kind in ("parallel", "sequential"):
            report.full_reads[f"{entity} {kind}"] += kinds[kind] > 0
        events = report.parallel_events
        events[f"{entity} copies resumed after a failed cycle"] += kinds["resumed copy"]
        events["parts resumed from a saved page link"] += kinds["resumed parts"]
        events[f"{entity} key reads finished a cycle later"] += kinds["key read finished"]
        if kinds["parallel"] and fault != "none":
            events[f"{entity} reads with a fault armed"] += 1
            events[f"{entity} reads failed with their cycle"] += result is None
        state = result.reader_states.get(entity) if result is not None else None
        if state is not None and state.mode == parallel_read.TRACKING:
            events["copies committed before their key read ended"] += 1
        wrong = "sequential" if report.parallel else "parallel"
        if kinds[wrong]:
            problems.append(
                f"{entity}: {kinds[wrong]} requests of a {wrong} full read "
                f"({'with' if report.parallel else 'without'} --parallel-read)"
            )
    return problems


@contextlib.contextmanager
def slow_key_reads(pause_s: float) -> Iterator[None]:
    """Each page of a parallel copy's key read (for its delta link) waits `pause_s` first:
    the ranges end before it, the copy commits in state "tracking", and the next cycle
    finishes the key read (parallel_read.finish_token). Every client, every thread."""
    follow = DynamicsClient.iter_link

    def paced(self: DynamicsClient, link: str, **options: Any) -> Iterator[Page]:
        pages = follow(self, link, **options)
        if parse_qs(urlsplit(link).query).get("$select") not in (["contactid"], ["accountid"]):
            return pages
        return _paced(pages, pause_s)

    DynamicsClient.iter_link = paced  # type: ignore[method-assign]
    try:
        yield
    finally:
        DynamicsClient.iter_link = follow  # type: ignore[method-assign]


def _paced(pages: Iterator[Page], pause_s: float) -> Iterator[Page]:
    for page in pages:
        time.sleep(pause_s)
        yield page


# ---- the soak ------------------------------------------------------------------------------------


def _wait_for_next_second_after(modifiedon: datetime | None) -> None:
    """An edit and a Dynamics update of the same account in the same second cannot be ordered
    (modifiedon has second precision): step past the account's last modifiedon first."""
    if modifiedon is None:
        return
    while datetime.now(UTC).replace(microsecond=0) <= modifiedon:
        time.sleep(0.05)


def _edit_pools(model: Model, kept_out_too: bool) -> tuple[list[str], list[str]]:
    """Contacts an edit can reach, and every contact. Without `kept_out_too`, contacts whose
    account the sync filter kept out are left out of both: the product accepts an edit there
    that the model refuses (see README.md, "Known product bugs"); with it, the live ones are
    the reachable ones whenever there are any."""
    contacts, stored = model.contacts, model.accounts
    every = sorted(
        c for c, s in contacts.items() if kept_out_too or not s.accountid or s.accountid in stored
    )
    live = [c for c in every if contacts[c].accountid and not contacts[c].deleted]
    kept_out = [c for c in live if contacts[c].accountid not in stored]
    return (kept_out or live) if kept_out_too else live, every


def local_edits(
    sim: Simulator,
    db: Path,
    model: Model,
    rng: random.Random,
    report: SoakReport,
    settings: SyncSettings,
    kept_out_too: bool = True,
) -> list[str]:
    """0-2 random local edits, each checked against what the model expects."""
    problems: list[str] = []
    live, every = _edit_pools(model, kept_out_too)
    if not every:
        return problems
    model.blocks = settings.block_field_updates
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        # Mostly contacts the edit can reach; now and then one it must refuse.
        pool = live if live and rng.random() < 0.85 else every
        contact = rng.choice(pool)
        name = rng.choice(FIXED_ACCOUNT)
        value: str | None = {
            "name": rng.choice(NAMES),
            "numberofemployees": str(rng.randrange(0, 10**6)),
            "industrycode": str(rng.choice((*[o for o, _ in INDUSTRY_OPTIONS[:5]], 999))),
            "revenue": f"{rng.randrange(10**6)}.{rng.randrange(100):02d}",
        }[name]
        if rng.random() < 0.1:
            value = None
        account = model.contacts[contact].accountid
        dynamics_version = 2**62  # deleted in Dynamics: nothing can overwrite it any more
        if account is not None and account in sim.org.account_ids():
            row = sim.org.get_account(account)
            _wait_for_next_second_after(row["modifiedon"])
            dynamics_version = int(row["versionnumber"])
        try:
            model.local_edit(contact, name, value, dynamics_version)
            expected = None
        except LocalEditRefused as exc:
            expected = exc
        try:
            set_account_field(db, contact, name, value, sync=settings)
            refused = None
        except LocalEditError as exc:
            refused = exc
        if (expected is None) != (refused is None):
            problems.append(
                f"local edit {contact} {name}={value!r}: model expected "
                f"{'refusal: ' + str(expected) if expected else 'success'}, got "
                f"{'refusal: ' + str(refused) if refused else 'success'}"
            )
        report.edits["refused" if refused else "made"] += 1
        if refused and settings.blocked(name, LOCAL_UPDATE):
            report.edits["refused, blocked"] += 1
    return problems


def change_blocks(selection: Selection, rng: random.Random, report: SoakReport) -> bool:
    """Now and then a new segment of the run: no block, one field blocked for Dynamics updates
    and another for local edits, or one field blocked both ways. True if it changed."""
    if report.block_segments and rng.random() >= 0.06:
        return False
    roll = rng.random()
    if roll < 0.3:
        selection.blocks = {}
    elif roll < 0.85:
        synced, local = rng.sample(FIXED_ACCOUNT, 2)
        selection.blocks = {synced: frozenset({DYNAMICS_SYNC}), local: frozenset({LOCAL_UPDATE})}
    else:
        both = rng.choice(FIXED_ACCOUNT)
        selection.blocks = {both: frozenset({DYNAMICS_SYNC, LOCAL_UPDATE})}
    report.block_segments[_describe_blocks(selection.blocks)] += 1
    return True


def _describe_blocks(blocks: dict[str, frozenset[str]]) -> str:
    if not blocks:
        return "none"
    return " + ".join(f"{f}: {'/'.join(sorted(k))}" for f, k in sorted(blocks.items()))


def change_selection(
    sim: Simulator, selection: Selection, rng: random.Random, report: SoakReport
) -> bool:
    """Now and then change the selection or creditlimit's security; True if it changed."""
    if rng.random() >= 0.07:
        return False
    report.selection_changes += 1
    roll = rng.random()
    if roll < 0.2:
        selection.creditlimit_readable = not selection.creditlimit_readable
        sim.org.set_secured_readable("account", "creditlimit", selection.creditlimit_readable)
    elif roll < 0.7:
        selection.account ^= {rng.choice(OPTIONAL_ACCOUNT)}
    else:
        selection.contact ^= {rng.choice(OPTIONAL_CONTACT)}
    return True


def run_soak(
    cycles: int,
    seed: int,
    workdir: Path,
    log: Callable[[str], None] = lambda _: None,
    kept_out_too: bool = True,
    parallel: bool = False,
) -> SoakReport:
    """Run the soak; raises SoakMismatch at the first cycle where store and model disagree.
    `kept_out_too`: local edits also through contacts of accounts the sync filter kept out.
    `parallel`: every full read in parallel key ranges (the module's note)."""
    # The simulator names new records with uuid4; seeded ids make a run repeatable (the random
    # choices below pick among ids in sorted order). Only the org's own uuid is swapped: other
    # threads (the server, its prefetcher) draw ids in no fixed order.
    real = org_module.uuid
    org_module.uuid = _SeededUuid(random.Random(seed + 1))  # type: ignore[assignment]
    try:
        return _soak(cycles, seed, workdir, log, kept_out_too, parallel)
    finally:
        org_module.uuid = real


class _SeededUuid:
    """The `uuid` module, with uuid4 drawn from a seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def uuid4(self) -> uuid.UUID:
        return uuid.UUID(int=self._rng.getrandbits(128), version=4)

    def __getattr__(self, name: str) -> Any:
        return getattr(uuid, name)


def _soak_org(seed: int) -> DatasetSpec:
    return DatasetSpec(
        accounts=10,
        contacts=52,
        sized_accounts=(8, CONTACT_LIMIT, CONTACT_LIMIT - 1),
        orphan_contacts=3,
        contact_parented_contacts=2,
        seed=seed,
        sync_filter_no_share=0.05,  # Marketo's sync filter column: 5% No, 5% Yes, the rest empty
    )


@dataclass
class _Soak:
    """One soak's moving parts: the org, the store, the model and what happened so far."""

    sim: Simulator
    conn: ConnectionSettings
    db: Path
    rng: random.Random
    report: SoakReport
    model: Model = field(
        default_factory=lambda: Model(labels=dict(INDUSTRY_OPTIONS), contact_limit=CONTACT_LIMIT)
    )
    selection: Selection = field(default_factory=Selection)
    history: list[str] = field(default_factory=list)
    last_fields: str = ""
    kept_out_too: bool = True  # try edits through contacts of kept-out accounts (refused)
    # --parallel-read: the key ranges and range storms come from their own generator, so
    # they do not shift the main one's draws (a cycle a range storm fails changes what
    # follows, though: a model that did not advance steers later edits differently)
    ranges: random.Random | None = None
    result: CycleResult | None = None

    def parallel(self) -> parallel_read.ParallelRead | None:
        """How this cycle reads a table whole: what DYNSYNC_PARALLEL_READ=1 asks for, with a
        drawn number of key ranges; None (sequential) without --parallel-read."""
        if self.ranges is None:
            return None
        on = parallel_read.from_env({parallel_read.ENV_SWITCH: "1"})
        assert on is not None
        return dataclasses.replace(on, ranges=self.ranges.choice(RANGE_COUNTS))

    def prepare(self, n: int) -> tuple[list[str], list[str], str, bool | None, bool]:
        """A block segment, local edits, Dynamics changes, a selection change and a fault
        before cycle n."""
        sim, rng, report = self.sim, self.rng, self.report
        change_blocks(self.selection, rng, report)
        problems = []
        if n > 1:
            settings = self.selection.settings()
            problems = local_edits(
                sim, self.db, self.model, rng, report, settings, self.kept_out_too
            )
        step: list[str] = []
        for _ in range(rng.randint(0, 4) if n > 1 else 0):
            kind = dynamics_change(sim, rng)
            report.changes[kind] += 1
            step.append(kind)
        changed = n > 1 and change_selection(sim, self.selection, rng, report)
        fault, must_succeed = arm_fault(sim, rng) if n > 1 else ("none", True)
        full_read = changed or fault == "expired delta"
        if self.ranges is not None and full_read and self.ranges.random() < 0.6:
            fault = f"{fault} + {self.break_ranges()}".removeprefix("none + ")
            must_succeed = None if must_succeed else must_succeed  # a must-fail stays one
        report.faults[fault] += 1
        # Now and then a backfill: a date range re-read (here: every record there is).
        backfill = n > 1 and rng.random() < 0.06
        report.backfills += backfill
        return problems, step, fault, must_succeed, backfill

    def break_ranges(self) -> str:
        """A 503 storm on one table's key ranges after a few of their requests, for a cycle
        that will read a table whole: if it is this one, its parallel copy fails part-way
        (and the next cycle resumes it). Drawn from the ranges' own generator."""
        assert self.ranges is not None
        key = self.ranges.choice(("contactid", "accountid"))
        after = self.ranges.randint(0, 6)
        self.sim.faults.inject(
            "503", times=None, path_contains=f"$filter={key}%20", after=after, retry_after=0
        )
        return f"503 storm in {key} ranges"

    def run(self, backfill: bool, problems: list[str]) -> BaseException | None:
        window = EVERYTHING if backfill else None
        # Explicit either way: DYNSYNC_PARALLEL_READ in the soak's environment changes nothing.
        options = CycleOptions(trigger="soak", window=window, parallel=self.parallel())
        # Now and then the key read for the delta link is slow, so a copy commits without it.
        slow = self.ranges is not None and self.ranges.random() < 0.4
        self.result = None
        self.sim.requests.clear()  # the log of this cycle's requests only (check_full_reads)
        with (
            slow_key_reads(0.05) if slow else contextlib.nullcontext(),
            fast_client(self.conn, Sleeps(), attempts=4, budget_s=30) as client,
        ):
            try:
                self.result = run_cycle(
                    self.conn, self.selection.settings(), self.db, options, client=client
                )
            except DynamicsError as exc:
                return exc
            except Exception as exc:  # anything else is a finding, reported below
                problems.append("cycle crashed:\n" + traceback.format_exc())
                return exc
            finally:
                self.sim.faults.clear()
        return None

    def cycle(self, n: int, log: Callable[[str], None]) -> None:
        problems, step, fault, must_succeed, backfill = self.prepare(n)
        error = self.run(backfill, problems)
        fields = "/".join(self.selection.synced_account() + self.selection.synced_contact())
        fields += f", blocks {_describe_blocks(self.selection.blocks)}"
        line = (
            f"cycle {n}{' (backfill)' if backfill else ''}: fault {fault}, changes {step}"
            f"{', fields ' + fields if fields != self.last_fields else ''}"
            f" -> {'ok' if error is None else type(error).__name__}"
        )
        self.last_fields = fields
        self.history.append(line)
        log(line)
        problems += self.judge(n, error, must_succeed)
        problems += check_full_reads(list(self.sim.requests), self.report, self.result, fault)
        problems += compare(self.db, self.model)
        if problems:
            shown = "\n  ".join(problems[:25])
            recent = "\n  ".join(self.history[-6:])
            raise SoakMismatch(
                f"seed {self.report.seed}, cycle {n}: the store and the model disagree "
                f"({len(problems)} problems):\n  {shown}\nlast cycles:\n  {recent}"
            )

    def _note_filter(self) -> None:
        """The most records stale (sync_filtered) and kept out after a cycle, for the report."""
        model, peak = self.model, self.report.peak_stale
        for entity, records in (("accounts", model.accounts), ("contacts", model.contacts)):
            stale = sum(1 for r in records.values() if r.stale)
            peak[entity] = max(peak[entity], stale)
        self.report.peak_kept_out = max(self.report.peak_kept_out, len(model.filtered))

    def judge(self, n: int, error: BaseException | None, must_succeed: bool | None) -> list[str]:
        """Advance the model on success; a failure must be one its fault explains (with
        `must_succeed` None, the fault may or may not stop the cycle)."""
        if error is None:
            self.report.succeeded += 1
            self.model.blocks = self.selection.settings().block_field_updates
            self.model.cycle(
                Snapshot.of(self.sim.org),
                self.selection.synced_account(),
                self.selection.synced_contact(),
            )
            self._note_filter()
            if must_succeed is False:
                return [f"cycle {n} succeeded through a fault it cannot get past"]
            return []
        if must_succeed:
            return [f"cycle {n} failed although its fault is retried: {error}"]
        self.report.failed_as_expected += 1
        return []


def _soak(
    cycles: int,
    seed: int,
    workdir: Path,
    log: Callable[[str], None],
    kept_out_too: bool,
    parallel: bool,
) -> SoakReport:
    report = SoakReport(seed=seed, cycles=cycles, parallel=parallel)
    started = time.monotonic()
    db = workdir / "store" / "dynsync.duckdb"
    with Simulator(_soak_org(seed), state_dir=workdir / "sim", max_page_size=10) as sim:
        conn = ConnectionSettings.from_env(sim.env())
        soak = _Soak(sim, conn, db, random.Random(seed), report, kept_out_too=kept_out_too)
        soak.ranges = random.Random(seed + 2) if parallel else None
        for n in range(1, cycles + 1):
            soak.cycle(n, log)
    report.activity_rows = Counter(row[5] for row in soak.model.activity)
    report.suppressed_rows = soak.model.suppressed
    report.pinned = soak.model.pins
    report.thawed = soak.model.thawed
    report.seconds = time.monotonic() - started
    return report


def results_markdown(report: SoakReport, command: str) -> str:
    faults = ", ".join(f"{k} {v}" for k, v in sorted(report.faults.items()))
    changes = ", ".join(f"{k} {v}" for k, v in sorted(report.changes.items()))
    rows = ", ".join(f"{k} {v}" for k, v in sorted(report.activity_rows.items()))
    blocks = ", ".join(f"{k} {v}" for k, v in sorted(report.block_segments.items()))
    peak = report.peak_stale
    reads = ", ".join(f"{k} {v}" for k, v in sorted(report.full_reads.items()) if v) or "none"
    events = ", ".join(f"{k} {v}" for k, v in sorted(report.parallel_events.items()) if v)
    title = (
        f"## Seed {report.seed}, every full read in parallel key ranges"
        if report.parallel
        else "# Model-based soak: last result"
    )
    return f"""{title}

`{command}` (the reference model is `tests/reliability/model.py`; the runner `soak.py`).

| | |
|---|---|
| result | **PASS**: after each of {report.cycles} cycles the store equalled the model |
| seed | {report.seed} |
| cycles | {report.cycles}: {report.succeeded} succeeded, {report.failed_as_expected} failed as their fault requires (store unchanged) |
| faults | {faults} |
| Dynamics changes | {changes} |
| local edits | {report.edits["made"]} made, {report.edits["refused"]} refused as the model predicted ({report.edits["refused, blocked"]} of them by a local_update block) |
| sync filter (`new_synctomkto`, 5% No and 5% Yes at the start) | at most {peak["accounts"]} accounts and {peak["contacts"]} contacts stale (`sync_filtered`) and {report.peak_kept_out} records kept out (`filtered_records`) after a cycle; {report.thawed["accounts"]} stale accounts and {report.thawed["contacts"]} stale contacts brought up to date |
| Block Field Updates segments | {blocks}; {report.pinned} values kept on contacts by a dynamics_sync block |
| field selection / security changes | {report.selection_changes} |
| backfill cycles (a catch-up, then a date range re-read) | {report.backfills} |
| cycles with full reads, by how the request log shows them | {reads}; {report.range_requests} requests of parallel reads (key ranges and key reads){"; " + events if events else ""} |
| activity rows compared | {rows} |
| rows kept out of the log by the contact limit ({CONTACT_LIMIT}) | {report.suppressed_rows} |
| compared after every cycle | accounts (key, deleted flag, `sync_filtered`, versionnumber, synced fields), contacts (key, deleted flag, account, `sync_filtered`, own fields, every `account_<field>`), which field columns exist, `filtered_records`, the activity log row for row on (contactid, accountid, attribute, old_value, new_value, source), and the rows recorded as suppressed |
| duration | {report.seconds:.0f} s |
| when | {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, Python {platform.python_version()} |
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability.soak", description=__doc__)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quiet", action="store_true", help="no line per cycle")
    parser.add_argument(
        "--no-edit-kept-out",
        dest="edit_kept_out",
        action="store_false",
        help="never try local edits through contacts of accounts the sync filter kept out "
        "(by default they are tried, and both the store and the model must refuse them)",
    )
    parser.add_argument(
        "--parallel-read",
        action="store_true",
        help="every full read in parallel key ranges, as DYNSYNC_PARALLEL_READ=1 does",
    )
    parser.add_argument(
        "--write-results",
        action="store_true",
        help=f"rewrite {RESULTS.name} with the outcome (with --parallel-read: this seed's "
        f"section of {PARALLEL_RESULTS.name})",
    )
    args = parser.parse_args(argv)
    # Retries and re-reads are expected here; the per-cycle line says what happened.
    logging.getLogger("dynsync").setLevel(logging.ERROR)
    command = f"uv run python -m tests.reliability.soak --cycles {args.cycles} --seed {args.seed}"
    command += " --parallel-read" if args.parallel_read else ""
    with tempfile.TemporaryDirectory(prefix="dynsync-soak-") as tmp:
        try:
            report = run_soak(
                args.cycles,
                args.seed,
                Path(tmp),
                log=(lambda _: None) if args.quiet else print,
                kept_out_too=args.edit_kept_out,
                parallel=args.parallel_read,
            )
        except SoakMismatch as exc:
            print(f"FAIL: {exc}", file=sys.stderr)
            return 1
    text = results_markdown(report, command)
    print(text)
    if args.write_results and args.parallel_read:
        write_section(PARALLEL_RESULTS, f"seed {args.seed}", text)
    elif args.write_results:
        RESULTS.write_text(text)
    return 0


PARALLEL_HEADER = """# Model-based soak with parallel first copies: last result per seed

Each section is written by `python -m tests.reliability.soak --parallel-read --write-results`
for its seed (between its markers); the sequential soak's result is in SOAK_RESULTS.md.
"""


def write_section(path: Path, name: str, text: str) -> None:
    """Put `text` between the markers of section `name` in `path`, keeping the other sections
    (in order of their names)."""
    sections: dict[str, str] = {}
    old = path.read_text() if path.exists() else ""
    for chunk in old.split("<!-- ")[1:]:
        head, _, body = chunk.partition(":start -->\n")
        if body:
            sections[head] = body.rsplit(f"<!-- {head}:end -->", 1)[0].rstrip("\n")
    sections[name] = text.rstrip("\n")
    parts = [f"<!-- {k}:start -->\n{v}\n<!-- {k}:end -->\n" for k, v in sorted(sections.items())]
    path.write_text(PARALLEL_HEADER + "\n" + "\n".join(parts))


if __name__ == "__main__":
    sys.exit(main())
