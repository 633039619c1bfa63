"""Simulated time for service protection: it can run faster than real time.

At `speed=20` one real second is twenty simulated ones: a request that costs the server
1.0 s holds its response for 0.05 real seconds but counts 1.0 s against the user's
execution-time budget, and the 300 s sliding window passes in 15 real seconds. So a test or
benchmark sees in seconds what a real org shows in minutes.

The trade-off: HTTP's Retry-After is whole real seconds, so a throttled client waits in steps
of `speed` simulated seconds (20 at speed 20), up to that much longer than the window needs;
and the simulator's own work (building a page takes real milliseconds) is not sped up, so
when `server time / speed` falls below it the machine, not the model, sets the pace. Pick a
speed at which a page's modelled time, divided by the speed, stays well above the real time
the simulator needs to build it. Only service protection uses this clock; access tokens,
delta tokens and `modifiedon` stay on the wall clock.
"""

from __future__ import annotations

import math
import time


class SimClock:
    """Simulated seconds since the simulator started, running `speed` times real time."""

    def __init__(self, speed: float = 1.0) -> None:
        if not (isinstance(speed, int | float) and math.isfinite(speed) and speed > 0):
            raise ValueError(
                f"clock speed must be a number above 0 (1 is real time), got {speed!r}"
            )
        self.speed = float(speed)
        self._origin = time.monotonic()

    @staticmethod
    def real_now() -> float:
        """A real monotonic reading: what `hold` measures from."""
        return time.monotonic()

    def now(self) -> float:
        return (time.monotonic() - self._origin) * self.speed

    def simulated(self, real_s: float) -> float:
        return real_s * self.speed

    def retry_after(self, simulated_s: float) -> int:
        """Real seconds a client should wait for `simulated_s` to pass, rounded up to a
        whole second (Retry-After is an integer) and at least 1."""
        return max(1, math.ceil(simulated_s / self.speed - 1e-9))

    def hold(self, real_started: float, simulated_s: float) -> None:
        """Sleep until `simulated_s` simulated seconds have passed since `real_started`;
        the real time already spent on the request counts toward it."""
        remaining = real_started + simulated_s / self.speed - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
