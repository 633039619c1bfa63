"""The fault matrix: every fault the simulator can inject, through whole cycles.

Each test drives a store through a faulty history and a control store through the same
Dynamics history without faults; the two must end equal (data tables, activity log row for
row), and a cycle that fails must leave its store exactly as it was.
"""

from __future__ import annotations

import io
import json
from decimal import Decimal
from pathlib import Path

import pytest
import urllib3

from dynsync_dagster.dynamics.auth import DynamicsSession, TokenProvider, build_session
from dynsync_dagster.dynamics.client import DynamicsClient, RetryPolicy
from dynsync_dagster.dynamics.errors import (
    AuthError,
    DynamicsError,
    PagingLoopError,
    ThrottledError,
    TransientError,
)
from dynsync_dagster.settings import ConnectionSettings
from dynsync_dagster.simulator import Simulator
from dynsync_dagster.simulator.schema import INDUSTRY_OPTIONS
from dynsync_dagster.store.connection import open_store
from dynsync_dagster.sync.cycle import run_cycle
from tests.support import (
    Sleeps,
    activity_rows,
    canonical,
    closed_port,
    connection,
    cycle,
    fast_client,
    pick_sized,
    sync_settings,
)


def _changes(sim: Simulator) -> None:
    """A handful of Dynamics changes that each produce activity rows or record changes."""
    org = sim.org
    big, other = pick_sized(sim, 9), pick_sized(sim, 7)
    org.update_account(big, name='Renamed "Big" Ltd ✓', numberofemployees=4321)
    org.reparent_contact(org.contacts_of(other)[0], big, "account")
    org.create_contact(other, "account", firstname="Neu", lastname="Kontakt")
    org.delete_contact(org.contacts_of(other)[-1])
    org.touch_account(other)


def _both_first(sim: Simulator, store: Path, control: Path) -> None:
    cycle(sim, store)
    cycle(sim, control)
    assert canonical(store) == canonical(control)


def _failed_runs(db: Path) -> list[str]:
    with open_store(db, read_only=True) as con:
        return [
            r[0]
            for r in con.execute(
                "SELECT error FROM sync_runs WHERE outcome = 'failed' ORDER BY started_at"
            ).fetchall()
        ]


def _reader_state(db: Path) -> list[tuple]:
    with open_store(db, read_only=True) as con:
        return con.execute(
            "SELECT entity, mode, delta_link, select_list, cursor_modifiedon FROM sync_state "
            "ORDER BY entity"
        ).fetchall()


def _no_duplicate_activity(db: Path) -> None:
    with open_store(db, read_only=True) as con:
        dupes = con.execute(
            "SELECT contactid, attribute, old_value, new_value, source, occurred_at, count(*) "
            "FROM activity_log GROUP BY ALL HAVING count(*) > 1"
        ).fetchall()
    assert dupes == []


# ---- throttling ------------------------------------------------------------------------------


def test_single_429_waits_exactly_retry_after(tiny: Simulator, store: Path, control: Path) -> None:
    _both_first(tiny, store, control)
    _changes(tiny)
    sleeps = Sleeps()
    tiny.faults.inject("429", times=1, path_contains="/contacts", retry_after=7)
    with fast_client(connection(tiny), sleeps) as client:
        result = cycle(tiny, store, client=client)
        assert client.stats.throttled == 1
    assert sleeps.waits == [7.0]  # Retry-After honoured as sent, no backoff added
    assert result.stats.retries == 1
    cycle(tiny, control)
    assert canonical(store) == canonical(control)
    assert len(activity_rows(store)) > 0


def test_429_storm_longer_than_the_budget_fails_cleanly_then_catches_up(
    tiny: Simulator, store: Path, control: Path
) -> None:
    _both_first(tiny, store, control)
    before, state_before = canonical(store), _reader_state(store)
    _changes(tiny)
    # Throttled until cleared, 20 s at a time: the third wait would pass the 30 s budget.
    tiny.faults.inject("429", times=None, path_contains="/api/data/", retry_after=20)
    sleeps = Sleeps()
    with (
        fast_client(connection(tiny), sleeps, attempts=10, budget_s=30) as client,
        pytest.raises(ThrottledError) as err,
    ):
        cycle(tiny, store, client=client)
    assert "budget" in str(err.value) and "service protection" in str(err.value)
    assert sum(sleeps.waits) <= 30
    assert canonical(store) == before, "a failed cycle must leave the data as it was"
    assert _reader_state(store) == state_before, "the reader must not advance past lost pages"
    recorded = _failed_runs(store)[-1]  # what happened in words, not a class name
    assert "service protection" in recorded and "Error" not in recorded

    tiny.faults.clear()
    cycle(tiny, store)  # the next cycle catches up exactly
    cycle(tiny, control)
    assert canonical(store) == canonical(control)
    _no_duplicate_activity(store)


# ---- server errors and broken bodies -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["500", "502", "503", "504"])
def test_server_errors_mid_pagination_are_retried(
    tiny: Simulator, store: Path, control: Path, kind: str
) -> None:
    # The first (full) read spans ~9 contact pages: fail the 4th, twice.
    tiny.faults.inject(kind, times=2, path_contains="/contacts", after=3, retry_after=0)
    sleeps = Sleeps()
    with fast_client(connection(tiny), sleeps) as client:
        result = cycle(tiny, store, client=client)
    assert result.stats.retries == 2
    assert len(sleeps.waits) == 2
    tiny.faults.clear()
    cycle(tiny, control)
    assert canonical(store) == canonical(control)
    _changes(tiny)
    tiny.faults.inject(kind, times=1, path_contains="/accounts", retry_after=0)
    with fast_client(connection(tiny)) as client:
        cycle(tiny, store, client=client)
    cycle(tiny, control)
    assert canonical(store) == canonical(control)
    _no_duplicate_activity(store)


def test_connection_dropped_mid_body_is_retried(
    tiny: Simulator, store: Path, control: Path
) -> None:
    tiny.faults.inject("drop", times=1, path_contains="/contacts", after=2)
    with fast_client(connection(tiny)) as client:
        result = cycle(tiny, store, client=client)
    assert result.stats.retries == 1
    cycle(tiny, control)
    assert canonical(store) == canonical(control)
    _changes(tiny)
    tiny.faults.inject("drop", times=1, path_contains="/accounts")
    with fast_client(connection(tiny)) as client:
        cycle(tiny, store, client=client)
    cycle(tiny, control)
    assert canonical(store) == canonical(control)


def test_malformed_page_mid_pagination_is_fetched_again(
    tiny: Simulator, store: Path, control: Path
) -> None:
    tiny.max_page_size = 5
    tiny.faults.inject("malformed", times=1, path_contains="/contacts", after=4)
    with fast_client(connection(tiny)) as client:
        result = cycle(tiny, store, client=client)
    assert result.stats.retries == 1
    cycle(tiny, control)
    assert canonical(store) == canonical(control)
    with open_store(store, read_only=True) as con:
        ids = con.execute("SELECT count(*), count(DISTINCT contactid) FROM contacts").fetchone()
    assert ids == (len(tiny.org.contact_ids()),) * 2  # the re-fetched page is not doubled


def test_persistently_malformed_page_fails_cleanly(
    tiny: Simulator, store: Path, control: Path
) -> None:
    _both_first(tiny, store, control)
    before = canonical(store)
    _changes(tiny)
    tiny.faults.inject("malformed", times=None, path_contains="/accounts")
    with fast_client(connection(tiny), attempts=3) as client, pytest.raises(TransientError) as err:
        cycle(tiny, store, client=client)
    assert "malformed JSON" in str(err.value)
    assert canonical(store) == before
    tiny.faults.clear()
    cycle(tiny, store)
    cycle(tiny, control)
    assert canonical(store) == canonical(control)


class _RepeatingNextLink(DynamicsSession):
    """A session whose second contacts page links back to itself (a server paging bug)."""

    armed = True

    def request(self, method, url, *args, **kwargs):  # type: ignore[no-untyped-def]
        response = super().request(method, url, *args, **kwargs)
        if self.armed and "/contacts" in str(url) and "skiptoken" in str(url):
            body = json.loads(response.content)
            if body.get("@odata.nextLink"):
                body["@odata.nextLink"] = str(url)
                # The client reads the raw stream: hand it the altered body there.
                altered = json.dumps(body).encode()
                response.raw = urllib3.HTTPResponse(body=io.BytesIO(altered), preload_content=False)
                response._content = altered
                self.armed = False
        return response


def test_a_repeating_next_link_stops_the_cycle_cleanly(
    tiny: Simulator, store: Path, control: Path
) -> None:
    _both_first(tiny, store, control)
    before = canonical(store)
    _changes(tiny)
    conn = connection(tiny)
    wider = sync_settings(contact_fields=(*sync_settings().contact_fields, "telephone1"))
    session = _RepeatingNextLink(conn)
    client = DynamicsClient(conn, session=session, token_provider=TokenProvider(conn, session))
    with pytest.raises(PagingLoopError, match="repeated a nextLink"):
        run_cycle(conn, wider, store, client=client)
    session.close()
    assert canonical(store) == before
    cycle(tiny, store, wider)
    cycle(tiny, control, wider)
    assert canonical(store) == canonical(control)


# ---- authentication ------------------------------------------------------------------------------


def test_401_once_gets_a_fresh_token_and_goes_on(
    tiny: Simulator, store: Path, control: Path
) -> None:
    _both_first(tiny, store, control)
    _changes(tiny)
    tiny.faults.inject("401", times=1, path_contains="/accounts")
    with fast_client(connection(tiny)) as client:
        cycle(tiny, store, client=client)
        assert client.stats.unauthorized_retries == 1
        # Tokens revoked between cycles: the long-lived client recovers the same way.
        tiny.org.update_account(tiny.org.account_ids()[0], address1_city="Gent")
        tiny.expire_access_tokens()
        cycle(tiny, store, client=client)
        assert client.stats.unauthorized_retries == 2
    cycle(tiny, control)
    assert canonical(store) == canonical(control)


def test_401_always_is_fatal_with_a_clear_message(
    tiny: Simulator, store: Path, control: Path
) -> None:
    _both_first(tiny, store, control)
    before = canonical(store)
    _changes(tiny)
    tiny.faults.inject("401", times=None)
    with fast_client(connection(tiny)) as client, pytest.raises(DynamicsError) as err:
        cycle(tiny, store, client=client)
    message = str(err.value)
    assert err.value.status == 401
    assert "application user" in message and "security role" in message
    assert "DYNAMICS_URL" in message
    assert client.stats.unauthorized_retries == 1  # one fresh token, then it stops
    assert canonical(store) == before


def test_token_endpoint_refusing_the_secret_names_the_aadsts_code(
    tiny: Simulator, store: Path
) -> None:
    env = tiny.env() | {"DYNAMICS_CLIENT_SECRET": "not-the-secret"}
    with pytest.raises(AuthError) as err:
        run_cycle(ConnectionSettings.from_env(env), sync_settings(), store)
    message = str(err.value)
    assert "7000215" in message
    assert "DYNAMICS_CLIENT_SECRET" in message
    assert "not-the-secret" not in message


def test_token_endpoint_invalid_client_fault(tiny: Simulator, store: Path) -> None:
    cycle(tiny, store)
    before = canonical(store)
    tiny.org.update_account(pick_sized(tiny, 9), name="Never seen")
    tiny.faults.inject("token_invalid_client", times=None)
    with fast_client(connection(tiny)) as client, pytest.raises(AuthError) as err:
        cycle(tiny, store, client=client)
    assert "AADSTS7000215" in str(err.value) or "7000215" in str(err.value)
    assert "check DYNAMICS_CLIENT_SECRET" in str(err.value)
    assert canonical(store) == before


@pytest.mark.parametrize(
    "kind",
    [
        "token_429",
        "token_503",
    ],
)
def test_token_endpoint_transient_failure_is_retried(
    tiny: Simulator, store: Path, control: Path, kind: str
) -> None:
    # Real sleeps: MSAL replays a throttled token response until its Retry-After has passed.
    policy = RetryPolicy(max_attempts=5, max_total_wait_s=10, base_backoff_s=0.6, max_backoff_s=2)
    tiny.faults.inject(kind, times=1, retry_after=1)
    with DynamicsClient(connection(tiny), retry=policy) as client:
        cycle(tiny, store, client=client)
        assert client.stats.retries >= 1
    cycle(tiny, control)
    assert canonical(store) == canonical(control)


# ---- the network ---------------------------------------------------------------------------------


def test_connection_refused_everywhere_fails_with_a_clear_message(
    tiny: Simulator, store: Path
) -> None:
    port = closed_port()
    env = tiny.env() | {
        "DYNAMICS_URL": f"https://127.0.0.1:{port}",
        "DYNAMICS_AUTHORITY_HOST": f"https://127.0.0.1:{port}",
    }
    conn = ConnectionSettings.from_env(env)
    client = fast_client(conn, attempts=3)
    with client, pytest.raises(TransientError) as err:
        run_cycle(conn, sync_settings(), store, client=client)
    message = str(err.value)
    assert f"127.0.0.1:{port}" in message
    assert "DYNAMICS_AUTHORITY_HOST" in message or "network" in message


def test_web_api_going_away_mid_run_fails_cleanly(
    tiny: Simulator, store: Path, control: Path
) -> None:
    _both_first(tiny, store, control)
    before = canonical(store)
    _changes(tiny)
    conn = connection(tiny)
    tokens = TokenProvider(conn, build_session(conn))
    tokens.get_token()  # cached: the failures below are the Web API's, not the authority's
    tiny.stop()
    policy = RetryPolicy(max_attempts=3, base_backoff_s=0.01, max_backoff_s=0.05)
    session = build_session(conn)  # no pooled keep-alive connection to the stopped server
    client = DynamicsClient(conn, retry=policy, session=session, token_provider=tokens)
    with pytest.raises(TransientError) as err:
        run_cycle(conn, sync_settings(), store, client=client)
    session.close()
    assert "connection failed" in str(err.value)
    assert "retry the cycle later" in str(err.value)
    assert canonical(store) == before


# ---- change tracking -----------------------------------------------------------------------------


def test_expired_delta_token_triggers_a_full_resync(
    tiny: Simulator, store: Path, control: Path
) -> None:
    _both_first(tiny, store, control)
    _changes(tiny)
    org = tiny.org
    sized = {pick_sized(tiny, 9), pick_sized(tiny, 6)}
    gone = next(a for a in org.account_ids() if a not in sized and org.contacts_of(a))
    gone_contacts = org.contacts_of(gone)
    org.delete_account(gone)  # deletes only a full read (a key diff) can notice now
    tiny.org.expire_delta_tokens()
    result = cycle(tiny, store)
    assert result.modes == {"contact": "resync", "account": "resync"}
    cycle(tiny, control)
    assert canonical(store) == canonical(control)
    with open_store(store, read_only=True) as con:
        assert con.execute(
            "SELECT is_deleted FROM accounts WHERE accountid = ?", [gone]
        ).fetchone() == (True,)
        flags = con.execute(
            "SELECT DISTINCT is_deleted FROM contacts WHERE list_contains(?, CAST(contactid AS VARCHAR))",
            [gone_contacts],
        ).fetchall()
    assert flags == [(True,)]
    again = cycle(tiny, store)
    assert again.modes == {"contact": "delta", "account": "delta"}
    _no_duplicate_activity(store)


# ---- values ------------------------------------------------------------------------------------------

HOSTILE_A = {
    "name": "O'Brien \"Quoted\" \\back\\slash'); DROP TABLE accounts; -- 🚀 漢字 עברית \u200b é",
    "accountnumber": "%s {0} $1 ? :name NULL",
    "industrycode": 33,
    "revenue": 98765432.1,
    "numberofemployees": 2147483647,
    "address1_city": "Zürich\nLine two\tTabbed\r\n",
    "description": ("Ünïcödé “quotes” 'single' \"double\" \\ 🙂\n" * 2500),  # ~100 kB
    "creditlimit": -0.01,
}
HOSTILE_B = {
    "name": 'name"; DROP TABLE accounts; --',
    "accountnumber": None,
    "industrycode": None,
    "revenue": -1234567.89,
    "numberofemployees": -2147483648,
    "address1_city": None,
    "description": "'" * 5000,
    "creditlimit": 0.0,
}
NULLS = dict.fromkeys(HOSTILE_A)


def _text(field: str, value: object) -> str | None:
    """How DuckDB shows a stored value as text (activity_log's old_value/new_value)."""
    if value is None:
        return None
    if field in ("revenue", "creditlimit"):
        return str(Decimal(repr(value)).quantize(Decimal("0.0001")))
    return str(value)


def _logged_text(field: str, value: object) -> str | None:
    """How an activity row shows a value: a choice's label, money without trailing zeros."""
    if field == "industrycode" and value is not None:
        return dict(INDUSTRY_OPTIONS)[int(value)]
    text = _text(field, value)
    if text is not None and field in ("revenue", "creditlimit"):
        return text.rstrip("0").rstrip(".")  # stored with four decimals, always a point
    return text


def test_huge_unicode_quoted_and_null_values_round_trip(
    tiny: Simulator, store: Path, control: Path
) -> None:
    org = tiny.org
    hostile = org.create_account(**HOSTILE_A)
    empty = org.create_account(**NULLS)
    people = {
        org.create_contact(
            hostile,
            "account",
            firstname='Zoë "Z" O\'Neil\\',
            lastname="🚀" * 500,
            emailaddress1="a'b\"c@example.com",
            jobtitle="'; DELETE FROM contacts; --",
        ): hostile,
        org.create_contact(empty, "account", lastname="Null-account contact"): empty,
    }
    cycle(tiny, store)
    cycle(tiny, control)
    fields = list(HOSTILE_A)
    cols = ", ".join(f'CAST("{f}" AS VARCHAR)' for f in fields)
    acols = ", ".join(f'CAST("account_{f}" AS VARCHAR)' for f in fields)
    with open_store(store, read_only=True) as con:
        for account, values in ((hostile, HOSTILE_A), (empty, NULLS)):
            got = con.execute(f"SELECT {cols} FROM accounts WHERE accountid = ?", [account])
            assert got.fetchone() == tuple(_text(f, values[f]) for f in fields)
        for contact, account in people.items():
            got = con.execute(f"SELECT {acols} FROM contacts WHERE contactid = ?", [contact])
            expected = HOSTILE_A if account == hostile else NULLS
            assert got.fetchone() == tuple(_text(f, expected[f]) for f in fields)
        first = con.execute(
            "SELECT firstname, lastname, emailaddress1, jobtitle FROM contacts WHERE contactid = ?",
            [next(iter(people))],
        ).fetchone()
    assert first == (
        'Zoë "Z" O\'Neil\\',
        "🚀" * 500,
        "a'b\"c@example.com",
        "'; DELETE FROM contacts; --",
    )

    # Swap the hostile values both ways: every change is logged with exact text.
    org.update_account(hostile, **HOSTILE_B)
    org.update_account(empty, **HOSTILE_A)
    cycle(tiny, store)
    logged = {
        (c, a, attr): (old, new)
        for c, a, attr, old, new, source in activity_rows(store)
        if source == "Dynamics sync"
    }
    for contact, account in people.items():
        before, after = (HOSTILE_A, HOSTILE_B) if account == hostile else (NULLS, HOSTILE_A)
        for f in fields:
            old, new = _logged_text(f, before[f]), _logged_text(f, after[f])
            if old == new:
                assert (contact, account, f) not in logged
            else:
                assert logged[(contact, account, f)] == (old, new), f
    cycle(tiny, control)
    assert canonical(store) == canonical(control)
    with open_store(store, read_only=True) as con:
        assert con.execute("SELECT count(*) FROM accounts").fetchone()[0] == len(org.account_ids())


def test_money_at_the_dataverse_limits_round_trips_exactly(tiny: Simulator, store: Path) -> None:
    values = [922337203685477.0, -922337203685477.0, 900000000000.01, 123456789012.34]
    ids = [tiny.org.create_account(name=f"Money {i}", revenue=v) for i, v in enumerate(values)]
    cycle(tiny, store)
    with open_store(store, read_only=True) as con:
        got = [
            con.execute(
                "SELECT CAST(revenue AS VARCHAR) FROM accounts WHERE accountid = ?", [a]
            ).fetchone()[0]
            for a in ids
        ]
    assert got == [_text("revenue", v) for v in values]


def test_cycle_after_a_failed_full_read_brings_in_what_changed_before_it(
    tiny: Simulator, store: Path, control: Path
) -> None:
    fields = sync_settings()
    _both_first(tiny, store, control)
    # A newly selected field forces a full re-read; it fails after two pages of contacts.
    wider = sync_settings(fields.account_fields, (*fields.contact_fields, "telephone1"), 5000)
    tiny.faults.inject("malformed", times=None, path_contains="/contacts", after=2)
    with fast_client(connection(tiny), attempts=2) as client, pytest.raises(TransientError):
        cycle(tiny, store, wider, client=client)
    tiny.faults.clear()
    org = tiny.org
    early = org.contact_ids()[0]  # on the first page: staged before the failure
    org.update_contact(early, lastname="Changed before the next cycle")
    cycle(tiny, store, wider)
    cycle(tiny, control, wider)
    with open_store(store, read_only=True) as con:
        got = con.execute("SELECT lastname FROM contacts WHERE contactid = ?", [early]).fetchone()
    assert got == ("Changed before the next cycle",)
    assert canonical(store) == canonical(control)
