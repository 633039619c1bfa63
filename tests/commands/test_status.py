"""`dynsync status` (Marketo's Sync Status): before the first cycle, during a backlog in
Dynamics (also past $count's 5,000), after a failed cycle. Real simulator, real cycles."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dynsync_dagster.commands.cli import main
from dynsync_dagster.dynamics.errors import DynamicsError
from dynsync_dagster.store.connection import writer_lock
from dynsync_dagster.store.sync_status import read_store_status
from dynsync_dagster.sync.cycle import CycleOptions, run_cycle
from tests.support import REPO, Harness, fast_client, pick_sized


@pytest.fixture
def status_env(harness: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Harness:
    for key, value in harness.sim.env(flow="client_credentials").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DYNSYNC_DUCKDB_PATH", str(harness.db))
    monkeypatch.setenv("DYNSYNC_CONFIG", str(REPO / "dynsync.yaml"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    return harness


def _status(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """`dynsync status` as {label: text}, one per line."""
    assert main(["status"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.strip().splitlines()
    assert lines[0].startswith("Sync Status of ")
    return dict(line.strip().split(": ", 1) for line in lines[1:])


def test_before_the_first_cycle_status_says_what_to_run(
    status_env: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    requests_before = len(status_env.sim.requests)
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert "no cycle has committed yet: run `dynsync sync`" in out
    assert "every_five_minutes has never ticked on this Dagster instance" in out
    assert len(status_env.sim.requests) == requests_before  # Dynamics is not asked
    assert not status_env.db.exists()  # and no store is created by looking


def test_a_backlog_in_dynamics_is_counted_with_its_oldest_change(
    status_env: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    harness, org = status_env, status_env.sim.org
    harness.cycle()
    shown = _status(capsys)
    assert re.search(
        r"\(\d+ s ago\), success, accounts full, contacts full \(run ",
        shown["last committed cycle"],
    )
    assert shown["waiting in Dynamics"].startswith(
        "accounts 0, contacts 0 modified after the newest change stored ("
    )
    assert shown["synced in the last hour"].startswith(
        f"{len(org.account_ids()) + len(org.contact_ids())} record(s)"
    )
    assert re.fullmatch(r"accounts \d+ s old, contacts \d+ s old", shown["delta tokens"])

    org.advance_clock(5)  # the changes come after the cycle's read began, to the second
    account = pick_sized(harness.sim, 8)
    org.update_account(account, name="Waiting 1")
    first = org.get_account(account)["modifiedon"]
    org.advance_clock(5)
    for other in org.account_ids()[:2]:
        org.update_account(other, name="Waiting 2")
    for contact in org.contact_ids()[:4]:
        org.update_contact(contact, jobtitle="Waiting")
    requests_before = len(harness.sim.requests)
    waiting = _status(capsys)["waiting in Dynamics"]
    assert waiting.startswith("accounts 3, contacts 4 modified after the newest change stored (")
    assert waiting.endswith(f"oldest pending modifiedon {first:%Y-%m-%d %H:%M:%S} UTC")
    # Cheap: one capped request per entity (plus the sign-in).
    asked = [r.path for r in list(harness.sim.requests)[requests_before:] if "/api/" in r.path]
    assert len(asked) == 2

    harness.cycle()
    after = _status(capsys)
    assert after["waiting in Dynamics"].startswith("accounts 0, contacts 0")
    assert "accounts delta, contacts delta" in after["last committed cycle"]


def test_more_than_5000_pending_reads_5000_plus(
    status_env: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    harness, org = status_env, status_env.sim.org
    harness.cycle()
    org.advance_clock(5)
    parent = pick_sized(harness.sim, 12)
    for i in range(5001):
        org.create_contact(parent, lastname=f"Backlog {i}")
    waiting = _status(capsys)["waiting in Dynamics"]
    assert waiting.startswith(
        "accounts 0, contacts 5,000+ modified after the newest change stored ("
    )


def test_after_a_failed_cycle_status_shows_the_failure_and_the_last_good_one(
    status_env: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    harness = status_env
    harness.cycle()
    harness.sim.faults.inject("malformed", times=None, path_contains="/contacts")
    with pytest.raises(DynamicsError), fast_client(harness.conn, attempts=1) as client:
        run_cycle(harness.conn, harness.settings, harness.db, CycleOptions(), client=client)
    harness.sim.faults.clear()
    shown = _status(capsys)
    assert "success, accounts full, contacts full" in shown["last committed cycle"]
    failed = next(k for k in shown if k.startswith("last cycle failed at"))
    assert (
        shown[failed].startswith("gave up on https://") and "malformed JSON body" in shown[failed]
    )
    assert "Traceback" not in shown[failed] and "Error" not in shown[failed]
    assert shown["waiting in Dynamics"].startswith("accounts 0, contacts 0")


def test_status_without_dynamics_still_shows_the_store(
    status_env: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    status_env.cycle()
    monkeypatch.delenv("DYNAMICS_CLIENT_SECRET")
    shown = _status(capsys)
    assert shown["waiting in Dynamics"].startswith(
        "unknown (missing environment variable(s) DYNAMICS_CLIENT_SECRET"
    )
    assert "success" in shown["last committed cycle"]


def test_status_reads_the_cycle_that_changed_nothing_and_never_waits_long(
    status_env: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cycle that changed nothing is not republished (publish.py): status still sees it,
    from the working store. While a writer holds that, it answers from the published file."""
    harness = status_env
    harness.cycle()
    harness.cycle()  # nothing changed: committed to the working store only
    assert "accounts delta, contacts delta" in _status(capsys)["last committed cycle"]
    with writer_lock(harness.db, 0):
        status = read_store_status(harness.db, wait_s=0.2)
    assert status is not None and status.last_committed is not None
    assert status.last_committed.account_mode == "full"  # the published file's last cycle
