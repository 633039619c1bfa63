"""`dynsync dev`: the simulator and `dagster dev` together, so the UI shows scheduled syncs ticking.

With --postgres, Dagster's storage is a throwaway PostgreSQL server (commands/postgres.py) and
a DAGSTER_HOME of its own under --dir, configured the way a team's is (commands/instance.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from dynsync_dagster.commands.instance import write_home
from dynsync_dagster.commands.postgres import PostgresError, ThrowawayPostgres
from dynsync_dagster.commands.runs import REPO_ROOT, CommandError
from dynsync_dagster.simulator.process import SimulatorProcess, SimulatorStartError

HOST = "127.0.0.1"  # loopback only: the dev UI has no authentication
SIMULATOR_START_TIMEOUT_S = 600.0  # generating a large org takes a while
UI_START_TIMEOUT_S = 180.0
# Ctrl-C must stop everything within 10 s. `dagster dev` alone may wait 60 s each for its
# webserver and daemon, so after these grace periods the whole group is killed; a sync run
# killed mid-cycle leaves the store as it was (each cycle commits in one transaction).
DAGSTER_STOP_GRACE_S = 6.0
SIMULATOR_STOP_GRACE_S = 3.0
POLL_S = 0.5


def run_dev(args: argparse.Namespace) -> int:
    """Start the simulator and `dagster dev`; run until Ctrl-C / SIGTERM, then stop both."""
    work = Path(args.dir).resolve()
    workspace = REPO_ROOT / "workspace.yaml"
    if not workspace.exists():
        raise CommandError(f"{workspace} not found: run `dynsync dev` from a dynsync checkout")
    ui_port = _ui_port(int(args.port))
    _reset(work)
    sim = SimulatorProcess(
        work / "simulator",
        [
            "--accounts",
            str(args.accounts),
            "--contacts",
            str(args.contacts),
            "--trickle-per-minute",
            str(args.trickle_per_minute),
        ],
    )
    postgres = _throwaway_postgres(args)
    with _sigterm_as_interrupt():
        dagster: subprocess.Popen | None = None
        try:
            _start_simulator(sim, args)
            base = _start_postgres(postgres, work) if postgres else None
            env = dev_environment(sim.env, work / "dynsync.duckdb", base)
            url = f"http://{HOST}:{ui_port}"
            dagster = _start_dagster(env, url, ui_port, workspace)
            return _supervise(dagster, sim, url)
        except KeyboardInterrupt:
            print("\nstopping …", flush=True)
            return 0
        finally:
            _stop(dagster, "dagster dev")
            if not sim.stop(SIMULATOR_STOP_GRACE_S):
                print("simulator did not stop in time; killed it", file=sys.stderr, flush=True)
            if postgres is not None:
                postgres.stop()  # its data goes with it: the next start begins empty


# A -W filter (Python matches the start of the message): silence only that one warning.
DEV_SUPERSEDED_WARNING = "ignore:Function `dev_command` is superseded"


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
    # `dagster dev` warns on every start that `dg dev` supersedes it: advice about Dagster's
    # own CLI that a dynsync user cannot act on (the project runs from workspace.yaml).
    env["PYTHONWARNINGS"] = ",".join(
        w for w in [env.get("PYTHONWARNINGS", ""), DEV_SUPERSEDED_WARNING] if w
    )
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


def _throwaway_postgres(args: argparse.Namespace) -> ThrowawayPostgres | None:
    if not getattr(args, "postgres", False):
        return None
    try:
        return ThrowawayPostgres()
    except PostgresError as exc:
        raise CommandError(str(exc)) from None


def _start_postgres(postgres: ThrowawayPostgres, work: Path) -> dict[str, str]:
    """Start the server; returns the environment for Dagster: its DAGSTER_PG_* (the password
    only there, never in a file or on the terminal) and a DAGSTER_HOME configured for it."""
    print("starting a throwaway PostgreSQL for Dagster's storage …", flush=True)
    try:
        postgres.start()
    except PostgresError as exc:
        raise CommandError(str(exc)) from None
    # Its own DAGSTER_HOME: the database is new on every start, and a user's DAGSTER_HOME
    # (with its dagster.yaml) is left alone.
    home = work / "dagster_home_postgres"
    write_home(home, postgres=True)
    print(
        f"PostgreSQL on {postgres.env()['DAGSTER_PG_HOST']}:{postgres.port} (database "
        f"{postgres.env()['DAGSTER_PG_DB']}; removed on exit), DAGSTER_HOME={home}",
        flush=True,
    )
    return {**os.environ, **postgres.env(), "DAGSTER_HOME": str(home)}


def _start_simulator(sim: SimulatorProcess, args: argparse.Namespace) -> None:
    print(
        f"starting the simulator: {args.accounts:,} accounts, {args.contacts:,} contacts, "
        f"{args.trickle_per_minute} changes a minute (log: {sim.log_path}) …",
        flush=True,
    )
    try:
        sim.start(timeout_s=SIMULATOR_START_TIMEOUT_S)
    except SimulatorStartError as exc:
        raise CommandError(str(exc)) from None
    print(f"simulator ready at {sim.env.get('DYNAMICS_URL')}", flush=True)


def _start_dagster(
    env: Mapping[str, str], url: str, ui_port: int, workspace: Path
) -> subprocess.Popen:
    print(f"starting dagster dev at {url} (DAGSTER_HOME={env['DAGSTER_HOME']}) …", flush=True)
    return subprocess.Popen(
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


def _supervise(dagster: subprocess.Popen, sim: SimulatorProcess, url: str) -> int:
    """Wait in the foreground; say when the UI answers; stop if either process dies."""
    started = time.monotonic()
    ready = warned = False
    while True:
        code = _exit_code(dagster, sim)
        if code is not None:
            return code
        if not ready:
            ready = _answers(f"{url}/server_info")
            if ready:
                print(
                    f"\nDagster UI: {url}\n  asset graph: {url}/asset-groups\n"
                    "  the every_five_minutes schedule syncs the simulator's changes; "
                    "Ctrl-C stops everything\n",
                    flush=True,
                )
            elif not warned and time.monotonic() - started > UI_START_TIMEOUT_S:
                print(
                    f"the Dagster UI did not answer at {url} within "
                    f"{UI_START_TIMEOUT_S:.0f}s; still waiting (see the log above)",
                    file=sys.stderr,
                    flush=True,
                )
                warned = True
        time.sleep(POLL_S)


def _exit_code(dagster: subprocess.Popen, sim: SimulatorProcess) -> int | None:
    """What `dynsync dev` exits with once either process has died; None while both run."""
    code = dagster.poll()
    if code is not None:
        print(f"dagster dev exited with {code}", file=sys.stderr, flush=True)
        return code or 1
    code = sim.poll()
    if code is not None:
        print(f"the simulator exited with {code}:\n{sim.log_tail(20)}", file=sys.stderr, flush=True)
        return 1
    return None


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
            proc.wait(timeout=DAGSTER_STOP_GRACE_S)
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
