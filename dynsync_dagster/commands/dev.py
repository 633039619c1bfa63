"""`dynsync dev`: the simulator and `dagster dev` together, so the UI shows scheduled syncs ticking."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from dynsync_dagster.commands.runs import REPO_ROOT, CommandError

HOST = "127.0.0.1"  # loopback only: the dev UI has no authentication
SIMULATOR_START_TIMEOUT_S = 600.0  # generating a large org takes a while
UI_START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0  # dagster dev gives its webserver and daemon up to 60 s each
POLL_S = 0.5


def run_dev(args: argparse.Namespace) -> int:
    """Start the simulator and `dagster dev`; run until Ctrl-C / SIGTERM, then stop both."""
    work = Path(args.dir).resolve()
    workspace = REPO_ROOT / "workspace.yaml"
    if not workspace.exists():
        raise CommandError(f"{workspace} not found: run `dynsync dev` from a dynsync checkout")
    ui_port = _ui_port(int(args.port))
    _reset(work)
    with _sigterm_as_interrupt():
        sim: subprocess.Popen | None = None
        dagster: subprocess.Popen | None = None
        try:
            sim = _spawn_simulator(args, work)
            sim_env = _wait_for_simulator(sim, work)
            env = dev_environment(sim_env, work / "dynsync.duckdb")
            url = f"http://{HOST}:{ui_port}"
            print(
                f"starting dagster dev at {url} (DAGSTER_HOME={env['DAGSTER_HOME']}) …", flush=True
            )
            dagster = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dagster",
                    "dev",
                    "-h",
                    HOST,
                    "-p",
                    str(ui_port),
                    "-w",
                    str(workspace),
                ],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                # Its own process group: Ctrl-C reaches only us, and we stop it in order.
                start_new_session=True,
            )
            return _supervise(dagster, sim, url, work / "simulator.log")
        except KeyboardInterrupt:
            print("\nstopping …", flush=True)
            return 0
        finally:
            _stop(dagster, "dagster dev")
            _stop(sim, "simulator")


def dev_environment(
    sim_env: Mapping[str, str], db: Path, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment `dagster dev` runs with: the simulator's DYNAMICS_* and the dev store."""
    base = os.environ if base is None else base
    # A developer's real-org DYNAMICS_* (e.g. a ROPC user or a CA bundle) must not mix with
    # the simulator's: drop them all, then take the simulator's.
    env = {k: v for k, v in base.items() if not k.startswith("DYNAMICS_")}
    env.update(sim_env)
    env["DYNSYNC_DUCKDB_PATH"] = str(db)
    env.setdefault("DYNSYNC_CONFIG", str(REPO_ROOT / "dynsync.yaml"))
    env.setdefault("DAGSTER_HOME", str(REPO_ROOT / "dagster_home"))
    Path(env["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    # The simulator is on loopback: never send that traffic through a configured proxy.
    for key in ("NO_PROXY", "no_proxy"):
        hosts = [h for h in env.get(key, "").split(",") if h]
        env[key] = ",".join(dict.fromkeys([*hosts, HOST, "localhost"]))
    return env


def _ui_port(port: int) -> int:
    """The requested port if it is free on loopback (0: any free one), else a clear error."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((HOST, port))
        except OSError as exc:
            raise CommandError(
                f"port {port} on {HOST} is in use ({exc.strerror}); pass --port with another "
                "port, or --port 0 for any free one"
            ) from None
        return int(s.getsockname()[1])


def _reset(work: Path) -> None:
    """Start from an empty store: the simulator regenerates its org on every start, so a store
    (and delta links) from an earlier session would not match it."""
    work.mkdir(parents=True, exist_ok=True)
    for path in work.glob("dynsync.duckdb*"):  # the file, its WAL and the cycle's stage
        path.unlink()
    shutil.rmtree(work / "simulator", ignore_errors=True)


def _spawn_simulator(args: argparse.Namespace, work: Path) -> subprocess.Popen:
    log_path = work / "simulator.log"
    cmd = [
        sys.executable,
        "-m",
        "dynsync_dagster.simulator",
        "--port",
        "0",
        "--state-dir",
        str(work / "simulator"),
        "--accounts",
        str(args.accounts),
        "--contacts",
        str(args.contacts),
        "--trickle-per-minute",
        str(args.trickle_per_minute),
    ]
    print(
        f"starting the simulator: {args.accounts:,} accounts, {args.contacts:,} contacts, "
        f"{args.trickle_per_minute} changes a minute (log: {log_path}) …",
        flush=True,
    )
    with log_path.open("wb") as log:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for_simulator(sim: subprocess.Popen, work: Path) -> dict[str, str]:
    """The simulator's DYNAMICS_* once it listens (from the env.sh it writes)."""
    state = work / "simulator"
    log_path = work / "simulator.log"
    deadline = time.monotonic() + SIMULATOR_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if sim.poll() is not None:
            raise CommandError(f"the simulator exited with {sim.returncode}:\n{_tail(log_path)}")
        info = _read_json(state / "simulator.json")
        # simulator.json is written once the server listens; the pid tells it is this one.
        if info and info.get("pid") == sim.pid and (state / "env.sh").exists():
            env = _read_exports(state / "env.sh")
            print(f"simulator ready at {env.get('DYNAMICS_URL')}", flush=True)
            return env
        time.sleep(POLL_S)
    raise CommandError(
        f"the simulator did not start within {SIMULATOR_START_TIMEOUT_S:.0f}s; see {log_path}"
    )


def _supervise(dagster: subprocess.Popen, sim: subprocess.Popen, url: str, sim_log: Path) -> int:
    """Wait in the foreground; say when the UI answers; stop if either process dies."""
    started = time.monotonic()
    ready = False
    while True:
        code = dagster.poll()
        if code is not None:
            print(f"dagster dev exited with {code}", file=sys.stderr, flush=True)
            return code or 1
        if sim.poll() is not None:
            print(
                f"the simulator exited with {sim.returncode}:\n{_tail(sim_log)}",
                file=sys.stderr,
                flush=True,
            )
            return 1
        if not ready:
            ready = _answers(f"{url}/server_info")
            if ready:
                print(
                    f"\nDagster UI: {url}\n  asset graph: {url}/asset-groups\n"
                    "  the every_five_minutes schedule syncs the simulator's changes; "
                    "Ctrl-C stops everything\n",
                    flush=True,
                )
            elif time.monotonic() - started > UI_START_TIMEOUT_S:
                print(
                    f"the Dagster UI did not answer at {url} within "
                    f"{UI_START_TIMEOUT_S:.0f}s; still waiting (see the log above)",
                    file=sys.stderr,
                    flush=True,
                )
                started = float("inf")  # warn once
        time.sleep(POLL_S)


def _answers(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy
    try:
        with opener.open(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _stop(proc: subprocess.Popen | None, name: str) -> None:
    """SIGTERM the process (dagster dev then shuts its webserver and daemon down), wait, then
    SIGKILL its whole group so nothing outlives us. A second Ctrl-C skips the wait."""
    if proc is None:
        return
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            print(f"{name} did not stop in time; killing it", file=sys.stderr, flush=True)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers: code servers, run workers
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops `dynsync dev` the same clean way Ctrl-C does."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not there yet, or caught mid-write
        return None


def _read_exports(path: Path) -> dict[str, str]:
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


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"
