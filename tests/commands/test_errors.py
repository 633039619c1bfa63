"""`dynsync errors` (Marketo's Sync Errors): without rows, with a record set aside, --csv, and
the record once fixed in Dynamics. Real simulator, real cycles."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from dynsync_dagster.commands.cli import main
from dynsync_dagster.settings import SyncSettings
from dynsync_dagster.store.publish import open_published
from dynsync_dagster.store.sync_status import ERROR_COLUMNS, records_set_aside
from tests.support import REPO, Harness, clean_env, pick_sized, run_cli


@pytest.fixture
def errors_env(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> Harness:
    monkeypatch.setenv("DYNSYNC_DUCKDB_PATH", str(harness.db))
    return harness


def _with_bad_score(harness: Harness) -> str:
    """An account whose new_score does not fit DECIMAL(38,2): the cycle sets it aside."""
    org = harness.sim.org
    org.add_attribute("account", "new_score", "DecimalType", precision=2)
    bad = pick_sized(harness.sim, 8)
    org.update_account(bad, new_score=1e40)
    s = harness.settings
    harness.settings = SyncSettings((*s.account_fields, "new_score"), s.contact_fields, 5000)
    assert harness.cycle().record_errors == 1
    return bad


def test_errors_without_rows(errors_env: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    errors_env.cycle()
    assert main(["errors"]) == 0
    assert capsys.readouterr().out.strip() == (
        "no record has been set aside: every record read so far has synced"
    )
    assert main(["errors", "--csv"]) == 0
    assert capsys.readouterr().out == ",".join(ERROR_COLUMNS) + "\n"  # the header alone


def test_errors_list_a_record_set_aside_and_export_it(
    errors_env: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    harness = errors_env
    harness.cycle()
    bad = _with_bad_score(harness)
    assert main(["errors"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if bad in line)
    assert row.split()[:3] == ["account", bad, "new_score"]
    assert row.split()[-3:] == ["1", "set", "aside"]
    assert (
        "reason: the value does not fit the column type DECIMAL(38,2); the record keeps its "
        "last synced values"
    ) in out
    assert "1 record(s) set aside now, 1 row(s) in all" in out

    assert main(["errors", "--csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 1
    exported = rows[0]
    assert (exported["entity"], exported["record_id"], exported["field"]) == (
        "account",
        bad,
        "new_score",
    )
    assert float(exported["value"]) == 1e40
    assert exported["cycles"] == "1" and exported["set_aside"] == "true"
    assert exported["first_seen"] == exported["last_seen"]
    assert exported["first_seen"].endswith("+00:00")

    # Seen again by a later cycle that re-reads it (a touch in Dynamics): one row, two cycles.
    harness.sim.org.touch_account(bad)
    harness.cycle()
    with open_published(harness.db) as con:
        finding = records_set_aside(con)
    assert not finding.passed and finding.metadata["records_set_aside"] == 1
    assert finding.metadata["latest"][0]["cycles"] == 2

    # Fixed in Dynamics: it syncs, and the history stays, marked as synced since.
    harness.sim.org.update_account(bad, new_score=12.5)
    harness.cycle()
    assert main(["errors"]) == 0
    out = capsys.readouterr().out
    assert "synced since" in out and "0 record(s) set aside now, 1 row(s) in all" in out
    with open_published(harness.db) as con:
        assert records_set_aside(con).passed


def test_errors_before_the_first_cycle_and_csv_to_a_file(tmp_path: Path, harness: Harness) -> None:
    """As a user runs it: a subprocess, a one-line error, then the CSV redirected to a file."""
    env = clean_env(tmp_path)
    env["DYNSYNC_DUCKDB_PATH"] = str(harness.db)
    env["DYNSYNC_CONFIG"] = str(REPO / "dynsync.yaml")
    missing = run_cli(["errors"], env, REPO)
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        f"dynsync errors: {harness.db} does not exist yet: run `dynsync sync` (or the Dagster "
        "job) first"
    )
    harness.cycle()
    _with_bad_score(harness)
    exported = run_cli(["errors", "--csv"], env, REPO)
    assert exported.returncode == 0, exported.stderr
    target = tmp_path / "errors.csv"
    target.write_text(exported.stdout)
    with target.open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(ERROR_COLUMNS) and len(rows) == 2
