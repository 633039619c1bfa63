"""One contender of the concurrency test: a scheduled run, a backfill, or `dynsync sync`.

    python -m tests.reliability.contender schedule|backfill|cli GO_FILE

It imports everything first, then waits for GO_FILE to appear, so that the contenders start
their cycles together however long their imports took; then it runs and prints one JSON line:
{"mode", "ok", "error"}. The environment carries the DYNAMICS_* and DYNSYNC_* settings.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path


def _dagster_run(mode: str) -> tuple[bool, str]:
    import dagster as dg

    from dynsync_dagster.commands.runs import JOB_NAME, _failure_message
    from dynsync_dagster.definitions import defs

    job = defs().resolve_job_def(JOB_NAME)
    today = datetime.now(UTC)
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    _wait_for_go()
    with dg.DagsterInstance.ephemeral() as instance:
        if mode == "schedule":
            result = job.execute_in_process(
                instance=instance,
                partition_key=today.strftime("%Y-%m-%d"),
                tags={"dynsync/trigger": "schedule"},
                run_config=quiet,
                raise_on_error=False,
            )
        else:  # a single-run backfill of the last three days
            start = (today - timedelta(days=2)).strftime("%Y-%m-%d")
            result = job.execute_in_process(
                instance=instance,
                tags={
                    "dagster/asset_partition_range_start": start,
                    "dagster/asset_partition_range_end": today.strftime("%Y-%m-%d"),
                    "dagster/backfill": "concurrency-test",
                    "dynsync/trigger": "backfill",
                },
                run_config=quiet,
                raise_on_error=False,
            )
    return result.success, "" if result.success else _failure_message(result)


def _cli_run() -> tuple[bool, str]:
    from dynsync_dagster.commands import cli

    _wait_for_go()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(["sync"])
    return code == 0, err.getvalue().strip()


GO: Path | None = None


def _wait_for_go() -> None:
    assert GO is not None
    deadline = time.monotonic() + 300
    while not GO.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{GO} never appeared")
        time.sleep(0.01)


def main(argv: list[str]) -> int:
    global GO
    mode, GO = argv[0], Path(argv[1])
    try:
        ok, error = _cli_run() if mode == "cli" else _dagster_run(mode)
    except BaseException as exc:  # reported, and judged by the test
        ok, error = False, f"UNCAUGHT {type(exc).__name__}: {exc}"
    sys.stdout.write(json.dumps({"mode": mode, "ok": ok, "error": error}) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
