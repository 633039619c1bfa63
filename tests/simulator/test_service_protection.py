"""The realistic mode's service protection over real HTTPS, on a sped-up clock.

Each request costs modelled server time by the rows and columns it returns; per user per
300 s window there are three limits, each answered with its documented 429 code and a
Retry-After (real seconds) after which a retry succeeds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from dynsync_dagster.simulator import DatasetSpec, Simulator
from dynsync_dagster.simulator.__main__ import main
from dynsync_dagster.simulator.process import SimulatorProcess
from dynsync_dagster.simulator.realism import ServerTime

from .conftest import API, Api

SPEC = DatasetSpec(accounts=10, contacts=300, seed=5)
ALL_CONTACTS = "contacts"  # every column of all 300 contacts: about 0.1 server-seconds
TIME_LEFT = "x-ms-ratelimit-time-remaining-xrm-requests"


@contextmanager
def realistic(tmp_path: Path, **options: float) -> Iterator[Simulator]:
    with Simulator(SPEC, state_dir=tmp_path, realistic_limits=True, **options) as sim:
        yield sim


def time_left_ms(response: requests.Response) -> float:
    return float(response.headers[TIME_LEFT].replace(",", ""))


def shape(page: dict) -> tuple[int, int]:
    """(rows, columns) as a client sees them: the properties that are not annotations."""
    rows = page["value"]
    return len(rows), sum(1 for key in rows[0] if "@" not in key)


def throttled_then_retried(api: Api, path: str, code: str, tries: int = 40) -> int:
    """Send until a 429 with `code`; wait its Retry-After, retry once; the retry's status."""
    for _ in range(tries):
        response = api.get(path)
        if response.status_code == 429:
            break
        assert response.status_code == 200, response.text
    else:
        raise AssertionError(f"no 429 in {tries} requests")
    assert response.json()["error"]["code"] == code
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit() and int(retry_after) >= 1  # whole real seconds
    time.sleep(int(retry_after))
    return api.get(path).status_code


def test_execution_time_scales_with_rows_and_columns(tmp_path: Path) -> None:
    model = ServerTime()
    with realistic(tmp_path, clock_speed=10) as sim:
        api = Api(sim)
        before = time_left_ms(api.get("WhoAmI"))
        charges = {}
        for name, query in {
            "10 rows, 2 fields": "contacts?$select=firstname,lastname&$top=10",
            "100 rows, 2 fields": "contacts?$select=firstname,lastname&$top=100",
            "100 rows, 8 fields": "contacts?$select=firstname,lastname,emailaddress1,"
            "telephone1,jobtitle,birthdate,modifiedon,createdon&$top=100",
        }.items():
            started = time.monotonic()
            response = api.get(query)
            held_s = time.monotonic() - started
            assert response.status_code == 200, response.text
            rows, columns = shape(response.json())
            charged_s = (before - time_left_ms(response)) / 1000
            before = time_left_ms(response)
            assert abs(charged_s - model.cost(rows, columns)) < 1e-4, name
            # 10x clock: the response is held a tenth of its server time, no less.
            assert held_s >= model.cost(rows, columns) / 10
            charges[name] = charged_s
    assert charges["10 rows, 2 fields"] < charges["100 rows, 2 fields"]
    assert charges["100 rows, 2 fields"] < charges["100 rows, 8 fields"]
    assert 1.0 <= model.cost(5000, 10) <= 1.5  # the doc's "a 5,000-row page, a second or more"


def test_concurrency_limit_is_never_exceeded_and_requests_overlap(tmp_path: Path) -> None:
    threads_n, limit = 12, 3
    with realistic(tmp_path, concurrency_limit=limit) as sim:  # real-time clock: ~0.1 s holds
        apis = [Api(sim) for _ in range(threads_n)]
        start = threading.Barrier(threads_n)
        results: list[tuple[int, list[str]]] = []
        lock = threading.Lock()

        def client(api: Api) -> None:
            codes: list[str] = []
            start.wait()
            for _ in range(20):
                response = api.get(ALL_CONTACTS)
                if response.status_code != 429:
                    break
                codes.append(response.json()["error"]["code"])
                assert int(response.headers["Retry-After"]) >= 1
                time.sleep(int(response.headers["Retry-After"]))
            with lock:
                results.append((response.status_code, codes))

        workers = [threading.Thread(target=client, args=(a,)) for a in apis]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=60)
        usage = sim.limits.usage(sim.org.app_user_id)
    assert sorted(status for status, _ in results) == [200] * threads_n
    throttled = [code for _, codes in results for code in codes]
    assert throttled and set(throttled) == {"0x80072326"}
    # Never more than the limit at once, and the limit reached: requests are held in parallel.
    assert usage["peak_concurrent"] == limit
    assert usage["concurrent"] == 0


def test_request_limit_answers_0x80072322_until_the_window_frees(tmp_path: Path) -> None:
    with realistic(tmp_path, request_limit=5, clock_speed=100) as sim:  # window: 3 real s
        api = Api(sim)
        assert [api.get("WhoAmI").status_code for _ in range(5)] == [200] * 5
        throttled = api.get("WhoAmI")
        assert throttled.status_code == 429
        assert throttled.json()["error"]["message"] == (
            "Number of requests exceeded the limit of 5 over time window of 300 seconds."
        )
        assert 1 <= int(throttled.headers["Retry-After"]) <= 3  # 300 simulated s at 100x
        assert throttled_then_retried(api, "WhoAmI", "0x80072322") == 200


def test_execution_time_limit_answers_0x80072321_until_the_window_frees(tmp_path: Path) -> None:
    # About 0.1 server-seconds a request: the sixth or so passes half a second.
    with realistic(tmp_path, execution_limit_s=0.5, clock_speed=100) as sim:
        api = Api(sim)
        assert throttled_then_retried(api, ALL_CONTACTS, "0x80072321") == 200
        assert sim.limits.usage(sim.org.app_user_id)["execution_s"] <= 0.5 + 0.2


def test_plain_mode_charges_real_time_and_holds_nothing(tmp_path: Path) -> None:
    with Simulator(SPEC, state_dir=tmp_path) as sim:
        assert sim.limits.server_time is None and sim.limits.clock.speed == 1
        api = Api(sim)
        before = time_left_ms(api.get("WhoAmI"))
        started = time.monotonic()
        response = api.get(ALL_CONTACTS)
        elapsed_s = time.monotonic() - started
        assert response.status_code == 200
        charged_s = (before - time_left_ms(response)) / 1000
        # The time it really took on the server, within the client's round trip.
        assert 0 <= charged_s <= elapsed_s + 1e-5


def test_cli_flags_reach_the_simulator(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    assert "--realistic-limits" in text and "--clock-speed N" in text
    with pytest.raises(SystemExit):
        main(["--clock-speed", "0"])
    assert "must be a number above 0" in capsys.readouterr().err
    flags = ["--accounts", "2", "--contacts", "30", "--realistic-limits", "--clock-speed", "50"]
    with SimulatorProcess(tmp_path / "sim", flags) as proc:
        session = requests.Session()
        session.trust_env = False
        session.verify = proc.env["DYNAMICS_CA_BUNDLE"]
        env = proc.env
        token = session.post(
            f"{env['DYNAMICS_AUTHORITY_HOST']}/{env['DYNAMICS_TENANT_ID']}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": env["DYNAMICS_CLIENT_ID"],
                "client_secret": env["DYNAMICS_CLIENT_SECRET"],
                "scope": f"{env['DYNAMICS_URL']}/.default",
            },
        ).json()["access_token"]
        response = session.get(
            f"{env['DYNAMICS_URL']}{API}contacts?$select=fullname",
            headers={"Authorization": f"Bearer {token}"},
        )
    assert response.status_code == 200
    rows, columns = shape(response.json())
    assert (rows, columns) == (30, 2)
    charged_ms = 1_200_000 - time_left_ms(response)
    assert abs(charged_ms - ServerTime().cost(rows, columns) * 1000) < 0.1


def test_server_time_scale_multiplies_the_charge_and_the_hold(tmp_path: Path, capsys) -> None:
    query = "contacts?$select=firstname,lastname&$top=100"
    charged, held = {}, {}
    for scale in (1.0, 8.0):
        with realistic(tmp_path / str(scale), clock_speed=10, server_time_scale=scale) as sim:
            api = Api(sim)
            before = time_left_ms(api.get("WhoAmI"))
            started = time.monotonic()
            response = api.get(query)
            held[scale] = time.monotonic() - started
            assert response.status_code == 200, response.text
            charged[scale] = (before - time_left_ms(response)) / 1000
            expected = ServerTime(scale=scale).cost(*shape(response.json()))
            assert abs(charged[scale] - expected) < 1e-4
            assert held[scale] >= expected / 10  # held its scaled server time at 10x
    assert charged[8.0] == pytest.approx(8 * charged[1.0], abs=1e-4)
    assert held[8.0] > held[1.0]
    # The knob belongs to the realistic mode only: the plain mode charges real time.
    with pytest.raises(ValueError, match="realistic_limits"):
        Simulator(SPEC, state_dir=tmp_path / "plain", server_time_scale=2)
    with pytest.raises(ValueError, match="above 0"):
        ServerTime(scale=0)
    assert main(["--server-time-scale", "3"]) == 2
    assert "needs --realistic-limits" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--realistic-limits", "--server-time-scale", "-1"])
    assert "must be a number above 0" in capsys.readouterr().err
