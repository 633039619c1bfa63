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
  flight that cost 12 s each add 480 s the headers do not show yet. A request costs its
  duration times the server-seconds a second of duration is charged: the window's used
  time over its requests (both headers) over the mean duration, raised by at most a
  quarter when the window holds more than that explains (cheap requests such as metadata
  pull the mean down). A request starts only if the window, with it and those in flight
  charged, stays within the share;
- the window slides: what this read was charged leaves it one window after the answer
  that charged it. The read keeps its answers' times and durations, so the projection
  subtracts its charges that left since the last answer, and a read over the share starts
  again as its own charges make room, at the pace they were made 300 s earlier, instead of
  waiting for a look. A request is charged when it ends, so it may start one request's
  duration before the charges that make room for it leave: otherwise every window would
  last 300 s plus a page. (The window's length on the budget's clock follows from the same
  rate, so it holds on a sped-up simulator too);
- time in the window that its own charges do not explain (other integrations of the same
  user) is not known to leave: over the share, nothing is in flight and one request every
  tenth of a window looks whether it has. A reader that sent one request at a time instead
  spent a server-second per second on top of a full share until the window drained, and
  met the 1,200 s limit before it did; without the headers it still goes one at a time;
- a 429 pauses every request of the read until its `Retry-After` has passed (the doc's
  "pause all requests for that user") and halves the concurrency;
- requests through `spare()` (the change-tracking key read, which a first copy can leave
  to the next cycle) go only while no other request waits for room and the window is less
  than half the share: they use what the ranges leave, so a copy that costs several
  windows is not pushed into one more by them.

One `Budget` is shared by the threads of a cycle's parallel reads (contacts, then
accounts: the second knows what the first spent); each request passes `request()`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

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
    """The read ended (`SpareGate.close`): a spare request still waiting is not sent."""


# The most the learned rate may exceed the window's mean cost per request over the mean
# duration, which cheap requests (metadata, a first page) pull below a page's: a rise in the
# window beyond that is taken as spent by others, not as this read's cost.
MAX_RATE_OVER_MEAN = 1.25


@dataclass
class _Window:
    """What the latest answer's headers said of the user's window, and this read's share."""

    used_s: float | None = None  # execution time in use, server-seconds
    cost_s: float | None = None  # what one request costs: used time / requests in the window
    seen_at: float = 0.0  # when that answer came, on the budget's clock
    duration_s: float | None = None  # how long a request of this read takes (moving mean)
    rate: float | None = None  # server-seconds charged per second a request of ours takes
    # This read's requests still in the window at seen_at: (answered at, duration).
    answered: deque[tuple[float, float]] = field(default_factory=deque)
    # Learning the rate: the first answer's time and window, and the durations since.
    first: tuple[float, float] | None = None
    learned_s: float = 0.0

    def length(self) -> float | None:
        """The 300 s window on the budget's clock: about 300 s on a real org, 300/N on a
        simulator whose clock runs N times real time. A request's duration includes the
        network, so it errs long: a late look, never an early one."""
        return None if not self.rate else WINDOW_S / self.rate

    def learn(self, duration_s: float, now: float) -> None:
        """Keep the request just answered, forget those that had left the window by now
        (the headers no longer count them), and learn what a second of ours costs."""
        if not self.cost_s or self.used_s is None:
            return
        self.answered.append((now, duration_s))
        if self.first is None:
            self.first = (now, self.used_s)
        elif self.rate is None or now - self.first[0] < WINDOW_S / self.rate / 2:
            self._learn_rate(duration_s)
        if self.rate is None:
            self.rate = self.cost_s / max(1e-9, self._mean_duration())
        while self.answered and self.answered[0][0] <= now - WINDOW_S / self.rate:
            self.answered.popleft()

    def _learn_rate(self, duration_s: float) -> None:
        """The rate from the read's first half window, when none of its charges can have
        left: what the window rose by since the first answer, over the durations of the
        requests answered since. Then it stays: a clock's speed does not change, and later
        windows mix charges arriving with charges leaving. Capped by the mean cost per
        request over the mean duration, so others spending at the same time do not shorten
        the window it expects."""
        assert self.first is not None and self.used_s is not None and self.cost_s
        self.learned_s += duration_s
        mean_rate = self.cost_s / max(1e-9, self._mean_duration())
        rise = self.used_s - self.first[1]
        self.rate = min(rise / self.learned_s, MAX_RATE_OVER_MEAN * mean_rate)
        if self.rate <= 0:
            self.rate = mean_rate

    def _mean_duration(self) -> float:
        return sum(d for _, d in self.answered) / max(1, len(self.answered))

    def request_s(self) -> float:
        """What a request of this read costs: its duration at this read's rate, the larger
        of the recent and the window's mean duration (the window's mean cost per request
        if not known yet)."""
        assert self.cost_s is not None
        if self.rate and self.duration_s and self.answered:
            return max(self.duration_s, self._mean_duration()) * self.rate
        return self.cost_s

    def charges(self) -> Iterator[tuple[float, float]]:
        """(answered at, server-seconds charged) of this read's requests in the window."""
        rate = self.rate or 0.0
        return ((at, d * rate) for at, d in self.answered)

    def lead_s(self) -> float:
        """How long a request of this read takes: it is charged when it ends, so it may
        start that much before the charges that make room for it leave the window. The
        shorter of the recent and the window's mean duration: early by no more than that."""
        if not self.duration_s or not self.answered:
            return 0.0
        return min(self.duration_s, self._mean_duration())

    def used_now(self, now: float) -> float:
        """The window's used time at `now` (or later): the last answer's, less this read's
        charges that have left the window since."""
        assert self.used_s is not None
        length = self.length()
        if length is None:
            return self.used_s
        left = sum(cost for at, cost in self.charges() if at <= now - length)
        return max(0.0, self.used_s - left)

    def until_freed(self, short_s: float, now: float) -> float:
        """How long until this read's charges leaving the window free `short_s` seconds
        (infinite if they never will: time spent by others, or no estimate)."""
        length = self.length()
        if length is None:
            return float("inf")
        freed = 0.0
        for at, cost in self.charges():
            if at <= now - length:
                continue  # left already: used_now does not count it
            freed += cost
            if freed >= short_s:
                return max(0.0, at + length - now)
        return float("inf")

    def unexplained_s(self) -> float:
        """Time in the window at the last answer that this read's charges do not explain."""
        assert self.used_s is not None
        return self.used_s - sum(cost for _, cost in self.charges())


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

    def spare(self) -> SpareGate:
        """A gate into this budget for requests that may wait: they go only while no
        other request waits for room, until the gate is closed."""
        return SpareGate(self)

    @property
    def allowed(self) -> int:
        with self._cond:
            return self._allowed

    @contextlib.contextmanager
    def request(
        self, spare: SpareGate | None = None
    ) -> Iterator[Callable[[int, Mapping[str, str]], None]]:
        """Hold a slot for one request; call the yielded function with the answer's status
        and headers (a request that raised without an answer just frees its slot)."""
        started = self._enter(spare)
        answered: list[tuple[int, Mapping[str, str]]] = []
        try:
            yield lambda status, headers: answered.append((status, headers))
        finally:
            self._leave(started, *(answered[-1] if answered else (0, {})))

    def _enter(self, spare: SpareGate | None = None) -> float:
        with self._cond:
            waiting = False
            while True:
                if spare is not None and spare.closed:
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
                if spare is not None and (self._waiting or self._half_full(now)):
                    wait = max(wait, 0.5)
                if wait <= 0:
                    break
                if spare is None and not waiting:
                    waiting, self._waiting = True, self._waiting + 1
                self._cond.wait(min(wait, 0.5))
            if waiting:
                self._waiting -= 1
            self._in_flight += 1
            self.stats.requests += 1
            self.stats.peak_in_flight = max(self.stats.peak_in_flight, self._in_flight)
            return now

    def _half_full(self, now: float) -> bool:
        """The window, with the requests in flight charged, holds half the share or more:
        a spare request would take budget the others will want soon."""
        w = self._window
        if w.used_s is None or w.cost_s is None:
            return False
        projected = w.used_now(now) + self._in_flight * w.request_s()
        return projected >= self._share_s() / 2

    def _wait_for_room(self, now: float) -> float:
        """0 if one more request may start now, else how long to wait before looking again."""
        w = self._window
        if w.used_s is None or w.cost_s is None or self._over_share:
            # No cost estimate (or the request budget is the tight one): over the share,
            # one request at a time, whose answer says when the window has room again.
            room = 1 if self._over_share else self._allowed
            return 0.0 if self._in_flight < room else 0.5
        # When a request starting now ends and is charged: the window then, with those in
        # flight and it charged, must stay within the share.
        cost_s, charged_at = w.request_s(), now + w.lead_s()
        short_s = w.used_now(charged_at) + (self._in_flight + 1) * cost_s - self._share_s()
        if short_s <= 0:
            return 0.0 if self._in_flight < self._allowed else 0.5
        # Over the share: wait for this read's own charges to leave the window, or for the
        # answers of those in flight, whichever comes first.
        wait = w.until_freed(short_s, charged_at)
        if self._in_flight:
            return min(wait, 0.5)
        if wait == float("inf") or w.unexplained_s() >= cost_s:
            # Time others spent may leave sooner: one request a tenth of a window after
            # the last answer looks whether it has.
            length = w.length()
            wait = min(wait, 0.0 if length is None else w.seen_at + length / 10 - now)
        return wait

    def _share_s(self) -> float:
        return self.share.share * self.share.execution_limit_s

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
        w.learn(duration_s, now)


class SpareGate:
    """`Budget.spare()`: the budget's gate for requests that go only when nothing else
    waits (the key read of a first copy). Closing it, when the ranges are done, releases a
    request waiting for room at once: it can wait minutes for the window to drain, and its
    thread must not hold the read; the budget itself serves the next entity's read."""

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.closed = False

    def request(self) -> contextlib.AbstractContextManager:
        return self.budget.request(spare=self)

    def close(self) -> None:
        with self.budget._cond:
            self.closed = True
            self.budget._cond.notify_all()


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
