"""The `dynsync` command, run as a user runs it: a subprocess."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from dynsync_dagster.simulator import Simulator
from tests.support import REPO, clean_env, run_cli


def _run(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    return run_cli(args, env, REPO, timeout)


def _base_env(tmp_path: Path) -> dict[str, str]:
    env = clean_env(tmp_path)
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    (tmp_path / "dagster_home").mkdir()
    return env


def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    env = _base_env(tmp_path)
    result = _run(["demo", "--dir", str(tmp_path / "demo"), "--accounts", "60"], env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # Every account is stored, or kept out by the sync filter (the demo's org has it).
    stored = int(re.search(r"accounts: (\d+) ", out)[1])
    kept_out = re.search(
        r"kept out by the sync filter \(new_synctomkto = No\): (\d+) accounts", out
    )
    assert stored + int(kept_out[1]) == 60 and stored < 60, out
    assert "suppressed (account over the contact limit): 10002 rows on 1 account(s)" in out
    assert "from Dynamics sync" in out
    assert (tmp_path / "demo" / "dynsync.duckdb").exists()
    assert "uv run dynsync dev" in out and "dagster dev" not in out.replace("dynsync dev", "")
    assert result.stderr == ""  # no warnings, no Dagster log lines
    # The demo's runs stay in its own instance, out of the one the user's UI shows.
    assert _run_count(tmp_path / "dagster_home") == 0
    assert _run_count(tmp_path / "demo" / "dagster_home") == 2

    # Again in the same folder: it starts over (a new simulator), nothing of the last run left.
    again = _run(["demo", "--dir", str(tmp_path / "demo"), "--accounts", "60"], env)
    assert again.returncode == 0, again.stderr
    assert f"accounts: {stored} " in again.stdout and "from Dynamics sync" in again.stdout
    assert _run_count(tmp_path / "demo" / "dagster_home") == 2


def _run_count(home: Path) -> int:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DAGSTER_HOME", str(home))
        with dg.DagsterInstance.get() as instance:
            return len(instance.get_runs())


def test_sync_and_local_edit_commands(sim: Simulator, tmp_path: Path) -> None:
    env = _base_env(tmp_path)
    env.update(sim.env(flow="client_credentials"))
    db = tmp_path / "cli.duckdb"
    env["DYNSYNC_DUCKDB_PATH"] = str(db)
    env["DYNSYNC_CONFIG"] = str(REPO / "dynsync.yaml")
    result = _run(["sync"], env)
    assert result.returncode == 0, result.stderr
    assert f"{len(sim.org.account_ids())} accounts" in result.stdout
    assert oct(db.stat().st_mode & 0o777) == "0o600"  # readable by its owner only

    org = sim.org
    account = next(a for a in org.account_ids() if len(org.contacts_of(a)) == 8)
    contact = org.contacts_of(account)[0]
    ok = _run(
        ["set-account-field", "--contact-id", contact, "--field", "name", "--value", "Local"], env
    )
    assert ok.returncode == 0, ok.stderr
    assert "on 8 contact(s), 8 activity row(s) logged" in ok.stdout

    orphan = next(c for c in org.contact_ids() if org.get_contact(c)["parentcustomerid"] is None)
    refused = _run(
        ["set-account-field", "--contact-id", orphan, "--field", "name", "--value", "X"], env
    )
    assert refused.returncode == 2
    assert "accounts are created in Dynamics only" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert list(sim.write_attempts) == []


def test_missing_settings_are_one_line_errors(tmp_path: Path) -> None:
    result = _run(["sync"], _base_env(tmp_path))
    assert result.returncode == 2
    assert result.stderr.startswith("dynsync sync: missing environment variable(s) DYNAMICS_URL")
    assert "Traceback" not in result.stderr


def test_validate_prints_the_checklist(sim: Simulator, tmp_path: Path) -> None:
    env = _base_env(tmp_path)
    env.update(sim.env(flow="ropc"))
    env["DYNSYNC_CONFIG"] = str(REPO / "dynsync.yaml")
    result = _run(["validate"], env)
    out = result.stdout
    assert "[ok  ] credentials and URL: signed in; the sync user is" in out
    assert "[ok  ] read privilege on account: can read" in out
    assert "[ok  ] change tracking on contact: enabled" in out
    # dynsync.yaml selects creditonhold, which the simulator's sync user may not read: a sync
    # leaves it out and goes on, so validate warns.
    assert "[WARN] selected fields readable" in out and "creditonhold" in out
    assert result.returncode == 0

    env["DYNAMICS_CLIENT_SECRET"] = "Wr0ng-s3cret-value"
    wrong = _run(["validate"], env)
    assert wrong.returncode == 1
    assert "[FAIL] credentials and URL" in wrong.stdout and "AADSTS" in wrong.stdout
    assert "Wr0ng-s3cret-value" not in wrong.stdout + wrong.stderr


def test_lineage_prints_the_chain_back_to_dynamics(sim: Simulator, tmp_path: Path) -> None:
    env = _base_env(tmp_path)
    env.update(sim.env(flow="client_credentials"))
    env["DYNSYNC_DUCKDB_PATH"] = str(tmp_path / "l.duckdb")
    env["DYNSYNC_CONFIG"] = str(REPO / "dynsync.yaml")
    assert _run(["sync"], env).returncode == 0
    result = _run(["lineage", "contacts.account_industrycode"], env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "contacts.account_industrycode"
    assert lines[1].strip().startswith("<- accounts.industrycode")
    assert lines[2].strip().startswith("<- dynamics.account.industrycode")
    missing = _run(["lineage", "contacts.account_creditonhold"], env)
    assert missing.returncode == 2 and "no recorded lineage" in missing.stderr
