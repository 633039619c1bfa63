"""Running the sync job from a command, and reporting a failure in one line."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

# The checkout: dynsync.yaml, workspace.yaml and dagster_home/ live here.
REPO_ROOT = Path(__file__).resolve().parents[2]
JOB_NAME = "dynamics_sync_job"


class CommandError(RuntimeError):
    """A failure to report in one line, without a traceback."""


def run_sync_job(trigger: str = "cli"):
    """Run the sync job in this process, on the Dagster instance at DAGSTER_HOME if set."""
    import dagster as dg

    from dynsync_dagster.definitions import defs

    job = defs().resolve_job_def(JOB_NAME)
    home = os.environ.get("DAGSTER_HOME")
    instance = dg.DagsterInstance.get() if home else dg.DagsterInstance.ephemeral()
    with instance:
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
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data is not None:
            error = event.step_failure_data.error
            while error is not None and error.cause is not None:
                error = error.cause
            if error is not None:
                return error.message.strip().splitlines()[0]
    return "the sync run failed (see the Dagster run log)"
