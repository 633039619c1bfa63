"""`dynsync dev` starts the simulator and the Dagster UI on loopback; Ctrl-C stops them all in 10 s."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

from .conftest import REPO_ROOT, free_loopback_port

START_TIMEOUT_S = 150
STOP_TIMEOUT_S = 90
CTRL_C_BUDGET_S = 10  # Ctrl-C to everything gone


def test_dynsync_dev_serves_the_ui_and_stops_cleanly(tmp_path: Path) -> None:
    port = free_loopback_port()
    home = tmp_path / "dagster_home"  # not the repo's: a test must not add to its history
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster_home" / "dagster.yaml").read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNAMICS_")}
    env.update(DAGSTER_HOME=str(home), PYTHONUNBUFFERED="1")
    out = tmp_path / "dev.out"
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dynsync_dagster.commands.cli",
                "dev",
                "--dir",
                str(tmp_path / "dev"),
                "--port",
                str(port),
                "--accounts",
                "20",
                "--contacts",
                "120",
                "--trickle-per-minute",
                "30",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    children: list[psutil.Process] = []
    session = requests.Session()
    session.trust_env = False  # loopback only, whatever proxy the environment names
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Dagster UI: " not in out.read_text(errors="replace"):
            assert proc.poll() is None, f"dynsync dev exited:\n{out.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no UI yet:\n{out.read_text()[-3000:]}"
            time.sleep(0.5)
        assert session.get(f"http://127.0.0.1:{port}/server_info", timeout=10).ok
        env_sh = (tmp_path / "dev" / "simulator" / "env.sh").read_text()
        assert "DYNAMICS_URL=https://127.0.0.1:" in env_sh
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # simulator, dagster dev, webserver, daemon, code server

        # Ctrl-C: the terminal sends SIGINT to the foreground process group.
        stopping = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=STOP_TIMEOUT_S) == 0, out.read_text()[-3000:]
        _, alive = psutil.wait_procs(children, timeout=15)
        stopped_in = time.monotonic() - stopping
        assert not alive, f"left running after dynsync dev stopped: {alive}"
        assert stopped_in < CTRL_C_BUDGET_S, f"took {stopped_in:.1f}s:\n{out.read_text()[-3000:]}"
        assert "Traceback" not in out.read_text()
        # No deprecation warnings from our own command (dagster dev's "superseded" one).
        assert "Warning" not in out.read_text(), out.read_text()[-3000:]
    finally:
        session.close()
        # On a failure above: nothing may outlive the test (the children have own sessions).
        for p in [*children, psutil.Process(proc.pid)] if proc.poll() is None else children:
            with contextlib.suppress(psutil.Error):
                p.kill()
        proc.wait(timeout=10)
