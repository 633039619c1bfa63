"""Dataverse service-protection limits, per principal, over a sliding 300-second window."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .errors import ODataError

WINDOW_S = 300.0


@dataclass
class _Usage:
    requests: deque[float] = field(default_factory=deque)
    durations: deque[tuple[float, float]] = field(default_factory=deque)  # (end time, ms)
    execution_ms: float = 0.0
    concurrent: int = 0


class ServiceProtection:
    """The three documented limits: request count, combined execution time, concurrency."""

    def __init__(
        self,
        request_limit: int = 6000,
        concurrency_limit: int = 52,
        execution_limit_ms: float = 1_200_000,
        window_s: float = WINDOW_S,
        clock: callable = time.monotonic,  # type: ignore[valid-type]
    ) -> None:
        self.request_limit = request_limit
        self.concurrency_limit = concurrency_limit
        self.execution_limit_ms = execution_limit_ms
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._usage: dict[str, _Usage] = {}

    def _expire(self, usage: _Usage, now: float) -> None:
        while usage.requests and usage.requests[0] <= now - self.window_s:
            usage.requests.popleft()
        while usage.durations and usage.durations[0][0] <= now - self.window_s:
            usage.execution_ms -= usage.durations.popleft()[1]

    def enter(self, principal: str) -> None:
        """Admit a request or raise the 429 the real service would send."""
        now = self._clock()
        with self._lock:
            usage = self._usage.setdefault(principal, _Usage())
            self._expire(usage, now)
            if usage.concurrent >= self.concurrency_limit:
                raise _throttled(
                    "0x80072326",
                    "Number of concurrent requests exceeded the limit of "
                    f"{self.concurrency_limit}.",
                    1,
                )
            if len(usage.requests) >= self.request_limit:
                wait = usage.requests[0] + self.window_s - now
                raise _throttled(
                    "0x80072322",
                    f"Number of requests exceeded the limit of {self.request_limit} over time "
                    f"window of {int(self.window_s)} seconds.",
                    wait,
                )
            if usage.execution_ms >= self.execution_limit_ms:
                wait = usage.durations[0][0] + self.window_s - now if usage.durations else 1
                raise _throttled(
                    "0x80072321",
                    "Combined execution time of incoming requests exceeded limit of "
                    f"{int(self.execution_limit_ms):,} milliseconds over time window of "
                    f"{int(self.window_s)} seconds. Decrease number of concurrent requests or "
                    "reduce the duration of requests and try again later.",
                    wait,
                )
            usage.requests.append(now)
            usage.concurrent += 1

    def exit(self, principal: str, elapsed_s: float) -> None:
        now = self._clock()
        with self._lock:
            usage = self._usage[principal]
            usage.concurrent -= 1
            usage.durations.append((now, elapsed_s * 1000))
            usage.execution_ms += elapsed_s * 1000

    def headers(self, principal: str) -> dict[str, str]:
        with self._lock:
            usage = self._usage.get(principal) or _Usage()
            time_left = max(0.0, self.execution_limit_ms - usage.execution_ms)
            return {
                "x-ms-ratelimit-burst-remaining-xrm-requests": str(
                    max(0, self.request_limit - len(usage.requests))
                ),
                "x-ms-ratelimit-time-remaining-xrm-requests": f"{time_left:,.2f}",
            }


def _throttled(code: str, message: str, wait_s: float) -> ODataError:
    return ODataError(429, code, message, {"Retry-After": str(max(1, math.ceil(wait_s)))})
