"""The budget gate of parallel reads: its concurrency follows the user's window and 429s."""

from __future__ import annotations

import threading
import time

import pytest

from dynsync_dagster.dynamics.budget import REQUESTS_LEFT, TIME_LEFT, Budget, BudgetShare


def window(used: float, limit_s: float = 1200.0) -> dict[str, str]:
    """Headers of an answer when `used` of the user's execution time is spent."""
    return {TIME_LEFT: f"{(1 - used) * limit_s * 1000:,.2f}", REQUESTS_LEFT: "5990"}


def answer(budget: Budget, status: int, headers: dict[str, str]) -> None:
    with budget.request() as answered:
        answered(status, headers)


def test_the_share_caps_concurrency_at_a_share_of_52() -> None:
    assert BudgetShare().ceiling == 41
    assert BudgetShare(share=0.5).ceiling == 26
    assert BudgetShare(max_concurrent=3).ceiling == 3
    with pytest.raises(ValueError, match="share"):
        BudgetShare(share=1.5)


def test_concurrency_grows_below_the_share_and_shrinks_above_it() -> None:
    budget = Budget(BudgetShare(start_concurrent=2, max_concurrent=5))
    for _ in range(10):
        answer(budget, 200, window(0.1))
    assert budget.allowed == 5  # grew to the ceiling, not past it
    answer(budget, 200, window(0.85))
    assert budget.allowed == 4
    assert budget.stats.window_used == pytest.approx(0.85)


def test_over_the_share_one_request_at_a_time() -> None:
    budget = Budget(BudgetShare(max_concurrent=8))
    answer(budget, 200, window(0.9))
    entered = threading.Event()
    with budget.request() as answered:
        second = threading.Thread(target=lambda: (answer(budget, 200, window(0.5)), entered.set()))
        second.start()
        assert not entered.wait(0.3)  # the first still holds the only slot
        answered(200, window(0.9))
    second.join(5)
    assert entered.is_set()
    assert budget.stats.peak_in_flight == 1


def test_a_429_pauses_every_request_for_its_retry_after() -> None:
    budget = Budget(BudgetShare(start_concurrent=8))
    answer(budget, 429, {"Retry-After": "0.5"})
    assert budget.allowed == 4  # halved
    started = time.monotonic()
    answer(budget, 200, window(0.1))  # any thread's next request waits the pause out
    assert time.monotonic() - started >= 0.45
    assert budget.stats.throttled == 1


def test_a_request_without_an_answer_frees_its_slot() -> None:
    budget = Budget(BudgetShare(max_concurrent=1))
    with pytest.raises(ConnectionError), budget.request():
        raise ConnectionError("dropped")
    answer(budget, 200, {})  # would block forever if the slot were still taken
    assert budget.stats.requests == 2
