"""`python -m dynsync_dagster.simulator` in a child process, found via its state files."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from dynsync_dagster.simulator import SimulatorAdmin
from dynsync_dagster.simulator.__main__ import main


def test_cli_serves_writes_state_and_stops_on_sigterm(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dynsync_dagster.simulator",
            "--port",
            "0",
            "--accounts",
            "4",
            "--contacts",
            "12",
            "--sized-accounts",
            "5,3",
            "--state-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "simulator.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        info = json.loads((tmp_path / "simulator.json").read_text())
        assert info["pid"] == proc.pid
        env_sh = (tmp_path / "env.sh").read_text()
        assert f"export DYNAMICS_URL={info['org_url']}" in env_sh
        assert "DYNAMICS_CLIENT_SECRET=" in env_sh
        admin = SimulatorAdmin.from_state_dir(tmp_path)
        ids = admin.call("account_ids")
        assert sorted(len(admin.call("contacts_of", account_id=i)) for i in ids)[-2:] == [3, 5]
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "export DYNAMICS_TENANT_ID=" in out and "simulator stopped" in out


def test_cli_rejects_impossible_spec(capsys) -> None:
    assert main(["--accounts", "1", "--contacts", "3", "--sized-accounts", "5"]) == 2
    assert "sized_accounts" in capsys.readouterr().err
