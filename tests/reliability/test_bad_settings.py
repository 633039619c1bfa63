"""Bad settings through the real command (`python -m dynsync_dagster.commands.cli sync`).

Each must end with exit code non-zero, one line on stderr that names the problem and the fix
(no traceback), and nothing written: no store where there was none, and an existing store's
data exactly as it was.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest

from dynsync_dagster.simulator import Simulator
from tests.support import (
    REPO,
    TINY,
    canonical,
    clean_env,
    closed_port,
    cycle,
    run_cli,
    sync_settings,
)

GOOD_YAML = "account_fields: [name, industrycode, revenue]\ncontact_fields: [firstname]\n"


# The CLI's own progress log lines (e.g. retry warnings) may precede the error.
LOG_LINE = re.compile(r"^(DEBUG|INFO|WARNING) dynsync[.\w]*: ")


def _one_line_error(stderr: str) -> str:
    """The error line; fails if stderr holds more than that (a traceback, a stack trace)."""
    assert "Traceback" not in stderr and "Stack Trace" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("dynsync sync: "), stderr
    return lines[0]


def _env(sim: Simulator, tmp: Path, yaml_text: str, db: Path) -> dict[str, str]:
    config = tmp / "dynsync.yaml"
    config.write_text(yaml_text)
    env = clean_env(tmp) | sim.env()
    env["DYNSYNC_CONFIG"] = str(config)
    env["DYNSYNC_DUCKDB_PATH"] = str(db)
    return env


# ---- settings refused before any work (fast) -----------------------------------------------------

PREFLIGHT = {
    "negative limit": (
        GOOD_YAML + "activity_log_contact_limit: -1\n",
        {},
        ["activity_log_contact_limit", "whole number >= 0", "-1"],
    ),
    "non-integer limit": (
        GOOD_YAML + "activity_log_contact_limit: 5k\n",
        {},
        ["activity_log_contact_limit", "whole number", "5k"],
    ),
    "fractional limit": (
        GOOD_YAML + "activity_log_contact_limit: 2.5\n",
        {},
        ["activity_log_contact_limit", "2.5"],
    ),
    "boolean limit": (
        GOOD_YAML + "activity_log_contact_limit: true\n",
        {},
        ["activity_log_contact_limit"],
    ),
    "missing secret": (GOOD_YAML, {"DYNAMICS_CLIENT_SECRET": None}, ["DYNAMICS_CLIENT_SECRET"]),
    "missing tenant": (GOOD_YAML, {"DYNAMICS_TENANT_ID": None}, ["DYNAMICS_TENANT_ID"]),
    "username without password": (
        GOOD_YAML,
        {"DYNAMICS_USERNAME": "sync@example.com"},
        ["DYNAMICS_USERNAME and DYNAMICS_PASSWORD", "set both"],
    ),
    "http url": (
        GOOD_YAML,
        {"DYNAMICS_URL": "http://127.0.0.1:1"},
        ["not an https URL", "https://"],
    ),
    "url with a path": (
        GOOD_YAML,
        {"DYNAMICS_URL": "https://contoso.crm.dynamics.com/main.aspx"},
        ["DYNAMICS_URL", "base URL"],
    ),
    "missing CA bundle file": (
        GOOD_YAML,
        {"DYNAMICS_CA_BUNDLE": "/nonexistent/ca.pem"},
        ["DYNAMICS_CA_BUNDLE", "PEM"],
    ),
    "unknown key": ("acount_fields: [name]\n", {}, ["unknown key", "acount_fields"]),
    "blocked field not synced": (
        "account_fields: [name]\nblock_field_updates: {industrycode: [local_update]}\n",
        {},
        ["block_field_updates", "industrycode", "not in account_fields"],
    ),
    "unknown block kind": (
        "account_fields: [name]\nblock_field_updates: {name: [remote_update]}\n",
        {},
        ["block_field_updates.name", "local_update", "dynamics_sync"],
    ),
    "zero retention": (
        "account_fields: [name]\nactivity_log_retention_days: 0\n",
        {},
        ["activity_log_retention_days", ">= 1"],
    ),
    "filter field not a name": (
        "account_fields: [name]\nsync_filter_field: 'sync to marketo'\n",
        {},
        ["sync_filter_field", "Two Options"],
    ),
    "fields not a list": ("account_fields: name\n", {}, ["account_fields", "list"]),
    "http authority": (
        GOOD_YAML,
        {"DYNAMICS_AUTHORITY_HOST": "http://login.microsoftonline.com"},
        ["DYNAMICS_AUTHORITY_HOST", "https"],
    ),
    "hostile field name": (
        "account_fields: ['name\"; DROP TABLE accounts; --']\n",
        {},
        ["account_fields", "logical names"],
    ),
}


@pytest.mark.parametrize("case", sorted(PREFLIGHT))
def test_preflight_errors_are_one_line_and_write_nothing(
    tiny: Simulator, tmp_path: Path, case: str
) -> None:
    yaml_text, overrides, words = PREFLIGHT[case]
    db = tmp_path / "data" / "dynsync.duckdb"
    env = _env(tiny, tmp_path, yaml_text, db)
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    result = run_cli(["sync"], env, tmp_path)
    assert result.returncode != 0
    line = _one_line_error(result.stderr)
    for word in words:
        assert word in line, line
    assert not db.exists() and not db.parent.exists()
    assert list(tiny.write_attempts) == []


def test_malformed_yaml_is_one_line_naming_the_line(tiny: Simulator, tmp_path: Path) -> None:
    db = tmp_path / "data" / "dynsync.duckdb"
    env = _env(tiny, tmp_path, "account_fields: [name, industrycode\ncontact_fields: []\n", db)
    result = run_cli(["sync"], env, tmp_path)
    assert result.returncode != 0
    assert not db.exists()
    line = _one_line_error(result.stderr)
    assert "dynsync.yaml" in line and "line" in line and "YAML" in line


def test_missing_settings_file_names_the_variable(tiny: Simulator, tmp_path: Path) -> None:
    db = tmp_path / "data" / "dynsync.duckdb"
    env = _env(tiny, tmp_path, GOOD_YAML, db)
    env["DYNSYNC_CONFIG"] = str(tmp_path / "nowhere.yaml")
    result = run_cli(["sync"], env, tmp_path)
    assert result.returncode != 0
    line = _one_line_error(result.stderr)
    assert "nowhere.yaml" in line and "DYNSYNC_CONFIG" in line
    assert not db.exists()


# ---- settings only Dynamics can refuse (a real run; started together, they take one wait) -------


@dataclass
class Case:
    yaml_text: str
    overrides: dict[str, str]
    words: list[str]


RUNTIME = {
    "unknown field names": Case(
        "account_fields: [name, industrycod, nosuchfield]\n",
        {},
        ["industrycod (did you mean industrycode?)", "nosuchfield", "settings file"],
    ),
    "wrong tenant": Case(
        GOOD_YAML,
        {"DYNAMICS_TENANT_ID": "00000000-0000-0000-0000-000000000000"},
        ["DYNAMICS_TENANT_ID"],
    ),
    # Refused from the store's delta links alone, before any request: the URL may be closed.
    "url of another org": Case(
        GOOD_YAML,
        {"DYNAMICS_URL": "closed"},
        ["holds the org https://127.0.0.1:", "DYNSYNC_DUCKDB_PATH", "move these files aside"],
    ),
    "unreachable": Case(GOOD_YAML, {"DYNAMICS_AUTHORITY_HOST": "closed"}, ["127.0.0.1", "network"]),
}


@dataclass
class Ran:
    result: subprocess.CompletedProcess[str]
    before: dict[str, list[tuple]]
    db: Path


@pytest.fixture(scope="module")
def runtime_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Ran]]:
    """Every runtime case at once, each against a copy of a store that synced before."""
    tmp = tmp_path_factory.mktemp("bad_runtime")
    with Simulator(TINY, state_dir=tmp / "sim") as sim:
        template = tmp / "template.duckdb"
        cycle(sim, template, sync_settings(("name", "industrycode", "revenue"), ("firstname",)))
        before = canonical(template)
        port = closed_port()
        procs = {}
        for name, case in RUNTIME.items():
            work = tmp / name.replace(" ", "_")
            work.mkdir()
            db = work / "dynsync.duckdb"
            shutil.copy(template, db)
            env = _env(sim, work, case.yaml_text, db)
            for key, value in case.overrides.items():
                env[key] = f"https://127.0.0.1:{port}" if value == "closed" else value
            procs[name] = (
                subprocess.Popen(
                    [sys.executable, "-m", "dynsync_dagster.commands.cli", "sync"],
                    cwd=work,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
                db,
            )
        runs = {}
        for name, (proc, db) in procs.items():
            out, err = proc.communicate(timeout=300)
            runs[name] = Ran(subprocess.CompletedProcess(proc.args, proc.returncode, out, err),
                             before, db)  # fmt: skip
        yield runs


@pytest.mark.parametrize("case", sorted(RUNTIME))
def test_runtime_errors_are_one_line_and_change_nothing(
    runtime_runs: dict[str, Ran], case: str
) -> None:
    ran = runtime_runs[case]
    assert ran.result.returncode != 0
    assert canonical(ran.db) == ran.before  # the data is exactly as it was
    line = _one_line_error(ran.result.stderr)
    for word in RUNTIME[case].words:
        assert word in line, line


@pytest.mark.parametrize("case", sorted(RUNTIME))
def test_runtime_errors_name_the_problem_and_change_no_data(
    runtime_runs: dict[str, Ran], case: str
) -> None:
    """What already holds today: exit code, the last line, and the data untouched."""
    ran = runtime_runs[case]
    assert ran.result.returncode != 0
    assert canonical(ran.db) == ran.before
    last = [line for line in ran.result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("dynsync sync: ")
    for word in RUNTIME[case].words:
        assert word in last, last


def test_repo_settings_file_is_valid() -> None:
    """The shipped dynsync.yaml loads (the bad-settings cases above start from the same keys)."""
    from dynsync_dagster.settings import SyncSettings

    assert SyncSettings.load(REPO / "dynsync.yaml").account_fields


def test_a_store_of_another_org_is_left_exactly_as_it_was(runtime_runs: dict[str, Ran]) -> None:
    """Not even a failed sync_runs row: the file belongs to the other org's history."""
    ran = runtime_runs["url of another org"]
    with duckdb.connect(str(ran.db), read_only=True) as con:
        outcomes = [r[0] for r in con.execute("SELECT outcome FROM sync_runs").fetchall()]
    assert outcomes == ["success"]
    assert str(ran.db) in _one_line_error(ran.result.stderr)
