"""A share of the user's service-protection budget, for reads that send requests in parallel.

Dataverse limits each user, per 300-second sliding window, to 6,000 requests, 1,200 s of
combined execution time and 52 concurrent requests (dataverse-webapi.md section 7.1). Other
integrations often run as the same user, so a parallel read keeps the user's total below a
share of each limit (80% by default) instead of racing to the 429s:

- at most `share * 52` requests in flight, and fewer while the window is full;
- the concurrency it allows grows by one per answered request while the user's window (the
  `x-ms-ratelimit-*-remaining` headers Dataverse sends with most answers, section 2) is
  below the share, and shrinks by one per answer above it. Microsoft calls those headers a
  debugging aid, so without them only 429s steer it; over the share, requests go one at a
  time (a sequential reader's pace) until an answer shows room again;
- a 429 pauses every request of the read until its `Retry-After` has passed (the doc's
  "pause all requests for that user") and halves the concurrency.

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

    @property
    def allowed(self) -> int:
        with self._cond:
            return self._allowed

    @contextlib.contextmanager
    def request(self) -> Iterator[Callable[[int, Mapping[str, str]], None]]:
        """Hold a slot for one request; call the yielded function with the answer's status
        and headers (a request that raised without an answer just frees its slot)."""
        self._enter()
        answered: list[tuple[int, Mapping[str, str]]] = []
        try:
            yield lambda status, headers: answered.append((status, headers))
        finally:
            self._leave(*(answered[-1] if answered else (0, {})))

    def _enter(self) -> None:
        with self._cond:
            while True:
                now = self._clock()
                if now < self._paused_until:
                    wait = self._paused_until - now
                    self.stats.paused_s += wait
                    self._cond.wait(wait)
                    continue
                # Over the share, one request at a time still goes: its answer says when
                # the window has room again.
                room = 1 if self._over_share else self._allowed
                if self._in_flight < room:
                    break
                self._cond.wait(0.5)
            self._in_flight += 1
            self.stats.requests += 1
            self.stats.peak_in_flight = max(self.stats.peak_in_flight, self._in_flight)

    def _leave(self, status: int, headers: Mapping[str, str]) -> None:
        with self._cond:
            self._in_flight -= 1
            if status == 429:
                self._throttled(headers)
            elif status:
                self._steer(headers)
            self._cond.notify_all()

    def _throttled(self, headers: Mapping[str, str]) -> None:
        self.stats.throttled += 1
        wait = _seconds(headers.get("Retry-After"))
        if wait is None:
            wait = 1.0  # the transport backs off on its own; hold the others a moment too
        self._paused_until = max(self._paused_until, self._clock() + wait)
        self._allowed = max(1, self._allowed // 2)

    def _steer(self, headers: Mapping[str, str]) -> None:
        used = _window_used(headers, self.share)
        if used is None:  # no headers: grow until a 429 says otherwise
            self._allowed = min(self.share.ceiling, self._allowed + 1)
            return
        self.stats.window_used = used
        self._over_share = used >= self.share.share
        if self._over_share:
            self._allowed = max(1, self._allowed - 1)
        else:
            self._allowed = min(self.share.ceiling, self._allowed + 1)


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
