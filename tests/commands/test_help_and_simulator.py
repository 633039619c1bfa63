"""`--help` on every subcommand, and `dynsync simulator` taking the simulator's own options."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynsync_dagster.simulator.process import read_exports
from tests.support import clean_env, run_cli

CLI = [sys.executable, "-m", "dynsync_dagster.commands.cli"]

# Each subcommand and one option only its own help lists.
OWN_OPTION = {
    "sync": "usage: dynsync sync",
    "set-account-field": "--contact-id",
    "validate": "usage: dynsync validate",
    "lineage": "TABLE.COLUMN",
    "simulator": "--trickle-per-minute",
    "demo": "--dir",
    "dev": "--port",
}


@pytest.mark.parametrize("command", sorted(OWN_OPTION))
def test_help_works_for_every_subcommand(command: str, tmp_path: Path) -> None:
    result = run_cli([command, "--help"], clean_env(tmp_path), tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: dynsync {command}")
    assert OWN_OPTION[command] in result.stdout


def test_other_commands_still_refuse_unknown_options(tmp_path: Path) -> None:
    result = run_cli(["sync", "--port", "1"], clean_env(tmp_path), tmp_path, timeout=60)
    assert result.returncode == 2
    assert "unrecognized arguments: --port 1" in result.stderr


def test_simulator_takes_its_options_and_prints_absolute_paths(tmp_path: Path) -> None:
    """Run from tmp_path with a relative --state-dir: every printed path is absolute."""
    out = tmp_path / "sim.out"
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [
                *CLI,
                "simulator",
                "--port",
                "0",
                "--accounts",
                "3",
                "--contacts",
                "9",
                "--state-dir",
                "rel",
            ],
            cwd=tmp_path,
            env=clean_env(tmp_path) | {"PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "Ctrl-C stops" not in out.read_text():
            assert proc.poll() is None, out.read_text()
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    text = out.read_text()
    assert "generating 3 accounts and 9 contacts" in text
    state = (tmp_path / "rel").resolve()
    printed = {
        line.split("=", 1)[0].removeprefix("export "): line.split("=", 1)[1]
        for line in text.splitlines()
        if line.startswith("export ")
    }
    assert printed["DYNAMICS_CA_BUNDLE"] == str(state / "simulator-ca.pem")
    assert read_exports(state / "env.sh")["DYNAMICS_CA_BUNDLE"] == str(state / "simulator-ca.pem")
    assert f"exports are in {state / 'env.sh'}" in text
    assert f"admin API key: {state / 'admin-key'}" in text
