"""A share of the user's service-protection budget, for reads that send requests in parallel.

Dataverse limits each user, per 300-second sliding window, to 6,000 requests, 1,200 s of
combined execution time and 52 concurrent requests (dataverse-webapi.md section 7.1). Other
integrations often run as the same user, so a parallel read keeps the user's total below a
share of each limit (80% by default) instead of racing to the 429s:

- at most `share * 52` requests in flight, and fewer while the window is full;
- the concurrency it allows grows by one per answered request while the user's window (the
  `x-ms-ratelimit-*-remaining` headers Dataverse sends with most answers, section 2) is
  below the share. Microsoft calls those headers a debugging aid, so without them only 429s
  steer it;
- the requests in flight count too: a request is charged when it ends, so 40 pages in
  flight that cost 12 s each add 480 s the headers do not show yet. The window's used time
  divided by its requests (both headers) estimates what one costs, and a request starts
  only if the window, with it and those in flight charged, stays within the share;
- over the share, nothing is in flight and one request every tenth of a window looks
  whether charges have left it (a window's length in real seconds is estimated from what a
  request costs and how long it takes, so it holds on a sped-up simulator too). A reader
  that sent one request at a time instead spent a server-second per second on top of a
  full share until the window drained, and met the 1,200 s limit before it did; without the
  headers it still goes one at a time;
- a 429 pauses every request of the read until its `Retry-After` has passed (the doc's
  "pause all requests for that user") and halves the concurrency;
- requests through `spare()` (the change-tracking key read, which a first copy can leave
  to the next cycle) go only while no other request waits for room and the window is less
  than half the share: they use what the ranges leave, so a copy that costs several
  windows is not pushed into one more by them.

One `Budget` is shared by the threads of a read; each request passes `request()`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

# The documented defaults (dataverse-webapi.md section 7.1).
CONCURRENCY_LIMIT = 52
EXECUTION_LIMIT_S = 1200.0
REQUEST_LIMIT = 6000
WINDOW_S = 300.0
TIME_LEFT = "x-ms-ratelimit-time-remaining-xrm-requests"  # milliseconds, "1,234.56"
REQUESTS_LEFT = "x-ms-ratelimit-burst-remaining-xrm-requests"


@dataclass(frozen=True)
class BudgetShare:
    """How much of the user's limits one read may use."""

    share: float = 0.8
    max_concurrent: int | None = None  # None: share of CONCURRENCY_LIMIT
    start_concurrent: int = 4
    execution_limit_s: float = EXECUTION_LIMIT_S
    request_limit: int = REQUEST_LIMIT
    concurrency_limit: int = CONCURRENCY_LIMIT

    def __post_init__(self) -> None:
        if not 0 < self.share <= 1:
            raise ValueError(
                f"the budget share must be above 0 and at most 1 (0.8 = 80%), got {self.share}"
            )

    @property
    def ceiling(self) -> int:
        """The most requests this read ever has in flight."""
        allowed = max(1, int(self.concurrency_limit * self.share))
        return max(1, min(self.max_concurrent or allowed, allowed))


@dataclass
class BudgetStats:
    """What a read saw of the budget: reported by tests and benchmarks."""

    requests: int = 0
    throttled: int = 0
    peak_in_flight: int = 0
    paused_s: float = 0.0  # time some request waited for a Retry-After to pass
    window_used: float = 0.0  # last seen share of the execution-time budget in use
    peak_window_used: float = 0.0  # the highest share of it seen in use


class BudgetClosed(Exception):
    """The read ended (`Budget.close`): a request still waiting for room is not sent."""


@dataclass
class _Window:
    """What the latest answer's headers said of the user's window."""

    used_s: float | None = None  # execution time in use, server-seconds
    cost_s: float | None = None  # what one request costs: used time / requests in the window
    seen_at: float = 0.0  # when that answer came, on the budget's clock
    duration_s: float | None = None  # how long a request of this read takes (moving mean)

    def length(self) -> float | None:
        """The 300 s window on the budget's clock: a request's duration per server-second
        it costs (about 1 on a real org, 1/N on a simulator whose clock runs N times real
        time). The mean cost counts cheap requests too, so it errs long: a late look."""
        if not self.cost_s or not self.duration_s:
            return None
        return WINDOW_S * self.duration_s / self.cost_s


class Budget:
    """The gate every request of a parallel read passes (thread-safe)."""

    def __init__(
        self, share: BudgetShare = BudgetShare(), clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.share = share
        self.stats = BudgetStats()
        self._clock = clock
        self._cond = threading.Condition()
        self._allowed = min(share.start_concurrent, share.ceiling)
        self._in_flight = 0
        self._paused_until = 0.0
        self._over_share = False
        self._window = _Window()
        self._waiting = 0  # requests (not spare ones) waiting for room
        self._closed = False

    def close(self) -> None:
        """The read has ended: requests waiting for room raise BudgetClosed at once (a spare
        one can wait minutes for the window to drain; its thread must not hold the read)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def spare(self) -> Budget:
        """A gate into this budget for requests that may wait: they go only while no
        other request waits for room."""
        return _Spare(self)

    @property
    def allowed(self) -> int:
        with self._cond:
            return self._allowed

    @contextlib.contextmanager
    def request(self, spare: bool = False) -> Iterator[Callable[[int, Mapping[str, str]], None]]:
        """Hold a slot for one request; call the yielded function with the answer's status
        and headers (a request that raised without an answer just frees its slot)."""
        started = self._enter(spare)
        answered: list[tuple[int, Mapping[str, str]]] = []
        try:
            yield lambda status, headers: answered.append((status, headers))
        finally:
            self._leave(started, *(answered[-1] if answered else (0, {})))

    def _enter(self, spare: bool = False) -> float:
        with self._cond:
            waiting = False
            while True:
                if self._closed:
                    if waiting:
                        self._waiting -= 1
                    raise BudgetClosed("the parallel read has ended")
                now = self._clock()
                if now < self._paused_until:
                    wait = self._paused_until - now
                    self.stats.paused_s += wait
                    self._cond.wait(wait)
                    continue
                wait = self._wait_for_room(now)
                if spare and (self._waiting or self._half_full()):
                    wait = max(wait, 0.5)
                if wait <= 0:
                    break
                if not spare and not waiting:
                    waiting, self._waiting = True, self._waiting + 1
                self._cond.wait(min(wait, 0.5))
            if waiting:
                self._waiting -= 1
            self._in_flight += 1
            self.stats.requests += 1
            self.stats.peak_in_flight = max(self.stats.peak_in_flight, self._in_flight)
            return now

    def _half_full(self) -> bool:
        """The window, with the requests in flight charged, holds half the share or more:
        a spare request would take budget the others will want soon."""
        w = self._window
        if w.used_s is None or w.cost_s is None:
            return False
        projected = w.used_s + self._in_flight * w.cost_s
        return projected >= self.share.share * self.share.execution_limit_s / 2

    def _wait_for_room(self, now: float) -> float:
        """0 if one more request may start now, else how long to wait before looking again."""
        w = self._window
        if w.used_s is None or w.cost_s is None or self._over_share:
            # No cost estimate (or the request budget is the tight one): over the share,
            # one request at a time, whose answer says when the window has room again.
            room = 1 if self._over_share else self._allowed
            return 0.0 if self._in_flight < room else 0.5
        projected = w.used_s + (self._in_flight + 1) * w.cost_s
        if projected <= self.share.share * self.share.execution_limit_s:
            return 0.0 if self._in_flight < self._allowed else 0.5
        if self._in_flight:
            return 0.5  # their answers will show the window
        # Over the share with nothing in flight: one request a tenth of a window after the
        # last answer, to see whether charges have left the window.
        length = w.length()
        return 0.0 if length is None else w.seen_at + length / 10 - now

    def _leave(self, started: float, status: int, headers: Mapping[str, str]) -> None:
        with self._cond:
            self._in_flight -= 1
            if status == 429:
                self._throttled(headers)
            elif status:
                self._steer(headers, self._clock(), started)
            self._cond.notify_all()

    def _throttled(self, headers: Mapping[str, str]) -> None:
        self.stats.throttled += 1
        wait = _seconds(headers.get("Retry-After"))
        if wait is None:
            wait = 1.0  # the transport backs off on its own; hold the others a moment too
        self._paused_until = max(self._paused_until, self._clock() + wait)
        self._allowed = max(1, self._allowed // 2)

    def _steer(self, headers: Mapping[str, str], now: float, started: float) -> None:
        used = _window_used(headers, self.share)
        if used is None:  # no headers: grow until a 429 says otherwise
            self._allowed = min(self.share.ceiling, self._allowed + 1)
            return
        self.stats.window_used = used
        self.stats.peak_window_used = max(self.stats.peak_window_used, used)
        self._learn(headers, now, now - started)
        over_time = used >= self.share.share
        requests_left = _number(headers.get(REQUESTS_LEFT))
        over_requests = requests_left is not None and (
            1 - requests_left / self.share.request_limit >= self.share.share
        )
        # With a cost estimate, the projection of _wait_for_room steers the time budget.
        self._over_share = over_requests or (over_time and self._window.cost_s is None)
        if not over_time and not over_requests:
            self._allowed = min(self.share.ceiling, self._allowed + 1)

    def _learn(self, headers: Mapping[str, str], now: float, duration_s: float) -> None:
        """Update the window as the answer's headers show it, and this read's charges."""
        w = self._window
        time_left = _number(headers.get(TIME_LEFT))
        requests_left = _number(headers.get(REQUESTS_LEFT))
        if time_left is None:
            return
        w.used_s = max(0.0, self.share.execution_limit_s - time_left / 1000)
        w.seen_at = now
        w.duration_s = duration_s if w.duration_s is None else 0.9 * w.duration_s + 0.1 * duration_s
        if requests_left is not None and w.used_s > 0:
            # Requests in flight are counted on arrival but charged when they end.
            done = self.share.request_limit - requests_left - self._in_flight
            w.cost_s = w.used_s / max(1.0, done)


class _Spare(Budget):
    """`Budget.spare()`: the same budget, for requests that go only when nothing else waits."""

    def __init__(self, budget: Budget) -> None:  # a view: no state of its own
        self._budget = budget
        self.share, self.stats = budget.share, budget.stats

    def request(self, spare: bool = True) -> contextlib.AbstractContextManager:
        return self._budget.request(spare=True)


def _window_used(headers: Mapping[str, str], share: BudgetShare) -> float | None:
    """The larger used fraction of the user's time and request budgets, from the headers."""
    time_left = _number(headers.get(TIME_LEFT))
    requests_left = _number(headers.get(REQUESTS_LEFT))
    used = []
    if time_left is not None:
        used.append(1 - time_left / 1000 / share.execution_limit_s)
    if requests_left is not None:
        used.append(1 - requests_left / share.request_limit)
    return max(used) if used else None


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value.replace(",", ""))
    except ValueError:
        return None


def _seconds(value: str | None) -> float | None:
    seconds = _number(value)
    return seconds if seconds is not None and seconds >= 0 else None
