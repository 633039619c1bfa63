"""A real `dagster dev` (webserver and daemon) on a free loopback port, against the simulator.

Package-scoped: starting Dagster costs ~20 s, so the GraphQL test and the browser test share
one deployment, which stops when the last test here is done (not at the end of the whole
suite). Everything listens on 127.0.0.1 and talks only to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests

from dynsync_dagster.simulator import DatasetSpec, Simulator
from tests.support import REPO as REPO_ROOT

START_TIMEOUT_S = 150
STOP_TIMEOUT_S = 30

# Small on purpose: the tests check that Dagster drives the sync, not the sync's speed.
E2E_SPEC = DatasetSpec(
    accounts=25, contacts=220, sized_accounts=(12,), orphan_contacts=3, seed=29, history_days=30
)

T = TypeVar("T")


class GraphQLError(AssertionError):
    """The webserver answered, but with GraphQL errors."""


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class DagsterDev:
    """Handle on a running `dagster dev`: its URL, GraphQL and log, for assertions."""

    url: str
    home: Path
    db: Path
    log_path: Path
    proc: subprocess.Popen
    # trust_env=False: an HTTP(S)_PROXY in the environment must not reroute loopback calls.
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.session.trust_env = False

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = self.session.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
        )
        if response.status_code != 200:
            # Dagster puts GraphQL validation errors in a 400/500 body: show them.
            raise GraphQLError(f"HTTP {response.status_code} from /graphql: {response.text[:2000]}")
        body = response.json()
        if body.get("errors"):
            raise GraphQLError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def log_tail(self, lines: int = 80) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no dagster dev log)"
        return "\n".join(text.splitlines()[-lines:])

    def wait_for(
        self, what: str, probe: Callable[[], T | None], timeout_s: float, interval_s: float = 1.0
    ) -> T:
        """Poll `probe` until it returns something not None; fail with the log tail if not."""
        deadline = time.monotonic() + timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"dagster dev exited with {self.proc.returncode} while waiting for "
                    f"{what}\n--- dagster dev log ---\n{self.log_tail()}"
                )
            try:
                value = probe()
            except (requests.RequestException, GraphQLError) as exc:
                # The webserver restarts code locations and can briefly refuse; keep polling.
                value, last_error = None, exc
            if value is not None:
                return value
            time.sleep(interval_s)
        pytest.fail(
            f"timed out after {timeout_s:.0f}s waiting for {what} (last error: "
            f"{last_error})\n--- dagster dev log ---\n{self.log_tail()}"
        )


@pytest.fixture(scope="package")
def e2e_sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    """The simulator in this process (like tests/conftest.py's `sim`, shared by the package)."""
    with Simulator(E2E_SPEC, state_dir=tmp_path_factory.mktemp("e2e-sim")) as sim:
        yield sim


def _dagster_env(sim: Simulator, home: Path, db: Path) -> dict[str, str]:
    # Drop inherited DYNAMICS_* (a developer's real org) so only the simulator is reachable.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYNAMICS_")}
    env.update(sim.env(flow="client_credentials"))
    env.update(
        DAGSTER_HOME=str(home),
        DYNSYNC_DUCKDB_PATH=str(db),
        DYNSYNC_CONFIG=str(REPO_ROOT / "dynsync.yaml"),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
        # Dagster 1.13's webserver validates asset backfills in an order that depends on the
        # hash seed (see test_dagster_dev.py): one fixed seed makes every run behave alike.
        PYTHONHASHSEED="2",
    )
    for proxy in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        env.pop(proxy, None)
    return env


def _ready(dev: DagsterDev) -> bool | None:
    """The webserver answers and the `dynsync` code location has loaded."""
    if dev.session.get(f"{dev.url}/server_info", timeout=5).status_code != 200:
        return None
    data = dev.graphql(
        """{ workspaceOrError { __typename ... on Workspace { locationEntries {
              name loadStatus locationOrLoadError { __typename ... on PythonError { message } }
        } } } }"""
    )
    entries = data["workspaceOrError"].get("locationEntries") or []
    for entry in entries:
        if entry["name"] != "dynsync" or entry["loadStatus"] != "LOADED":
            continue
        loaded = entry["locationOrLoadError"] or {}
        if loaded.get("__typename") == "PythonError":
            pytest.fail(f"code location dynsync failed to load: {loaded.get('message')}")
        if loaded.get("__typename") == "RepositoryLocation":
            return True
    return None


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the whole group (dagster dev, webserver, daemon, code server, run workers), then
    SIGKILL whatever is left: nothing may outlive the session."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def _launch(env: dict[str, str], work: Path, attempt: int) -> DagsterDev:
    port = free_loopback_port()
    log_path = work / f"dagster-dev-{attempt}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dagster",
                "dev",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-w",
                str(REPO_ROOT / "workspace.yaml"),
            ],
            cwd=work,  # not the repo: dagster dev must not pick up a stray dagster.yaml there
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown can kill all of it
        )
    return DagsterDev(
        url=f"http://127.0.0.1:{port}",
        home=Path(env["DAGSTER_HOME"]),
        db=Path(env["DYNSYNC_DUCKDB_PATH"]),
        log_path=log_path,
        proc=proc,
    )


@pytest.fixture(scope="package")
def dagster_dev(
    e2e_sim: Simulator,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[DagsterDev]:
    work = tmp_path_factory.mktemp("dagster-dev")
    home = work / "dagster_home"
    home.mkdir()
    # The committed instance config (pools, run queue, retries), in a throwaway DAGSTER_HOME.
    shutil.copy(REPO_ROOT / "dagster_home" / "dagster.yaml", home / "dagster.yaml")
    env = _dagster_env(e2e_sim, home, work / "dynsync.duckdb")
    dev = _launch(env, work, attempt=1)
    try:
        if _port_clash(dev):
            # The free port was taken before the webserver bound it (~15 s later): once more.
            _stop(dev.proc)
            dev.session.close()
            dev = _launch(env, work, attempt=2)
        dev.wait_for(
            "the webserver and the dynsync code location", lambda: _ready(dev), START_TIMEOUT_S
        )
        yield dev
    finally:
        dev.session.close()
        _stop(dev.proc)


def _port_clash(dev: DagsterDev) -> bool:
    """Wait until `dagster dev` serves (False) or its webserver could not bind (True). The
    webserver logs the bind error but does not exit, so read the log."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while dev.proc.poll() is None and time.monotonic() < deadline:
        if "address already in use" in dev.log_tail(400).lower():
            return True
        with contextlib.suppress(requests.RequestException):
            if dev.session.get(f"{dev.url}/server_info", timeout=5).status_code == 200:
                return "address already in use" in dev.log_tail(400).lower()
        time.sleep(1.0)
    return False
