"""The benchmark's machinery: measured child processes (wall, peak RSS) and the simulator."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dynsync_dagster.simulator import SimulatorAdmin
from dynsync_dagster.simulator.process import SimulatorProcess

REPO = Path(__file__).resolve().parent.parent
RUN_SCRIPT = Path(__file__).resolve().parent / "run.py"  # children run `run.py --child TASK`
SIMULATOR_START_TIMEOUT_S = 1800  # generating a million contacts takes minutes


@dataclasses.dataclass
class Run:
    wall_s: float
    records: int
    rss_mb: float | None
    process_s: float
    detail: dict[str, Any]
    cpu_s: float | None = None  # user + system CPU seconds of the whole process (os.wait4)


@dataclasses.dataclass
class Figure:
    key: str
    title: str
    unit: str  # what `records` counts
    runs: list[Run] = dataclasses.field(default_factory=list)
    error: str | None = None
    note: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.runs) and self.error is None

    def median(self, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.runs if getattr(r, attr) is not None]
        return statistics.median(values) if values else None

    @property
    def wall(self) -> float | None:
        return self.median("wall_s")

    @property
    def rate(self) -> float | None:
        rates = [r.records / r.wall_s for r in self.runs if r.wall_s > 0]
        return statistics.median(rates) if rates else None

    @property
    def rss(self) -> float | None:
        return self.median("rss_mb")

    @property
    def records(self) -> float | None:
        return self.median("records")


# The measured command runs under this small launcher, which reports the command's rusage.
# Spawned straight from this process, a child's ru_maxrss would start at this process's own
# peak: Python spawns with vfork, and the kernel carries the borrowed memory's high-water mark
# into the child at exec (a 400 MB parent makes `python -c pass` report 413 MB). The launcher
# is 10 MB. ru_maxrss is then the largest single process among the command and the
# descendants it waited for, not the tree's sum. wall_s runs from spawn to exit.
LAUNCHER = """
import json, os, subprocess, sys, time
t0 = time.perf_counter()
child = subprocess.Popen(sys.argv[2:])
_, status, ru = os.wait4(child.pid, 0)
usage = {"code": os.waitstatus_to_exitcode(status), "maxrss_kb": ru.ru_maxrss,
         "cpu_s": ru.ru_utime + ru.ru_stime, "wall_s": time.perf_counter() - t0}
with open(sys.argv[1], "w") as f:
    json.dump(usage, f)
"""


@dataclasses.dataclass
class _Spawned:
    """How a measured process ended."""

    code: int
    rss_mb: float
    killed: bool
    cpu_s: float
    process_s: float = 0.0


class ChildFailed(RuntimeError):
    """A measured child process failed; the message carries the tail of its log."""


def mb(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f} MB"


def one_line_error(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# ---- the simulator in its own process ---------------------------------------------------------


class SimProcess:
    """The simulator the figures are measured against: its DYNAMICS_*, admin API and /proc."""

    def __init__(self, state_dir: Path, args: list[str], env: Mapping[str, str]) -> None:
        self.process = SimulatorProcess(state_dir, args, env=env, cwd=REPO)
        self.admin: SimulatorAdmin | None = None

    @property
    def env(self) -> dict[str, str]:
        return self.process.env

    @property
    def org_url(self) -> str:
        return self.process.info["org_url"]

    @property
    def startup_s(self) -> float:
        return self.process.startup_s

    def start(self) -> SimProcess:
        state_dir = self.process.state_dir
        if state_dir.exists():  # a --work-dir reused: never mix two orgs' files
            shutil.rmtree(state_dir)
        self.process.start(timeout_s=SIMULATOR_START_TIMEOUT_S)
        self.admin = SimulatorAdmin.from_state_dir(state_dir)
        return self

    def rss_mb(self) -> float | None:
        try:
            with open(f"/proc/{self.process.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def cpu_s(self) -> float | None:
        """CPU seconds the simulator process has used so far (user + system)."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.admin is not None:
            self.admin.close()
            self.admin = None
        self.process.stop(timeout_s=30)


# ---- measured child processes -----------------------------------------------------------------


class Bench:
    """Runs child processes and keeps their logs."""

    def __init__(self, work: Path, timeout_s: float) -> None:
        self.work = work
        self.timeout_s = timeout_s
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self._n = 0

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """This process's environment without any DYNAMICS_/DYNSYNC_ settings, plus `extra`.

        Children write and reuse bytecode under the work dir even where PYTHONDONTWRITEBYTECODE
        is set (it is on this machine): otherwise every child recompiles pandas, dagster and
        duckdb's helpers from source, which no installed deployment does, and a lazy import
        inside a measured operation would be timed as seconds of "sync".
        """
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("DYNAMICS_", "DYNSYNC_", "DAGSTER_HOME"))
        }
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(self.work / "pycache")
        env["RUNTIME__DLTHUB_TELEMETRY"] = "false"  # dlt: no network calls from the benchmark
        env.update(extra or {})
        return env

    def simulator(self, label: str, args: list[str]) -> SimProcess:
        """The simulator for one store, not yet started; its files under the work dir."""
        return SimProcess(self.work / f"sim-{label}", args, self.env())

    def child(
        self,
        task: str,
        payload: dict[str, Any],
        env: Mapping[str, str],
        sim: SimProcess | None = None,
    ) -> Run:
        """Run `task` in a fresh process; its result plus peak RSS (os.wait4) as a Run.

        With `sim`, the CPU seconds the simulator spent meanwhile are kept with the run: they
        show whether the simulator, not the code measured, was the busy one.
        """
        sim_cpu = sim.cpu_s() if sim is not None else None
        cmd, out_path, log_path = self._prepare(task, payload)
        spawned = self._spawn(task, cmd, env, log_path)
        if not out_path.exists():
            raise ChildFailed(f"{task}: no result written\n{tail(log_path)}")
        result = json.loads(out_path.read_text())
        self._context(result, sim, sim_cpu)
        return Run(
            wall_s=float(result.pop("wall_s")),
            records=int(result.pop("records")),
            rss_mb=spawned.rss_mb,
            process_s=spawned.process_s,
            detail=result,
            cpu_s=spawned.cpu_s,
        )

    def command(
        self,
        label: str,
        cmd: list[str],
        env: Mapping[str, str],
        sim: SimProcess | None = None,
    ) -> Run:
        """Run a user's command as it is (`dynsync sync`), measured from spawn to exit.

        wall_s is the whole process's life (interpreter start, imports, everything it does);
        `records` is 0 until the caller counts what it did.
        """
        self._n += 1
        log_path = self.logs / f"{self._n:03d}-{label}.log"
        sim_cpu = sim.cpu_s() if sim is not None else None
        spawned = self._spawn(label, cmd, env, log_path)
        detail: dict[str, Any] = {"output": tail(log_path, 2)}
        self._context(detail, sim, sim_cpu)
        return Run(
            wall_s=spawned.process_s,
            records=0,
            rss_mb=spawned.rss_mb,
            process_s=spawned.process_s,
            detail=detail,
            cpu_s=spawned.cpu_s,
        )

    def _spawn(
        self, label: str, cmd: list[str], env: Mapping[str, str], log_path: Path
    ) -> _Spawned:
        """Start `cmd` through LAUNCHER and wait for it: spawn-to-exit seconds, peak RSS and CPU
        seconds, as the launcher measured them."""
        usage_path = log_path.with_suffix(".usage.json")
        usage_path.unlink(missing_ok=True)
        started = time.perf_counter()
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, str(usage_path), *cmd],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env(env),
                start_new_session=True,  # a timeout kills the launcher and what it started
            )
        spawned = self._wait(proc)
        spawned.process_s = time.perf_counter() - started
        if usage_path.exists():
            usage = json.loads(usage_path.read_text())
            spawned.code = usage["code"]
            spawned.rss_mb = usage["maxrss_kb"] / 1024  # Linux: kilobytes
            spawned.cpu_s = round(usage["cpu_s"], 2)
            spawned.process_s = usage["wall_s"]
        if spawned.killed:
            raise ChildFailed(f"{label}: killed after {self.timeout_s:.0f}s\n{tail(log_path)}")
        if spawned.code != 0:
            raise ChildFailed(f"{label}: exit code {spawned.code}\n{tail(log_path)}")
        return spawned

    @staticmethod
    def _context(detail: dict[str, Any], sim: SimProcess | None, sim_cpu: float | None) -> None:
        # Other processes on the machine skew every figure: keep the load next to each run.
        detail["load_1m"] = round(os.getloadavg()[0], 2)
        if sim is not None and sim_cpu is not None and (after := sim.cpu_s()) is not None:
            detail["sim_cpu_s"] = round(after - sim_cpu, 2)

    def _prepare(self, task: str, payload: dict[str, Any]) -> tuple[list[str], Path, Path]:
        """The child's command line (its payload written to a file), its output and log."""
        self._n += 1
        stem = f"{self._n:03d}-{task}"
        payload_path, out_path = self.logs / f"{stem}.in.json", self.logs / f"{stem}.out.json"
        payload_path.write_text(json.dumps(payload, default=str))
        cmd = [sys.executable, str(RUN_SCRIPT), "--child", task]
        cmd += ["--payload", str(payload_path), "--out", str(out_path)]
        return cmd, out_path, self.logs / f"{stem}.log"

    def _wait(self, proc: subprocess.Popen) -> _Spawned:
        """The launcher's exit once it ends or is killed (with its session) at the timeout."""
        killed = threading.Event()

        def kill() -> None:
            killed.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

        timer = threading.Timer(self.timeout_s, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        return _Spawned(
            code=proc.returncode,
            rss_mb=usage.ru_maxrss / 1024,  # Linux: kilobytes
            killed=killed.is_set(),
            cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
        )

    def measure(self, fig: Figure, repeat: int, once: Callable[[int], Run]) -> Figure:
        """Call `once(i)` `repeat` times; a failure is recorded on the figure, not raised."""
        for i in range(repeat):
            try:
                run = once(i)
            except Exception as exc:
                fig.error = one_line_error(exc)
                print(f"  {fig.title}: FAILED\n{exc}", flush=True)
                break
            fig.runs.append(run)
            print(
                f"  {fig.title} [{i + 1}/{repeat}]: {run.wall_s:.3f}s, {run.records:,} "
                f"{fig.unit}, peak RSS {mb(run.rss_mb)}",
                flush=True,
            )
        return fig
