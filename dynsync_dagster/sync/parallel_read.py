"""A full read in parallel key ranges, within a share of the user's service-protection budget.

A sequential pager asks for one page at a time, so a real org's ~1 s of server time per
5,000-row page caps it at one server-second per second, while the user's budget allows four
(1,200 s per 300 s window, dataverse-webapi.md section 7.1). This read splits the table into
ranges of its primary key and reads them on several threads; every request passes one
`Budget` (dynamics/budget.py), which keeps the user's window below a share of each limit,
honours every 429's Retry-After for all threads, and adapts the concurrency.

Why ranges of the primary key (`contactid ge X and contactid lt Y`, `$orderby=contactid`):
- It is the table's key, so the ranges are disjoint and cover every record whatever the
  server's order of GUIDs is, as long as the bounds ascend in that order. The bounds repeat
  the same value in the first and the last group of the GUID, so they ascend both in text
  order (the simulator, .NET) and in SQL Server's uniqueidentifier order (last group first).
- A record never moves between ranges or within one: an update during the read cannot
  make the pager skip or repeat it, as it can with `modifiedon` or `versionnumber` ranges
  (both change on every write), and paging on a unique key is deterministic (section 3.1).
- The key is the table's primary key in SQL Server, so a range is a seek, not a scan
  [verify on a real org: the doc does not say which columns Dataverse indexes]. `createdon`
  would also be stable, but it is not unique and its spread is unknown without a probe.
- Random GUIDs spread evenly over the ranges; server-made sequential GUIDs may not, which
  costs balance, never correctness [verify on a real org].

Why the switch to delta reads leaves no gap and no duplicate (tables with change tracking):
- Change tracking takes no `$filter` (section 4.4), so the ranges cannot end with a delta
  link. A separate tracked read of the key alone (the cheapest tracked read: one column)
  runs alongside them, and its last page brings the delta link. Its token marks the moment
  its first page was served (the simulator's snapshot; the existing resume of a full read
  relies on the same fact [verify on a real org]), and no range request is sent before
  that first page came back.
  The link it ends with asks for the key only; the token goes on a link that selects the
  entity's columns (the token is not tied to a `$select`: section 4.3).
- So every change made after the token's moment is in the next delta poll; every change
  before it is seen by the range reads, which all start later. A change during the copy may
  be seen twice (by a range and by the delta), with the same or a newer versionnumber: the
  rules apply only a higher versionnumber, so it lands exactly once. A record deleted during
  the copy comes back as a deletion in the delta, after the copy staged it.
- The key read is sequential and still costs about a third of a full page per row, so
  waiting for it would hold the copy to its pace. When the ranges end first, the copy
  commits without it: the reader's mode is TRACKING and its link the key read's next page
  (which carries the snapshot). The next cycle finishes the key read and polls the delta
  link from that same snapshot (finish_token), so the argument above still holds; until
  then the store has every record as of the copy.
Without change tracking there is no token read: the ranges alone, then a `modifiedon`
cursor, as after a sequential read.

Checkpoints: each range (and the token read) saves its next link as `<entity>@<part>` in
the stage, committed with its rows; the entity's own checkpoint says a parallel read is
under way. A failed cycle's successor resumes each unfinished part from its link.
Pages are staged on the calling thread only (the stage's DuckDB connection and the progress
display are not shared); the threads fetch and decode.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from dynsync_dagster.dynamics.budget import Budget, BudgetShare
from dynsync_dagster.dynamics.client import DynamicsClient, Page
from dynsync_dagster.dynamics.errors import DynamicsError, ExpiredDeltaToken
from dynsync_dagster.dynamics.fields import ENTITY_SET, PRIMARY_KEY
from dynsync_dagster.store.state import ReaderState
from dynsync_dagster.sync.stage import ANNOTATIONS, Progress

if TYPE_CHECKING:
    from dynsync_dagster.sync.cycle import _EntityRead

log = logging.getLogger("dynsync.parallel")

TOKEN = "token"  # the part that reads the keys with change tracking, for the delta link
# A reader state: the records are copied; its link is the key read's next page, whose last
# page brings the delta link (finish_token, next cycle).
TRACKING = "tracking"
ENV_SWITCH = "DYNSYNC_PARALLEL_READ"  # 1/on: full reads in parallel ranges
ENV_SHARE = "DYNSYNC_BUDGET_SHARE"  # the share of the user's budget, 0.8 by default


@dataclass(frozen=True)
class ParallelRead:
    """How a full read runs in parallel: key ranges per entity, and the budget's share."""

    ranges: int = 16  # one when the table's keys fit one page
    budget: BudgetShare = field(default_factory=BudgetShare)


def from_env(env: Mapping[str, str] = os.environ) -> ParallelRead | None:
    """The parallel read the environment asks for; None (sequential) unless switched on."""
    switch = env.get(ENV_SWITCH, "").strip().lower()
    if switch in ("", "0", "off", "false", "no"):
        return None
    if switch not in ("1", "on", "true", "yes"):
        raise ValueError(f"{ENV_SWITCH} must be 1 or 0 (on or off), got {switch!r}")
    share = env.get(ENV_SHARE, "").strip()
    try:
        budget = BudgetShare(share=float(share)) if share else BudgetShare()
    except ValueError as exc:
        raise ValueError(f"{ENV_SHARE}: {exc}; set it to e.g. 0.8 (80%)") from None
    return ParallelRead(budget=budget)


def key_ranges(key: str, n: int) -> list[str]:
    """`$filter`s of `n` disjoint key ranges that cover every GUID (see the module's note)."""
    bounds = [f"{i * 2**32 // n:08x}-0000-0000-0000-{i * 2**48 // n:012x}" for i in range(1, n)]
    lows, highs = [None, *bounds], [*bounds, None]
    return [
        " and ".join(
            part
            for part in (low and f"{key} ge {low}", high and f"{key} lt {high}")
            if part is not None
        )
        for low, high in zip(lows, highs, strict=True)
    ]


def read_all(read: _EntityRead, options: ParallelRead, mode: str) -> ReaderState:
    """Read every record of an entity into the stage in parallel; where its reader stands
    after: a delta link, the token read to finish next cycle, or (without change tracking)
    a `modifiedon` cursor."""
    entity, client = read.entity, read.client
    entity_set, key = ENTITY_SET[entity], PRIMARY_KEY[entity]
    parts: dict[str, Progress] = {}
    ranges = options.ranges
    budget = _budget(read, options)
    if read.tracking:
        # The key read's first page fixes its snapshot before any range is read, and says
        # whether ranges are worth it: a table whose keys fit one page is read in one. It
        # passes the budget too, which then knows what it was charged.
        token = client.query_link(entity_set, select=[key], filter=None, orderby=None)
        with client.fork(budget) as gated:
            first = next(gated.iter_link(token, track_changes=True, annotations=""))
        _add_stats(client, gated)
        last = first.next_link is None
        parts[f"{entity}@{TOKEN}"] = Progress(
            mode, read.select_list, first.next_link, first.delta_link, last, read.started
        )
        ranges = 1 if last else ranges
    for i, where in enumerate(key_ranges(key, ranges)):
        link = client.query_link(
            entity_set, select=read.plan.select(entity), filter=where, orderby=f"{key} asc"
        )
        parts[f"{entity}@r{i:03d}"] = Progress(
            mode, read.select_list, link, None, False, read.started
        )
    run = _Run(read, budget, mode, parts, fresh=True)
    delta = run.run()
    if delta:
        return read.state("delta", delta, None)
    token = run.parts.get(run.token_part)
    if token is not None and not token.complete:  # the key read goes on next cycle
        return read.state(TRACKING, token.resume_link, None)
    # No change tracking, or a key read that ended without a delta link (section 4.4):
    # a modifiedon cursor from here on, as after a sequential read.
    return read.state("cursor", None, None)


def finish_token(read: _EntityRead, state: ReaderState) -> ReaderState | None:
    """Finish the key read a parallel first copy left, then poll its delta link: every
    change since before the copy began. None if Dynamics refused the saved link or the
    token expired: the caller reads the table again."""
    assert state.delta_link is not None
    log.info("%s: finishing the change-tracking read of the first copy", read.entity)
    try:
        delta = None
        for page in read.client.iter_link(state.delta_link, track_changes=True, annotations=""):
            delta = page.delta_link or delta
        link = _with_columns(read, delta) if delta else None
        if link is None:
            return None
        return read.state("delta", read.drain(read.link(link)) or link, None)
    except DynamicsError as exc:
        if exc.status != 400 and not isinstance(exc, ExpiredDeltaToken):
            raise
        log.warning("%s: the saved key-read link failed (%s); reading again", read.entity, exc)
        read.stage.reset(read.entity)
        return None


def resume(read: _EntityRead, resumed: Progress, options: ParallelRead | None) -> bool:
    """Finish the parts a failed cycle's parallel read left; False if there are none or
    Dynamics refused a saved link (the caller then starts over)."""
    parts = read.stage.part_progress(read.entity)
    if not parts:
        return False
    log.info(
        "%s: resuming a parallel read (%d of %d parts unfinished)",
        read.entity,
        sum(not p.complete for p in parts.values()),
        len(parts),
    )
    try:
        _Run(read, _budget(read, options), resumed.mode, parts, fresh=False).run()
    except DynamicsError as exc:
        if exc.status != 400:
            raise
        log.warning("%s: a saved range link was refused (%s); starting over", read.entity, exc)
        return False
    return True


def _budget(read: _EntityRead, options: ParallelRead | None) -> Budget:
    """The cycle's budget, or one of this read's own (a resumed copy in a cycle that does
    not read in parallel)."""
    return read.budget or Budget((options or ParallelRead()).budget)


def _with_columns(read: _EntityRead, delta_link: str) -> str:
    """The token read's delta link, asking for the entity's columns instead of the key.

    The token is a version and a time (section 4.2), not tied to the `$select` it came
    with: Airbyte sends it on the entity-set path with its own options (section 4.3).
    Polled as it came, the link would bring the changed records' keys only.
    """
    query = urlsplit(delta_link).query
    found = [p for p in query.split("&") if p.startswith("$deltatoken=")]
    if not found:
        return delta_link  # not the link section 4.2 describes: leave it as it came
    link = read.client.query_link(
        ENTITY_SET[read.entity], select=read.plan.select(read.entity), filter=None, orderby=None
    )
    return f"{link}&{found[0]}"


class _Run:
    """One parallel read: its threads fetch, the calling thread stages and checkpoints."""

    def __init__(
        self,
        read: _EntityRead,
        budget: Budget,
        mode: str,
        parts: dict[str, Progress],
        *,
        fresh: bool,
    ) -> None:
        self.read, self.mode, self.parts, self.fresh = read, mode, parts, fresh
        # A first copy ends when its ranges do; a resumed one finishes its token read too.
        self.defer_token = fresh
        self.deferred = False
        # The cycle's budget, shared by its entities' reads: it knows what the one before
        # spent and when that leaves the window.
        self.budget = budget
        self.spare = self.budget.spare()  # the key read's gate, closed when the run ends
        self.token_part = f"{read.entity}@{TOKEN}"
        self.pages: queue.Queue = queue.Queue(maxsize=8)  # pages fetched, not yet staged
        self.stop = threading.Event()
        # Range requests wait until the token read's first page fixed its snapshot.
        self.snapshot = threading.Event()
        # Ranges only ever started after the token read's first page, which is saved
        # before their pages: a saved page link of the token read means the snapshot is fixed.
        token = parts.get(self.token_part)
        if token is None or token.complete or "$skiptoken=" in (token.resume_link or ""):
            self.snapshot.set()
        self.clients: list[DynamicsClient] = []
        self._lock = threading.Lock()
        self.arrow = read.arrow  # made here, once, not by the first threads at the same time

    def run(self) -> str | None:
        read = self.read
        shown = read.watcher.shown if read.watcher else None
        if shown is not None:
            total = read.watcher.total(read.entity) if read.watcher else None
            shown.start(read.entity, self.mode, total, read.stage.rows.get(read.entity, 0))
        todo = self._todo = [p for p, progress in self.parts.items() if not progress.complete]
        threads = self._start(todo)
        try:
            self._stage_pages(len(todo), shown)
        finally:
            self.stop.set()
            self.spare.close()  # a key read waiting for room must not hold the join
            self._drain_and_join(threads)
            self._add_stats()
        token = self.parts.get(self.token_part)
        delta = _with_columns(read, token.delta_link) if token and token.delta_link else None
        if not self.deferred:  # deferred: a failed commit's successor finishes the token read
            done = Progress(self.mode, read.select_list, None, delta, True, read.started)
            read.stage.checkpoint(read.entity, done)
        if shown is not None:
            shown.done(read.entity)
        log.info(
            "%s: parallel read done (%d requests, %d throttled, at most %d at once)",
            read.entity,
            self.budget.stats.requests,
            self.budget.stats.throttled,
            self.budget.stats.peak_in_flight,
        )
        return delta

    def _start(self, todo: list[str]) -> list[threading.Thread]:
        ranges: queue.Queue[str] = queue.Queue()
        for part in todo:
            if part != self.token_part:
                ranges.put(part)
        threads = []
        if self.token_part in todo:
            threads.append(self._thread(lambda: self._fetch(self.token_part), "token"))
        for n in range(min(self.budget.share.ceiling, ranges.qsize())):
            threads.append(self._thread(lambda: self._ranges(ranges), f"range-{n}"))
        for t in threads:
            t.start()
        return threads

    def _thread(self, target, name: str) -> threading.Thread:
        def guarded() -> None:
            try:
                target()
            except BaseException as exc:  # handed to the staging thread, raised there
                self.snapshot.set()
                self._put(("error", None, exc))

        return threading.Thread(target=guarded, name=f"dynsync-{name}", daemon=True)

    def _ranges(self, ranges: queue.Queue[str]) -> None:
        while not self.snapshot.wait(0.2):
            if self.stop.is_set():
                return
        while not self.stop.is_set():
            try:
                part = ranges.get_nowait()
            except queue.Empty:
                return
            self._fetch(part)

    def _fetch(self, part: str) -> None:
        """Follow one part's links to its end, handing each page over."""
        # The key read uses only the budget the ranges leave: the copy can commit without it.
        gate = self.spare if part == self.token_part else self.budget
        client = self.read.client.fork(gate)
        with self._lock:
            self.clients.append(client)
        try:
            for page in self._pages(client, part):
                if not self._put(("page", part, page)):
                    return
                self.snapshot.set()  # the token read's first page is in
            self._put(("done", part, None))
        finally:
            client.close()

    def _pages(self, client: DynamicsClient, part: str) -> Iterator[Page]:
        link = self.parts[part].resume_link
        assert link is not None
        if part == self.token_part:  # the keys are not kept: only the delta link counts
            return client.iter_link(link, track_changes=True, annotations="")
        return client.iter_link(link, annotations=ANNOTATIONS, arrow=self.arrow)

    def _put(self, item: tuple) -> bool:
        while not self.stop.is_set():
            try:
                self.pages.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _stage_pages(self, parts: int, shown) -> None:
        """Stage pages as they come, each with its part's checkpoint, until all parts end."""
        read, stage = self.read, self.read.stage
        if self.fresh:  # the entity's own checkpoint: a parallel read is under way
            self._wait_for_snapshot()
            under_way = Progress(self.mode, read.select_list, None, None, False, read.started)
            stage.checkpoint(read.entity, under_way)
            for part, progress in self.parts.items():
                stage.checkpoint(part, progress)
            stage.commit()
        ranges = sum(p != self.token_part for p in self._todo)
        while parts:
            try:
                kind, part, page = self.pages.get(block=ranges > 0 or not self.defer_token)
            except queue.Empty:
                self.deferred = True  # the records are all in: the key read can wait
                return
            if kind == "error":
                raise page
            if kind == "done":
                parts -= 1
                ranges -= part != self.token_part
                continue
            if part != self.token_part:
                stage.add_page(read.entity, page)
                if shown is not None:
                    shown.page(read.entity, len(page))
            saved = Progress(
                self.mode,
                read.select_list,
                page.next_link,
                page.delta_link,
                page.next_link is None,
                read.started,
            )
            self.parts[part] = saved
            stage.checkpoint(part, saved)

    def _wait_for_snapshot(self) -> None:
        while not self.snapshot.wait(0.2):
            pass

    def _drain_and_join(self, threads: list[threading.Thread]) -> None:
        """Unblock the threads and let each finish the request it is in (bounded: they are
        daemons either way)."""
        deadline = time.monotonic() + 30
        for t in threads:
            while t.is_alive() and time.monotonic() < deadline:
                with contextlib.suppress(queue.Empty):
                    self.pages.get_nowait()
                t.join(timeout=0.05)

    def _add_stats(self) -> None:
        """The threads' request counts, added to the cycle's client (reported per cycle)."""
        with self._lock:
            for client in self.clients:
                _add_stats(self.read.client, client)


def _add_stats(cycle: DynamicsClient, fork: DynamicsClient) -> None:
    """A forked client's request counts, added to the cycle's client's."""
    total = cycle.stats
    for f in fields(total):
        setattr(total, f.name, getattr(total, f.name) + getattr(fork.stats, f.name))
