"""Running the sync job from a command, and reporting a failure in one line."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from dynsync_dagster.sync import progress

# The checkout: dynsync.yaml, workspace.yaml and dagster_home/ live here.
REPO_ROOT = Path(__file__).resolve().parents[2]
# The project's Dagster instance: where `dynsync dev` and the README's `dagster dev` look, so
# a `dynsync sync` run shows up in the UI next to the scheduled ones.
PROJECT_DAGSTER_HOME = REPO_ROOT / "dagster_home"
JOB_NAME = "dynamics_sync_job"


class CommandError(RuntimeError):
    """A failure to report in one line, without a traceback."""


def dagster_home() -> Path:
    """DAGSTER_HOME if set, else the project's own instance. One without a dagster.yaml gets
    the project's (pools, run queue, telemetry off): without one, Dagster prints a warning
    and a telemetry banner on every command."""
    home = Path(os.environ.get("DAGSTER_HOME") or PROJECT_DAGSTER_HOME).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        shutil.copyfile(REPO_ROOT / "dagster_home" / "dagster.yaml", config)
    return home


@contextlib.contextmanager
def _opening(home: Path) -> Iterator[None]:
    """Hold a lock on `home` while its instance opens. Opening a new SQLite instance creates its
    tables, and two commands doing that at once (cron firing `dynsync sync` twice on a fresh
    checkout) fail with "alembic_version has more than one head"."""
    with open(home / ".dynsync-open.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def run_sync_job(trigger: str = "cli"):
    """Run the sync job in this process, recorded on the Dagster instance at `dagster_home()`."""
    import dagster as dg

    from dynsync_dagster.definitions import defs

    progress.show_on_terminal()  # a full read's progress, if stderr is a terminal
    # DagsterInstance.get() is the public way to open an instance: it reads DAGSTER_HOME.
    home = dagster_home()
    os.environ["DAGSTER_HOME"] = str(home)
    with _opening(home):
        instance = dg.DagsterInstance.get()
    with instance:
        # Loaded while the instance is open: loading definitions binds Dagster's process-wide
        # state to the instance in use, and one closed earlier in the process would fail it.
        job = defs().resolve_job_def(JOB_NAME)
        result = job.execute_in_process(
            instance=instance,
            partition_key=datetime.now(UTC).strftime("%Y-%m-%d"),
            tags={"dynsync/trigger": trigger},
            # The failure is reported below in one line; Dagster's own event log (with the
            # stack trace) stays in the run's history, not on the terminal.
            run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}},
            raise_on_error=False,
        )
    if not result.success:
        raise CommandError(_failure_message(result))
    return result


def _failure_message(result) -> str:
    """The first line of the step's own error, without Dagster's wrapping or a class path."""
    for event in result.all_events:
        if not (event.is_step_failure and event.step_failure_data is not None):
            continue
        data = event.step_failure_data
        if data.user_failure_data is not None and data.user_failure_data.description:
            return data.user_failure_data.description.strip().splitlines()[0]  # a dg.Failure
        error = data.error
        while error is not None and error.cause is not None:
            error = error.cause
        if error is not None:
            return _without_class_path(error.message, error.cls_name)
    return "the sync run failed (see the Dagster run log)"


def _without_class_path(message: str, cls_name: str | None) -> str:
    """'pkg.mod.SomeError: what happened' -> 'what happened' (first line only)."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    if cls_name:
        head, sep, rest = first.partition(f"{cls_name}: ")
        module = head.rstrip(".")
        dotted = not module or all(p.isidentifier() for p in module.split("."))
        if sep and rest.strip() and dotted:
            return rest.strip()
    return first
