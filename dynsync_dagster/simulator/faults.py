"""Fault injection: make chosen requests fail the ways the real service and network do."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

TOKEN_KINDS = frozenset({"token_429", "token_503", "token_invalid_client"})
API_KINDS = frozenset({"429", "500", "502", "503", "504", "401", "drop", "malformed"})


@dataclass
class Fault:
    kind: str
    times: int | None
    path_contains: str | None
    after: int
    retry_after: float
    skipped: int = 0
    hits: int = 0

    @property
    def spent(self) -> bool:
        return self.times is not None and self.hits >= self.times


class FaultInjector:
    """Thread-safe list of armed faults; the first armed match wins."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def inject(
        self,
        kind: str,
        times: int | None = 1,
        path_contains: str | None = None,
        after: int = 0,
        retry_after: float = 1.0,
    ) -> None:
        """Arm a fault: skip the first `after` matching requests, then hit `times` of them
        (None: until cleared)."""
        kind = str(kind)
        if kind not in TOKEN_KINDS | API_KINDS:
            known = ", ".join(sorted(TOKEN_KINDS | API_KINDS))
            raise ValueError(f"unknown fault kind {kind!r}; known kinds: {known}")
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        with self._lock:
            self._faults.append(Fault(kind, times, path_contains, int(after), float(retry_after)))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def active(self) -> list[dict]:
        with self._lock:
            return [asdict(f) for f in self._faults if not f.spent]

    def take(self, token_endpoint: bool, path: str) -> Fault | None:
        """The fault this request should suffer, if any (and count it)."""
        kinds = TOKEN_KINDS if token_endpoint else API_KINDS
        with self._lock:
            for fault in self._faults:
                if fault.spent or fault.kind not in kinds:
                    continue
                if fault.path_contains is not None and fault.path_contains not in path:
                    continue
                if fault.skipped < fault.after:
                    fault.skipped += 1
                    continue
                fault.hits += 1
                return fault
            self._faults = [f for f in self._faults if not f.spent]
        return None
