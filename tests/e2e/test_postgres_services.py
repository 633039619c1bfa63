"""Dagster on PostgreSQL as a team runs it: separate processes sharing one database.

A throwaway PostgreSQL (commands/postgres.py) holds runs, events and schedules. The code
server, `dagster-daemon run` and `dagster-webserver` start as three processes with the command
lines of deploy/systemd/ (executables and ports swapped for the test's): the webserver and the
daemon find the code through deploy/workspace.yaml and get only DAGSTER_HOME and DAGSTER_PG_*;
the Dynamics settings go to the code server alone, whose runs inherit them. The schedule ticks
every minute here (DYNSYNC_SCHEDULE_CRON) instead of every five.

Then two `dynsync sync` processes with two copies of that DAGSTER_HOME (two machines' run
workers) sync the same store at once: the pool duckdb_write, whose slots live in the shared
event storage, lets one cycle run at a time. And `dynsync dev --postgres` serves the UI on a
throwaway server of its own and leaves nothing running after Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from itertools import combinations
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import psutil
import psycopg2
import pytest
import requests
import yaml

from dynsync_dagster.commands.instance import PG_VARIABLES, instance_yaml, write_home
from dynsync_dagster.commands.postgres import ThrowawayPostgres
from dynsync_dagster.simulator import Simulator
from dynsync_dagster.store.connection import working_path
from tests.support import clean_env

from .conftest import E2E_SPEC, REPO_ROOT, DagsterDev, _ready, free_loopback_port
from .test_dagster_dev import (
    BACKFILL,
    JOB,
    LAUNCH_RUN,
    LOCATION,
    RUN,
    TERMINAL_BACKFILL,
    TERMINAL_RUN,
    _day,
    _launch_job_backfill,
    _repository,
)

DEPLOY = REPO_ROOT / "deploy"
BIN = Path(sys.executable).parent  # the environment's console scripts: dagster, dagster-daemon …
START_TIMEOUT_S = 300
RUN_TIMEOUT_S = 300
TICK_TIMEOUT_S = 240  # the next minute boundary, then the daemon's own pace on a busy machine
STOP_TIMEOUT_S = 30
# One 429 with this Retry-After holds the first cycle long enough that the other worker asks
# for the pool's slot while it is taken (the test then sees it wait, not just run later).
THROTTLE_S = 15
IN_FLIGHT = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")
PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")

T = TypeVar("T")

SCHEDULE = """
query($selector: ScheduleSelector!) { scheduleOrError(scheduleSelector: $selector) {
  __typename
  ... on Schedule { id cronSchedule scheduleState { status
      ticks(limit: 20) { status runIds skipReason error { message } } } }
  ... on PythonError { message } } }
"""

STOP_SCHEDULE = """
mutation($id: String) { stopRunningSchedule(id: $id) { __typename
  ... on ScheduleStateResult { scheduleState { status } }
  ... on PythonError { message } } }
"""

INSTANCE = """
{ instance { info daemonHealth { allDaemonStatuses { daemonType healthy required } } } }
"""


@dataclass
class Services(DagsterDev):
    """The webserver's handle (GraphQL, waits) and the other processes of the deployment."""

    pg: ThrowawayPostgres | None = None
    code_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(
            f"--- {name} ---\n{_tail(path, lines)}" for name, path in self.logs.items()
        )

    def wait_for(
        self, what: str, probe: Callable[[], T | None], timeout_s: float, interval_s: float = 1.0
    ) -> T:
        def checked() -> T | None:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    pytest.fail(
                        f"{name} exited with {proc.returncode} while waiting for {what}\n"
                        f"{self.log_tail()}"
                    )
            return probe()

        return super().wait_for(what, checked, timeout_s, interval_s)


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _rows(pg: ThrowawayPostgres, sql: str, *params: Any) -> list[tuple]:
    with psycopg2.connect(pg.url()) as con, con.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


# -- starting the deployment -----------------------------------------------------------------


def unit_command(unit: str, options: dict[str, str]) -> list[str]:
    """A systemd unit's ExecStart with this environment's executable and the given option
    values (-p, -w): the test runs the commands the recipe runs."""
    text = (DEPLOY / "systemd" / unit).read_text()
    (line,) = [x for x in text.splitlines() if x.startswith("ExecStart=")]
    argv = shlex.split(line.removeprefix("ExecStart="))
    argv[0] = str(BIN / Path(argv[0]).name)
    assert set(options) <= set(argv), f"{unit} has no {set(options) - set(argv)}: {argv}"
    command: list[str] = []
    for arg in argv:  # the value after an option given in `options` is replaced
        command.append(options[command[-1]] if command and command[-1] in options else arg)
    return command


def _workspace(work: Path, port: int) -> Path:
    """deploy/workspace.yaml, pointing at the test's code server port."""
    config = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    (entry,) = config["load_from"]
    assert entry["grpc_server"]["location_name"] == LOCATION
    entry["grpc_server"]["port"] = port
    path = work / "workspace.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _instance_env(work: Path, home: Path, pg: ThrowawayPostgres) -> dict[str, str]:
    """What every process gets (deploy's dagster.env): the instance and its database."""
    env = {k: v for k, v in clean_env(work).items() if k not in PROXIES}
    env.update(pg.env())
    env.update(
        DAGSTER_HOME=str(home),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
        # As in conftest.py: the webserver's backfill check depends on the hash seed.
        PYTHONHASHSEED="2",
    )
    return env


def _start(name: str, argv: list[str], env: dict[str, str], work: Path, services: Services):
    log_path = work / f"{name}.log"
    with log_path.open("wb") as log:
        services.procs[name] = subprocess.Popen(
            argv,
            cwd=work,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: teardown stops its children too
        )
    services.logs[name] = log_path


def _serving(port: int) -> bool | None:
    """The code server answers its health check (the unit's ExecStartPost waits the same way)."""
    check = [str(BIN / "dagster"), "api", "grpc-health-check", "-h", "127.0.0.1", "-p", str(port)]
    done = subprocess.run(check, capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    return True if done.returncode == 0 else None


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def postgres() -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres() as pg:
        yield pg


@pytest.fixture(scope="module")
def team_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    """A simulator of its own: the package's `dagster dev` must not take the 429 set up here."""
    with Simulator(E2E_SPEC, state_dir=tmp_path_factory.mktemp("team-sim")) as sim:
        yield sim


@pytest.fixture(scope="module")
def services(
    postgres: ThrowawayPostgres, team_sim: Simulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Services]:
    work = tmp_path_factory.mktemp("team")
    home = work / "dagster_home"
    write_home(home, postgres=True)
    env = _instance_env(work, home, postgres)
    code_env = env | team_sim.env() | {
        "DYNSYNC_DUCKDB_PATH": str(work / "dynsync.duckdb"),
        "DYNSYNC_CONFIG": str(REPO_ROOT / "dynsync.yaml"),
        "DYNSYNC_SCHEDULE_CRON": "* * * * *",
    }  # fmt: skip
    # The schema first, once (the recipe's dynsync-migrate.service): the services then only
    # open it, never race to create it.
    migrate = subprocess.run(
        unit_command("dynsync-migrate.service", {}), cwd=work, env=env, capture_output=True,
        text=True, timeout=START_TIMEOUT_S, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    grpc_port, ui_port = free_loopback_port(), free_loopback_port()
    workspace = str(_workspace(work, grpc_port))
    url = f"http://127.0.0.1:{ui_port}"
    svc = Services(url=url, home=home, db=work / "dynsync.duckdb", log_path=work / "webserver.log",
                   proc=None, pg=postgres, code_env=code_env)  # type: ignore[arg-type]  # fmt: skip
    try:
        code = unit_command("dynsync-code-server.service", {"-p": str(grpc_port)})
        _start("code-server", code, code_env, work, svc)
        svc.proc = svc.procs["code-server"]  # the webserver's, once it is started
        svc.wait_for("the code server", lambda: _serving(grpc_port), START_TIMEOUT_S, 1.0)
        daemon = unit_command("dynsync-daemon.service", {"-w": workspace})
        _start("daemon", daemon, env, work, svc)
        web = unit_command("dynsync-webserver.service", {"-p": str(ui_port), "-w": workspace})
        _start("webserver", web, env, work, svc)
        svc.proc = svc.procs["webserver"]
        svc.wait_for("the webserver and the dynsync code location", lambda: _ready(svc),
                     START_TIMEOUT_S, 2.0)  # fmt: skip
        yield svc
    finally:
        svc.session.close()
        for proc in reversed(list(svc.procs.values())):
            _stop(proc)


# -- the schedule, a run and a backfill ------------------------------------------------------


def test_the_daemon_ticks_and_runs_a_run_and_a_backfill(services: Services) -> None:
    dev = services
    repository = _repository(dev)
    check_the_webserver_sees_the_daemon_and_postgres(dev)
    tick_run = wait_for_a_scheduled_run(dev, repository)
    # Launched at once: the run queue (tag dynsync/writer) starts them one after another.
    run_id = _launch_run(dev, repository, _day(0))
    backfill_days = [_day(-3), _day(-2)]
    backfill_id = _launch_job_backfill(dev, repository, backfill_days)

    for launched in (tick_run, run_id):
        run = _wait_run(dev, launched)
        assert run["status"] == "SUCCESS", f"{run}\n{dev.log_tail()}"
    backfill = dev.wait_for(
        f"backfill {backfill_id}", lambda: _backfill_done(dev, backfill_id), RUN_TIMEOUT_S, 2.0
    )
    assert backfill["status"] in {"COMPLETED", "COMPLETED_SUCCESS"}, f"{backfill}\n{dev.log_tail()}"
    assert backfill["numPartitions"] == len(backfill_days)
    assert [r["status"] for r in backfill["runs"]] == ["SUCCESS"]

    # All of it is in PostgreSQL: the three runs and the tick, and no SQLite file anywhere.
    assert dev.pg is not None
    statuses = dict(_rows(dev.pg, "SELECT run_id, status FROM runs"))
    backfill_run = backfill["runs"][0]["runId"]
    assert {statuses.get(r) for r in (tick_run, run_id, backfill_run)} == {"SUCCESS"}
    assert _rows(dev.pg, "SELECT count(*) FROM job_ticks WHERE status = 'SUCCESS'")[0][0] >= 1
    assert not list(dev.home.glob("**/*.db")), "the instance fell back to SQLite files"
    for name, path in dev.logs.items():
        assert dev.pg.password not in path.read_text(errors="replace"), f"{name} log has it"


def check_the_webserver_sees_the_daemon_and_postgres(dev: Services) -> None:
    """The daemon is another process: the webserver knows it is alive only from the heartbeats
    it writes to the shared database."""

    def healthy() -> dict[str, Any] | None:
        instance = dev.graphql(INSTANCE)["instance"]
        statuses = instance["daemonHealth"]["allDaemonStatuses"]
        required = {s["daemonType"]: s["healthy"] for s in statuses if s["required"]}
        wanted = ("SCHEDULER", "QUEUED_RUN_COORDINATOR", "BACKFILL")
        return instance if all(required.get(d) for d in wanted) else None

    instance = dev.wait_for("healthy daemon heartbeats", healthy, START_TIMEOUT_S, 2.0)
    if instance["info"] is not None:  # the instance's description, when the webserver shows it
        assert "PostgresRunStorage" in instance["info"], instance["info"]


def wait_for_a_scheduled_run(dev: Services, repository: str) -> str:
    """The daemon ticks the schedule (every minute here) and the tick requests a run."""
    selector = {
        "repositoryLocationName": LOCATION,
        "repositoryName": repository,
        "scheduleName": "every_five_minutes",
    }

    def requested() -> str | None:
        schedule = dev.graphql(SCHEDULE, {"selector": selector})["scheduleOrError"]
        assert schedule["__typename"] == "Schedule", schedule
        assert schedule["cronSchedule"] == "* * * * *"  # DYNSYNC_SCHEDULE_CRON, read at load
        ticks = schedule["scheduleState"]["ticks"]
        failed = [t for t in ticks if t["status"] == "FAILURE"]
        assert not failed, f"a tick failed: {failed[0]['error']}"
        runs = [r for t in ticks if t["status"] == "SUCCESS" for r in t["runIds"]]
        return runs[-1] if runs else None  # ticks come newest first: the first one's run

    return dev.wait_for("a schedule tick that requests a run", requested, TICK_TIMEOUT_S, 3.0)


def _launch_run(dev: Services, repository: str, day: str) -> str:
    selector = {"repositoryLocationName": LOCATION, "repositoryName": repository, "jobName": JOB}
    tags = [{"key": "dagster/partition", "value": day}, {"key": "dynsync/trigger", "value": "e2e"}]
    launched = dev.graphql(
        LAUNCH_RUN,
        {
            "params": {
                "selector": selector,
                "runConfigData": {},
                "executionMetadata": {"tags": tags},
            }
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def _wait_run(dev: Services, run_id: str) -> dict[str, Any]:
    def finished() -> dict[str, Any] | None:
        run = dev.graphql(RUN, {"runId": run_id})["runOrError"]
        return run if run.get("status") in TERMINAL_RUN else None

    return dev.wait_for(f"run {run_id}", finished, RUN_TIMEOUT_S, 2.0)


def _backfill_done(dev: Services, backfill_id: str) -> dict[str, Any] | None:
    backfill = dev.graphql(BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
    return backfill if backfill.get("status") in TERMINAL_BACKFILL else None


# -- two run workers, one pool slot ----------------------------------------------------------


def test_two_workers_on_two_homes_never_sync_at_once(
    services: Services, team_sim: Simulator, tmp_path: Path
) -> None:
    pg = services.pg
    assert pg is not None
    _stop_schedule(services)
    services.wait_for("no run in flight", lambda: _idle(pg), RUN_TIMEOUT_S, 2.0)

    team_sim.faults.inject("429", times=1, path_contains="contacts", retry_after=THROTTLE_S)
    workers = []
    for name in ("machine-a", "machine-b"):
        home = tmp_path / name / "dagster_home"
        home.mkdir(parents=True)
        shutil.copy(services.home / "dagster.yaml", home / "dagster.yaml")  # same database
        out = (tmp_path / f"{name}.out").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "dynsync_dagster.commands.cli", "sync"],
            cwd=tmp_path, env=services.code_env | {"DAGSTER_HOME": str(home)},
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
        workers.append((name, proc, out))
    for name, proc, out in workers:
        code = proc.wait(timeout=RUN_TIMEOUT_S)
        out.close()
        text = (tmp_path / f"{name}.out").read_text()
        assert code == 0, f"{name}: dynsync sync exited {code}:\n{text}"

    cli_runs = [r for (r,) in _rows(pg, "SELECT run_id FROM run_tags "
                                        "WHERE key = 'dynsync/trigger' AND value = 'cli'")]  # fmt: skip
    assert len(cli_runs) == 2, cli_runs
    # Every cycle ever run on this instance (the services' too) had the store to itself.
    cycles = _step_intervals(pg, "dynamics_sync")
    for (run_a, a), (run_b, b) in combinations(cycles.items(), 2):
        assert a[1] <= b[0] or b[1] <= a[0], f"cycles of runs {run_a} and {run_b} overlap: {a} {b}"
    # And the two workers did contend: one asked for the slot while the other held it.
    blocked = {
        r for (r,) in _rows(pg, "SELECT DISTINCT run_id FROM event_logs WHERE step_key = "
                                "'dynamics_sync' AND event LIKE %s",
                            "%blocked by limit for pool duckdb_write%")
    }  # fmt: skip
    assert blocked & set(cli_runs), "neither worker waited for the pool: the test proved nothing"
    _assert_sync_runs_apart(services.db, cli_runs)


def _stop_schedule(dev: Services) -> None:
    """Nothing else may start now: no tick may take the 429 or the slot."""
    repository = _repository(dev)
    selector = {
        "repositoryLocationName": LOCATION,
        "repositoryName": repository,
        "scheduleName": "every_five_minutes",
    }
    schedule = dev.graphql(SCHEDULE, {"selector": selector})["scheduleOrError"]
    stopped = dev.graphql(STOP_SCHEDULE, {"id": schedule["id"]})["stopRunningSchedule"]
    assert stopped["__typename"] == "ScheduleStateResult", stopped
    assert stopped["scheduleState"]["status"] == "STOPPED"


def _idle(pg: ThrowawayPostgres) -> bool | None:
    ((count,),) = _rows(pg, "SELECT count(*) FROM runs WHERE status = ANY(%s)", list(IN_FLIGHT))
    return True if count == 0 else None


def _step_intervals(pg: ThrowawayPostgres, step: str) -> dict[str, tuple[datetime, datetime]]:
    """Run -> (start, end) of its `step`, from the event log the runs share."""
    rows = _rows(
        pg,
        "SELECT run_id, min(timestamp) FILTER (WHERE dagster_event_type = 'STEP_START'), "
        "max(timestamp) FILTER (WHERE dagster_event_type IN ('STEP_SUCCESS', 'STEP_FAILURE')) "
        "FROM event_logs WHERE step_key = %s GROUP BY run_id",
        step,
    )
    assert rows and all(start and end for _, start, end in rows), rows
    return {run_id: (start, end) for run_id, start, end in rows}


def _assert_sync_runs_apart(db: Path, run_ids: list[str]) -> None:
    """The store's own record says the same: the two cycles' times do not overlap. (Read from
    the working store: the published copy is not rewritten for a cycle that changed nothing.)"""
    with duckdb.connect(str(working_path(db)), read_only=True) as con:
        rows = con.execute(
            "SELECT run_id, started_at, finished_at FROM sync_runs WHERE run_id IN (?, ?) "
            "ORDER BY started_at",
            run_ids,
        ).fetchall()
    assert len(rows) == 2 and all(r[2] is not None for r in rows), rows
    assert rows[0][2] <= rows[1][1], f"the two cycles overlap in sync_runs: {rows}"


# -- dynsync dev --postgres ------------------------------------------------------------------


def test_dynsync_dev_postgres_serves_the_ui_and_stops_it_all(tmp_path: Path) -> None:
    port = free_loopback_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DYNAMICS_", "DAGSTER_"))}
    env.update(PYTHONUNBUFFERED="1")
    out = tmp_path / "dev.out"
    argv = [sys.executable, "-m", "dynsync_dagster.commands.cli", "dev", "--postgres",
            "--dir", str(tmp_path / "dev"), "--port", str(port), "--accounts", "20",
            "--contacts", "120", "--trickle-per-minute", "30"]  # fmt: skip
    with out.open("wb") as log:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    watched: list[psutil.Process] = []
    session = requests.Session()
    session.trust_env = False
    try:
        text = _wait_text(out, proc, "Dagster UI: ")
        server_port = re.search(r"PostgreSQL on 127\.0\.0\.1:(\d+)", text)
        assert server_port, text
        server = _postmaster(int(server_port.group(1)))
        home = tmp_path / "dev" / "dagster_home_postgres"
        assert (home / "dagster.yaml").read_text() == instance_yaml(postgres=True)
        assert not list(home.glob("**/*.db")), "the instance fell back to SQLite files"
        body = {"query": INSTANCE}
        answer = session.post(f"http://127.0.0.1:{port}/graphql", json=body, timeout=30).json()
        info = answer["data"]["instance"]["info"]
        assert info is None or "PostgresRunStorage" in info, info
        watched = [*psutil.Process(proc.pid).children(recursive=True), server]

        stopping = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the foreground group
        assert proc.wait(timeout=90) == 0, out.read_text()[-3000:]
        _, alive = psutil.wait_procs(watched, timeout=15)
        print(f"dynsync dev --postgres stopped everything in {time.monotonic() - stopping:.1f}s")
        assert not alive, f"left running after dynsync dev stopped: {alive}"
        assert "Traceback" not in out.read_text()
    finally:
        session.close()
        for p in [*watched, psutil.Process(proc.pid)] if proc.poll() is None else watched:
            with contextlib.suppress(psutil.Error):
                p.kill()
        proc.wait(timeout=10)


def _wait_text(out: Path, proc: subprocess.Popen, marker: str) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while marker not in (text := out.read_text(errors="replace")):
        assert proc.poll() is None, f"dynsync dev exited:\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"no {marker!r} yet:\n{text[-3000:]}"
        time.sleep(0.5)
    return text


def _postmaster(port: int) -> psutil.Process:
    """The server `dynsync dev` started: pg_ctl detaches it, so it is no child of ours."""
    for p in psutil.process_iter(["cmdline"]):
        cmdline = p.info["cmdline"] or []
        if cmdline and Path(cmdline[0]).name == "postgres" and str(port) in cmdline:
            return p
    pytest.fail(f"no PostgreSQL server listening on port {port}")


def test_the_deployment_files_match_the_tested_setup(tmp_path: Path) -> None:
    """deploy/ on paper: the same variables and the same instance policy as the tests use."""
    env_files = {p.name: p.read_text() for p in DEPLOY.glob("*.env.example")}
    assert env_files, "deploy/*.env.example missing"
    dagster_env = env_files["dagster.env.example"]
    for name in PG_VARIABLES:
        assert re.search(rf"^{name}=", dagster_env, re.M), name
    assert "DAGSTER_PG_PASSWORD=\n" in dagster_env or "DAGSTER_PG_PASSWORD=<" in dagster_env
    for unit in ("dynsync-code-server.service", "dynsync-daemon.service",
                 "dynsync-webserver.service", "dynsync-migrate.service"):  # fmt: skip
        text = (DEPLOY / "systemd" / unit).read_text()
        assert "EnvironmentFile=/etc/dynsync/dagster.env" in text, unit
        dynamics = "EnvironmentFile=/etc/dynsync/dynsync.env" in text
        assert dynamics == (unit == "dynsync-code-server.service"), unit  # secrets: code only
    _systemd_verify(tmp_path)
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    policy = yaml.safe_load(instance_yaml(postgres=False))
    concurrency = values["concurrency"]
    assert concurrency["pools"]["defaultLimit"] == policy["concurrency"]["pools"]["default_limit"]
    runs = policy["concurrency"]["runs"]
    assert concurrency["runs"]["maxConcurrentRuns"] == runs["max_concurrent_runs"]
    assert concurrency["runs"]["tagConcurrencyLimits"] == runs["tag_concurrency_limits"]
    retries = values["dagsterDaemon"]["runRetries"]
    assert retries["maxRetries"] == policy["run_retries"]["max_retries"]
    assert (
        retries["retryOnAssetOrOpFailure"] == policy["run_retries"]["retry_on_asset_or_op_failure"]
    )
    assert values["telemetry"]["enabled"] == policy["telemetry"]["enabled"]
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"


def _systemd_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` on the units, with this checkout's environment and env files in
    place of /opt/dynsync and /etc/dynsync (it checks that every ExecStart exists)."""
    if shutil.which("systemd-analyze") is None:
        return
    for unit in (DEPLOY / "systemd").iterdir():
        text = unit.read_text().replace("/opt/dynsync/.venv/bin", str(BIN))
        text = re.sub(r"/etc/dynsync/(\w+)\.env", rf"{DEPLOY}/\1.env.example", text)
        (tmp_path / unit.name).write_text(text)
    units = sorted(str(p) for p in tmp_path.iterdir())
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", *units],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and not done.stderr.strip(), done.stdout + done.stderr
