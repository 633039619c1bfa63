"""Dataverse service-protection limits, per principal, over a sliding 300-second window.

The three documented limits (dataverse-webapi.md section 7.1): 6,000 requests, 1,200 s of
combined execution time and 52 concurrent requests per user. The request and time limits
trip once exceeded; the concurrency limit trips at once. A throttled request still counts as
a request, so a client that keeps sending while throttled lengthens its own Retry-After, as
the docs warn.

Time is the simulator's `SimClock` (window and budget in simulated seconds, Retry-After in
real ones). In the plain mode a request is charged the time it really took; in the realistic
mode (`server_time` set) it is held until its modelled server time has passed and charged
that, so the budget runs out as on a real org.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

from .clock import SimClock
from .errors import ODataError
from .realism import ServerTime
from .responses import Response

WINDOW_S = 300.0
REQUESTS_CODE = "0x80072322"
EXECUTION_TIME_CODE = "0x80072321"
CONCURRENCY_CODE = "0x80072326"


@dataclass
class _Usage:
    requests: deque[float] = field(default_factory=deque)  # arrival times, throttled too
    durations: deque[tuple[float, float]] = field(default_factory=deque)  # (end time, ms)
    execution_ms: float = 0.0
    concurrent: int = 0
    peak_concurrent: int = 0


class ServiceProtection:
    """The three documented limits: request count, combined execution time, concurrency."""

    def __init__(
        self,
        request_limit: int = 6000,
        concurrency_limit: int = 52,
        execution_limit_ms: float = 1_200_000,
        window_s: float = WINDOW_S,
        clock: SimClock | None = None,
        server_time: ServerTime | None = None,
    ) -> None:
        self.request_limit = request_limit
        self.concurrency_limit = concurrency_limit
        self.execution_limit_ms = execution_limit_ms
        self.window_s = window_s
        self.clock = clock or SimClock()
        self.server_time = server_time  # None: the plain mode
        self._lock = threading.Lock()
        self._usage: dict[str, _Usage] = {}

    def _expire(self, usage: _Usage, now: float) -> None:
        while usage.requests and usage.requests[0] <= now - self.window_s:
            usage.requests.popleft()
        while usage.durations and usage.durations[0][0] <= now - self.window_s:
            usage.execution_ms -= usage.durations.popleft()[1]

    def enter(self, principal: str) -> float:
        """Admit a request or raise the 429 the real service would send; returns the real
        start time that `exit` takes."""
        started = self.clock.real_now()
        with self._lock:
            now = self.clock.now()  # under the lock, so the deques stay in time order
            usage = self._usage.setdefault(principal, _Usage())
            self._expire(usage, now)
            usage.requests.append(now)
            if usage.concurrent >= self.concurrency_limit:
                raise self._concurrency_error()
            if len(usage.requests) > self.request_limit:
                raise self._requests_error(usage, now)
            if usage.execution_ms > self.execution_limit_ms:
                raise self._execution_error(usage, now)
            usage.concurrent += 1
            usage.peak_concurrent = max(usage.peak_concurrent, usage.concurrent)
        return started

    def exit(self, principal: str, started: float, response: Response | None = None) -> None:
        """End an admitted request and charge its execution time. The realistic mode's
        hold sleeps outside every lock, so concurrent requests are served concurrently."""
        charged_s = 0.0
        try:
            if self.server_time is None:
                charged_s = self.clock.simulated(self.clock.real_now() - started)
            else:
                charged_s = self.server_time.of(response)
                self.clock.hold(started, charged_s)
        finally:
            with self._lock:
                usage = self._usage[principal]
                usage.concurrent -= 1
                usage.durations.append((self.clock.now(), charged_s * 1000))
                usage.execution_ms += charged_s * 1000

    def headers(self, principal: str) -> dict[str, str]:
        with self._lock:
            usage = self._usage.get(principal) or _Usage()
            self._expire(usage, self.clock.now())
            time_left = max(0.0, self.execution_limit_ms - usage.execution_ms)
            return {
                "x-ms-ratelimit-burst-remaining-xrm-requests": str(
                    max(0, self.request_limit - len(usage.requests))
                ),
                "x-ms-ratelimit-time-remaining-xrm-requests": f"{time_left:,.2f}",
            }

    def usage(self, principal: str) -> dict[str, float]:
        """What this principal has used in the current window (for tests and benchmarks)."""
        with self._lock:
            usage = self._usage.get(principal) or _Usage()
            self._expire(usage, self.clock.now())
            return {
                "requests": len(usage.requests),
                "execution_s": usage.execution_ms / 1000,
                "concurrent": usage.concurrent,
                "peak_concurrent": usage.peak_concurrent,
            }

    # ---- the three 429s ----------------------------------------------------------------

    def _concurrency_error(self) -> ODataError:
        # A slot frees when a request in flight ends: soon, so the shortest wait HTTP allows.
        return self._throttled(
            CONCURRENCY_CODE,
            f"Number of concurrent requests exceeded the limit of {self.concurrency_limit}.",
            0.0,
        )

    def _requests_error(self, usage: _Usage, now: float) -> ODataError:
        # The next request is admitted once all but request_limit - 1 arrivals have left.
        frees_at = usage.requests[len(usage.requests) - self.request_limit] + self.window_s
        return self._throttled(
            REQUESTS_CODE,
            f"Number of requests exceeded the limit of {self.request_limit} over time "
            f"window of {int(self.window_s)} seconds.",
            frees_at - now,
        )

    def _execution_error(self, usage: _Usage, now: float) -> ODataError:
        # The budget frees once enough of the oldest charges have left the window.
        left, frees_at = usage.execution_ms, now
        for end, ms in usage.durations:
            left -= ms
            if left <= self.execution_limit_ms:
                frees_at = end + self.window_s
                break
        return self._throttled(
            EXECUTION_TIME_CODE,
            "Combined execution time of incoming requests exceeded limit of "
            f"{int(self.execution_limit_ms):,} milliseconds over time window of "
            f"{int(self.window_s)} seconds. Decrease number of concurrent requests or "
            "reduce the duration of requests and try again later.",
            frees_at - now,
        )

    def _throttled(self, code: str, message: str, wait_s: float) -> ODataError:
        retry_after = self.clock.retry_after(max(0.0, wait_s))
        return ODataError(429, code, message, {"Retry-After": str(retry_after)})
