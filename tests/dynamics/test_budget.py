"""The budget gate of parallel reads: its concurrency follows the user's window and 429s."""

from __future__ import annotations

import threading
import time

import pytest

from dynsync_dagster.dynamics.budget import (
    REQUESTS_LEFT,
    TIME_LEFT,
    Budget,
    BudgetClosed,
    BudgetShare,
)


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


def test_concurrency_grows_below_the_share_and_stops_above_it() -> None:
    budget = Budget(BudgetShare(start_concurrent=2, max_concurrent=5))
    for _ in range(10):
        answer(budget, 200, window(0.1))
    assert budget.allowed == 5  # grew to the ceiling, not past it
    answer(budget, 200, window(0.85))
    assert budget.allowed == 5  # held: the projection of the window stops new requests
    answer(budget, 200, window(0.3))
    assert budget.stats.window_used == pytest.approx(0.3)
    assert budget.stats.peak_window_used == pytest.approx(0.85)


class Clock:
    """The budget's clock, moved by the test (waits still pass in real time)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def charged(used_s: float, requests: int) -> dict[str, str]:
    """Headers after `requests` requests in the window that were charged `used_s` in all."""
    return {TIME_LEFT: f"{(1200 - used_s) * 1000:,.2f}", REQUESTS_LEFT: str(6000 - requests)}


def enter_in_threads(budget: Budget, n: int) -> tuple[list[threading.Event], threading.Event]:
    """n threads that each enter one request and hold it until `release` is set."""
    entered = [threading.Event() for _ in range(n)]
    release = threading.Event()

    def hold(event: threading.Event) -> None:
        with budget.request() as answered:
            event.set()
            release.wait(10)
            answered(200, {})

    for event in entered:
        threading.Thread(target=hold, args=(event,), daemon=True).start()
    return entered, release


def burst(budget: Budget, clock: Clock, n: int, cost_s: float, took_s: float) -> None:
    """n requests sent at once, answered `took_s` later, each charged `cost_s`."""
    slots = [budget.request() for _ in range(n)]
    answers = [slot.__enter__() for slot in slots]
    clock.now += took_s
    for k, (slot, answered) in enumerate(zip(slots, answers, strict=True), start=1):
        answered(200, charged(k * cost_s, n))
        slot.__exit__(None, None, None)


def test_requests_in_flight_count_against_the_share() -> None:
    # 600 s of the window used by 6 requests: 100 s each. The share (80%: 960 s) leaves room
    # for three more charged when they end, so a fourth waits though 10 are allowed.
    clock = Clock()
    budget = Budget(BudgetShare(start_concurrent=10, max_concurrent=10), clock=clock)
    burst(budget, clock, 6, cost_s=100, took_s=10)
    entered, release = enter_in_threads(budget, 5)
    time.sleep(0.5)
    assert sum(e.is_set() for e in entered) == 3
    release.set()
    assert all(e.wait(5) for e in entered)


def test_over_the_share_it_starts_again_when_its_own_charges_leave() -> None:
    # Nine requests of 100 s each took 10 s: the window (300 server-s) lasts 30 s on this
    # clock. At 900 s used one more would pass the 960 s share. Every second of it is this
    # read's own, charged at 10 s, so it leaves at 40 s. A request is charged when it ends,
    # 10 s after it starts: nothing goes before 30 s, and then both waiting requests go at
    # once, without a look first.
    clock = Clock()
    budget = Budget(BudgetShare(start_concurrent=9, max_concurrent=10), clock=clock)
    burst(budget, clock, 9, cost_s=100, took_s=10)
    assert budget.stats.peak_window_used == pytest.approx(0.75)
    entered, release = enter_in_threads(budget, 2)
    clock.now = 29.9
    time.sleep(0.7)
    assert not any(e.is_set() for e in entered)  # a one-at-a-time reader would have sent
    clock.now = 30.0
    assert all(e.wait(2) for e in entered)
    release.set()
    assert budget.stats.peak_in_flight == 9


def test_time_others_spent_is_looked_at_a_tenth_of_a_window_later() -> None:
    # One request of this read, 10 s long, and an answer showing 900 s in use over ten
    # requests: 90 s a request, so 810 s were spent by others (the same user's other
    # integrations), which may leave the window at any time. At 9 server-s per second the
    # window lasts 33.3 s on this clock: a tenth of it after the answer, one request alone
    # looks.
    clock = Clock()
    budget = Budget(BudgetShare(start_concurrent=9, max_concurrent=10), clock=clock)
    with budget.request() as answered:
        clock.now = 10.0
        answered(200, charged(900, 10))
    entered, release = enter_in_threads(budget, 2)
    clock.now = 13.2
    time.sleep(0.7)
    assert not any(e.is_set() for e in entered)
    clock.now = 13.4
    time.sleep(0.8)
    assert sum(e.is_set() for e in entered) == 1  # the look: one, its answer tells the rest
    release.set()
    assert all(e.wait(5) for e in entered)
    assert budget.stats.peak_in_flight == 1


def test_charges_leaving_the_window_reopen_it() -> None:
    clock = Clock()
    budget = Budget(BudgetShare(start_concurrent=9, max_concurrent=10), clock=clock)
    burst(budget, clock, 9, cost_s=100, took_s=10)
    clock.now = 40.0  # the look: the burst has left the window, the answer says so
    with budget.request() as answered:
        clock.now = 50.0
        answered(200, charged(100, 1))
    entered, release = enter_in_threads(budget, 9)
    time.sleep(0.6)
    assert sum(e.is_set() for e in entered) == 8  # 100 s used + 8 x 100 s in flight <= 960
    release.set()


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


def test_spare_requests_go_only_when_no_other_request_waits() -> None:
    budget = Budget(BudgetShare(start_concurrent=1, max_concurrent=1))
    order: list[str] = []
    gates = {"range": budget, "key read": budget.spare()}
    release = {name: threading.Event() for name in gates}

    def send(name: str) -> None:
        with gates[name].request() as answered:
            order.append(name)
            release[name].wait(10)
            answered(200, {})

    with budget.request() as answered:  # the only slot is taken
        threads = {name: threading.Thread(target=send, args=(name,)) for name in gates}
        threads["key read"].start()
        time.sleep(0.2)  # the spare request waits for the slot first, then a range's
        threads["range"].start()
        time.sleep(0.2)
        answered(200, {})
    time.sleep(0.8)
    assert order == ["range"]  # the spare request, first in line, stood back
    release["range"].set()
    threads["range"].join(5)
    time.sleep(0.8)
    assert order == ["range", "key read"]
    release["key read"].set()
    threads["key read"].join(5)
    assert budget.stats.requests == 3


def test_spare_requests_stand_back_once_the_window_is_half_the_share() -> None:
    clock = Clock()
    budget = Budget(BudgetShare(start_concurrent=9, max_concurrent=10), clock=clock)
    burst(budget, clock, 4, cost_s=100, took_s=10)  # 400 s: below half the share (480 s)
    answer(budget.spare(), 200, charged(500, 5))  # goes; its answer shows 500 s in use
    entered, release = enter_in_threads(budget.spare(), 1)
    time.sleep(0.6)
    assert not entered[0].is_set()
    answer(budget, 200, charged(500, 6))  # an ordinary request still goes
    release.set()
    answer(budget, 200, charged(100, 7))  # charges left the window: the spare one goes
    assert entered[0].wait(5)


def test_closing_a_spare_gate_releases_its_request_and_leaves_the_budget_open() -> None:
    budget = Budget(BudgetShare(start_concurrent=1, max_concurrent=1))
    gate = budget.spare()
    failed: list[BaseException] = []

    def wait_for_room() -> None:
        try:
            answer(gate, 200, {})
        except BudgetClosed as exc:
            failed.append(exc)

    with budget.request():  # the only slot is taken
        waiter = threading.Thread(target=wait_for_room)
        waiter.start()
        time.sleep(0.2)
        gate.close()
        waiter.join(2)
        assert not waiter.is_alive() and len(failed) == 1
    answer(budget, 200, {})  # the next entity's read goes on through the same budget
    answer(budget.spare(), 200, {})
    assert budget.stats.requests == 3


def test_the_rate_is_learned_in_the_first_half_window_and_then_kept() -> None:
    # Nine requests of 10 s charged 900 s: 10 server-s per second, so the window is 30 s
    # on this clock. A later answer whose window holds 300 s over one request (the window's
    # edge cut a burst: its requests left the count, their charges not yet) must not make
    # the read expect a 10 s window and start requests into charges that have not left.
    clock = Clock()
    budget = Budget(BudgetShare(start_concurrent=9, max_concurrent=10), clock=clock)
    burst(budget, clock, 9, cost_s=100, took_s=10)
    assert budget._window.length() == pytest.approx(30)
    clock.now = 45.0
    with budget.request() as answered:
        clock.now = 55.0
        answered(200, charged(300, 1))
    assert budget._window.length() == pytest.approx(30)
