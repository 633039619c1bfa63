"""A first copy in parallel key ranges, against the simulator's realistic service protection
on a sped-up clock: within its budget, honouring every 429, resumable per range, and with
the same store, and the same next deltas, as a sequential first copy."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

from dynsync_dagster.dynamics import client as client_module
from dynsync_dagster.dynamics.budget import BudgetShare
from dynsync_dagster.dynamics.errors import DynamicsError
from dynsync_dagster.simulator import DatasetSpec, Simulator
from dynsync_dagster.store.connection import open_store
from dynsync_dagster.sync.parallel_read import ParallelRead, from_env, key_ranges
from tests import support
from tests.support import canonical, connection, cycle, fast_client

SPEC = DatasetSpec(accounts=40, contacts=1500, sized_accounts=(12, 8), orphan_contacts=4, seed=23)
RANGES = 4
# Range r002 of 4: [80000000-..., c0000000-...); its links all carry this text.
THIRD_RANGE = "contactid%20ge%2080000000-0000-0000-0000-800000000000"


@pytest.fixture
def real(tmp_path: Path) -> Iterator[Simulator]:
    """Realistic limits, 50x clock, pages of 100 so each range spans several pages."""
    with Simulator(
        SPEC, state_dir=tmp_path / "sim", realistic_limits=True, clock_speed=50, max_page_size=100
    ) as sim:
        yield sim


def parallel(**share: float) -> ParallelRead:
    return ParallelRead(ranges=RANGES, budget=BudgetShare(**share))


@dataclass
class Sent:
    url: str
    started: float
    answered: float
    status: int
    retry_after: float | None


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[Sent]:
    """Every Web API request the clients send, with when it started and was answered."""
    log: list[Sent] = []
    lock = threading.Lock()
    build = client_module.build_session

    def logging_session(conn):
        session = build(conn)
        send = session.request

        def request(method, url, **kwargs):
            started = time.monotonic()
            response = send(method, url, **kwargs)
            retry_after = response.headers.get("Retry-After")
            with lock:
                log.append(
                    Sent(
                        url,
                        started,
                        time.monotonic(),
                        response.status_code,
                        float(retry_after) if retry_after else None,
                    )
                )
            return response

        session.request = request
        return session

    monkeypatch.setattr(client_module, "build_session", logging_session)
    return log


def on_request(monkeypatch: pytest.MonkeyPatch, hook: Callable[[str], None]) -> None:
    """Call `hook(url)` before each Web API request is sent (on the sending thread)."""
    build = client_module.build_session

    def hooked_session(conn):
        session = build(conn)
        send = session.request

        def request(method, url, **kwargs):
            hook(url)
            return send(method, url, **kwargs)

        session.request = request
        return session

    monkeypatch.setattr(client_module, "build_session", hooked_session)


def test_key_ranges_cover_every_key_once() -> None:
    filters = key_ranges("contactid", 4)
    assert filters[0] == "contactid lt 40000000-0000-0000-0000-400000000000"
    assert filters[-1] == "contactid ge c0000000-0000-0000-0000-c00000000000"
    assert filters[2] == (
        "contactid ge 80000000-0000-0000-0000-800000000000 "
        "and contactid lt c0000000-0000-0000-0000-c00000000000"
    )
    assert len(key_ranges("accountid", 16)) == 16


def test_switch_from_the_environment() -> None:
    assert from_env({}) is None
    assert from_env({"DYNSYNC_PARALLEL_READ": "0"}) is None
    on = from_env({"DYNSYNC_PARALLEL_READ": "1", "DYNSYNC_BUDGET_SHARE": "0.5"})
    assert on is not None and on.budget.share == 0.5
    with pytest.raises(ValueError, match="DYNSYNC_BUDGET_SHARE"):
        from_env({"DYNSYNC_PARALLEL_READ": "1", "DYNSYNC_BUDGET_SHARE": "2"})


def test_parallel_first_copy_equals_a_sequential_one(real: Simulator, tmp_path: Path) -> None:
    first = cycle(real, tmp_path / "parallel.duckdb", parallel=parallel())
    # Which key ranges the copy read. (Whether they overlapped at the server is up to timing
    # at a 50x clock; test_never_more_requests_in_flight_than_allowed checks concurrency.)
    ranges = {
        unquote(r.path).split("$filter=")[1].split("&")[0]
        for r in real.requests
        if "/contacts?" in r.path and "contactid ge" in unquote(r.path)
    }
    sequential = cycle(real, tmp_path / "sequential.duckdb", parallel=None)
    assert canonical(tmp_path / "parallel.duckdb") == canonical(tmp_path / "sequential.duckdb")
    assert first.modes == sequential.modes == {"contact": "full", "account": "full"}
    assert first.rows_read == sequential.rows_read
    assert len(ranges) == RANGES - 1  # every range but the first (no lower bound) read
    # The next cycle polls the delta link the parallel read ended with.
    after = cycle(real, tmp_path / "parallel.duckdb", parallel=parallel())
    assert after.modes == {"contact": "delta", "account": "delta"}
    assert after.rows_read == {"contact": 0, "account": 0}


def test_never_more_requests_in_flight_than_allowed(tmp_path: Path) -> None:
    # The server allows 3 at once; the read is told 3 too: not one concurrency 429. A
    # slower clock holds each page ~10 ms, so the requests overlap at the server.
    with Simulator(
        SPEC,
        state_dir=tmp_path / "sim",
        realistic_limits=True,
        clock_speed=4,
        max_page_size=100,
        concurrency_limit=3,
    ) as sim:
        result = cycle(sim, tmp_path / "store.duckdb", parallel=parallel(max_concurrent=3))
        usage = sim.limits.usage(sim.org.app_user_id)
        statuses = [r.status for r in sim.requests]
    assert result.modes == {"contact": "full", "account": "full"}
    assert 1 < usage["peak_concurrent"] <= 3
    assert 429 not in statuses
    assert result.stats.throttled == 0


def test_every_429_is_honoured_by_every_thread(tmp_path: Path, sent: list[Sent]) -> None:
    # Another integration has used most of the user's execution time: the server's budget
    # is 4 s, so the read runs into execution-time 429s, and a few injected ones.
    with Simulator(
        SPEC,
        state_dir=tmp_path / "sim",
        realistic_limits=True,
        clock_speed=50,
        max_page_size=100,
        execution_limit_s=4,
    ) as sim:
        sim.faults.inject("429", times=3, path_contains="contacts", after=10, retry_after=1)
        result = cycle(sim, tmp_path / "store.duckdb", parallel=parallel())
        control = cycle(sim, tmp_path / "control.duckdb", parallel=None)
    assert result.modes == control.modes == {"contact": "full", "account": "full"}
    assert canonical(tmp_path / "store.duckdb") == canonical(tmp_path / "control.duckdb")
    throttled = [s for s in sent if s.status == 429]
    assert len(throttled) >= 3 and result.stats.throttled >= 3
    # After a 429 answer, no request of the read starts until its Retry-After has passed
    # (a request already past the gate when the answer came may start a moment later).
    for t in throttled:
        assert t.retry_after is not None
        early = [
            s for s in sent if t.answered + 0.1 < s.started < t.answered + t.retry_after - 0.05
        ]
        assert early == [], (t, early)


def test_a_failed_range_resumes_from_its_checkpoint(real: Simulator, tmp_path: Path) -> None:
    store = tmp_path / "store.duckdb"
    conn = connection(real)
    # The third range's third page keeps failing: the cycle fails after its first two.
    real.faults.inject("503", times=None, path_contains=THIRD_RANGE, after=2)
    with fast_client(conn, attempts=2) as client, pytest.raises(DynamicsError):
        cycle(real, store, client=client, parallel=parallel())
    real.faults.clear()
    before = len(real.requests)
    resumed = cycle(real, store, parallel=parallel())
    again = [r.path for r in list(real.requests)[before:] if THIRD_RANGE in r.path]
    # The range went on from its saved page link: its first two pages were not read again.
    assert again and all("$skiptoken=" in path for path in again)
    assert resumed.modes["contact"] == "full"
    control = tmp_path / "control.duckdb"
    cycle(real, control, parallel=None)
    assert canonical(store) == canonical(control)


def test_a_change_during_the_parallel_copy_lands_exactly_once(
    real: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    org = real.org
    contacts = org.contact_ids()
    changed = threading.Event()
    created: list[str] = []

    def change_once(url: str) -> None:
        # On the first second page of a contact range: some ranges are read, most are not.
        range_page = "contacts?" in url and "$skiptoken=" in url and "$filter=" in url
        if range_page and not changed.is_set():
            changed.set()
            for cid in contacts:
                org.update_contact(cid, jobtitle="Changed mid-copy")
            org.delete_contact(contacts[0])
            created.append(org.create_contact(None, None, lastname="Born mid-copy"))

    on_request(monkeypatch, change_once)
    store = tmp_path / "store.duckdb"
    first = cycle(real, store, parallel=parallel())
    assert changed.is_set() and first.modes["contact"] == "full"
    second = cycle(real, store, parallel=parallel())
    assert second.modes["contact"] == "delta"
    third = cycle(real, store, parallel=parallel())
    assert third.rows_read == {"contact": 0, "account": 0}
    assert third.counts.contacts_upserted == third.counts.contacts_deleted == 0
    # A sequential copy made after the changes holds the same live records and activity:
    # nothing missing, nothing twice (the store also remembers the deletion it saw).
    control = tmp_path / "control.duckdb"
    cycle(real, control, parallel=None)
    assert live_contacts(store) == live_contacts(control)
    assert canonical(store)["activity_log"] == canonical(control)["activity_log"]
    assert {jobtitle for _, jobtitle, _ in live_contacts(store)} == {"Changed mid-copy", None}
    assert created[0] in {cid for cid, _, _ in live_contacts(store)}
    assert contacts[0] not in {cid for cid, _, _ in live_contacts(store)}


def live_contacts(db: Path) -> list[tuple]:
    with open_store(db, read_only=True) as con:
        return con.execute(
            "SELECT CAST(contactid AS VARCHAR), jobtitle, versionnumber FROM contacts "
            "WHERE NOT is_deleted ORDER BY 1"
        ).fetchall()


@pytest.mark.parametrize("slow", ["token", "ranges"])
def test_the_key_read_for_the_delta_link_may_end_after_the_copy(
    real: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slow: str
) -> None:
    """Slow key read: the copy commits without it and the next cycle finishes it, then polls
    its delta link. Slow ranges: the copy ends with the delta link. Either way the change
    made during the copy is in after the next cycle."""
    org = real.org
    victim = org.contact_ids()[-1]
    changed = threading.Event()

    def pace(url: str) -> None:
        token_read = "contacts?$select=contactid&" in url or url.endswith("$select=contactid")
        if token_read == (slow == "token") and "contacts?" in url:
            time.sleep(0.05)
        if "$filter=contactid" in url and "$skiptoken=" in url and not changed.is_set():
            changed.set()
            org.update_contact(victim, jobtitle="Changed mid-copy")

    on_request(monkeypatch, pace)
    store = tmp_path / "store.duckdb"
    first = cycle(real, store, parallel=parallel())
    want = "tracking" if slow == "token" else "delta"
    assert first.reader_states["contact"].mode == want
    second = cycle(real, store, parallel=parallel())
    assert second.modes["contact"] == "delta"
    assert second.reader_states["contact"].mode == "delta"
    assert ("Changed mid-copy",) in [
        (jobtitle,) for cid, jobtitle, _ in live_contacts(store) if cid == victim
    ]
    control = tmp_path / "control.duckdb"
    cycle(real, control, parallel=None)
    assert live_contacts(store) == live_contacts(control)


def test_a_killed_parallel_copy_resumes_each_range_where_it_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL in the middle of the contact ranges: the next cycle goes on from the saved
    page links, and the store ends up as a sequential copy's."""
    with Simulator(
        SPEC, state_dir=tmp_path / "sim", realistic_limits=True, clock_speed=50, max_page_size=10
    ) as sim:
        _kill_and_resume(sim, tmp_path, monkeypatch)


def _kill_and_resume(real: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clean_env = support.clean_env

    def parallel_env(tmp: Path) -> dict[str, str]:
        return {**clean_env(tmp), "DYNSYNC_PARALLEL_READ": "1"}

    monkeypatch.setattr(support, "clean_env", parallel_env)
    store, settings = tmp_path / "store" / "dynsync.duckdb", support.sync_settings()
    with support.Zygote(tmp_path) as zygote:
        job = support.crash_job(real, store, settings, page_pause_s=0.01)
        # 16 ranges of ~9 pages each: killed as the 40th contact page is staged.
        outcome = zygote.run(job, "FETCH", nth=40)
    assert outcome.killed
    before = len(real.requests)
    resumed = cycle(real, store, settings, parallel=parallel())
    assert resumed.modes["contact"] == "full"
    firsts: dict[str, str] = {}
    for r in list(real.requests)[before:]:
        if "contacts?" in r.path and "$filter=contactid" in r.path:
            where = r.path.split("$filter=")[1].split("&")[0]
            firsts.setdefault(where, r.path)
    # Pages are committed with their checkpoints every 10: some range went on from a link.
    assert any("$skiptoken=" in path for path in firsts.values())
    control = tmp_path / "control.duckdb"
    cycle(real, control, settings, parallel=None)
    assert canonical(store) == canonical(control)
