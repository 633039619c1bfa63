"""The simulator in its own process (`python -m dynsync_dagster.simulator`): start, wait, stop."""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

POLL_S = 0.2


class SimulatorStartError(RuntimeError):
    """The simulator exited or did not get ready in time; the message ends with its log tail."""


class SimulatorProcess:
    """`python -m dynsync_dagster.simulator` in a child process, ready once it listens.

    The simulator writes `env.sh` and then `simulator.json` (with its pid) to its state dir
    once its server listens: that file, with this child's pid, is the sign it is ready.
    Use it as a context manager, or call `start()` and `stop()`.
    """

    def __init__(
        self,
        state_dir: str | Path,
        args: Sequence[str] = (),
        *,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        # Absolute, so every path the simulator reports (its CA bundle too) is absolute.
        self.state_dir = Path(state_dir).resolve()
        self.log_path = log_path or self.state_dir.with_suffix(".log")
        self.command = [
            sys.executable,
            "-m",
            "dynsync_dagster.simulator",
            "--port",
            "0",
            "--state-dir",
            str(self.state_dir),
            *args,
        ]
        self._env = None if env is None else dict(env)
        self._cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}  # simulator.json: org_url, ca_pem_path, admin_key_path
        self.env: dict[str, str] = {}  # the DYNAMICS_* it prints (client-credentials flow)
        self.startup_s = 0.0

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def poll(self) -> int | None:
        """The exit code once it has exited, else None."""
        return None if self.proc is None else self.proc.poll()

    def start(self, timeout_s: float = 600) -> SimulatorProcess:
        """Start it and wait until it listens; SimulatorStartError (and stopped) if it does not.
        Starting one that is already running does nothing (so `with p.start():` is safe)."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        started = time.monotonic()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command,
                cwd=self._cwd,
                env=self._env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own process group: a Ctrl-C in the terminal reaches only the parent,
                # which then stops it in order.
                start_new_session=True,
            )
        try:
            self._wait_until_ready(started + timeout_s, timeout_s)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - started
        return self

    def _wait_until_ready(self, deadline: float, timeout_s: float) -> None:
        assert self.proc is not None
        info_path = self.state_dir / "simulator.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SimulatorStartError(
                    f"the simulator exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            info = _read_json(info_path)
            # A simulator.json from an earlier run names another pid.
            if info is not None and info.get("pid") == self.proc.pid:
                self.info = info
                self.env = read_exports(self.state_dir / "env.sh")
                self.env["DYNAMICS_CA_BUNDLE"] = str(Path(info["ca_pem_path"]).resolve())
                return
            time.sleep(POLL_S)
        raise SimulatorStartError(
            f"the simulator did not start within {timeout_s:.0f}s (log: {self.log_path}):\n"
            f"{self.log_tail()}"
        )

    def stop(self, timeout_s: float = 60) -> bool:
        """SIGTERM, wait, then SIGKILL; True if it stopped on its own. A Ctrl-C during the wait
        skips it (and kills)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return True
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
            return True
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            return False

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no log at {self.log_path})"

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def read_exports(path: Path) -> dict[str, str]:
    """The `export NAME=value` lines of the simulator's env.sh."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("export "):
            continue
        for word in shlex.split(line[len("export ") :]):
            name, sep, value = word.partition("=")
            if sep:
                env[name] = value
    return env


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not there yet, or caught mid-write
        return None
