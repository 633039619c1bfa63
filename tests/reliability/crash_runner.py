"""A fork server for the crash tests: import dynsync once, run each cycle in a forked child.

The test writes one JSON job per line on stdin; for each, this process forks a child that runs
one real cycle (`run_cycle`) and prints progress markers, and the test SIGKILLs the child at a
seeded point. Forking from a warm process makes a kill round cost milliseconds of start-up
instead of seconds of imports. Output lines (stdout, flushed):

    ZYGOTE READY            imports done, waiting for jobs
    STARTED <pid>           a child is running the job
    <pid> READY|FETCH <entity>|KEYPAGE|COPIED <entity>|STAGED|WRITE|MERGED|PUBLISH|DONE
                            the child's progress
    EXIT <pid> <status>     the child ended (status as from os.waitpid)

The child slows itself at chosen places (a pause before staging each page, a pause inside the
write transaction after the merge, a pause half-way through copying the store for readers) so
that kills land in every phase of a cycle.

A job with `"parallel": true` switches the parallel first copy on the way a user does
(DYNSYNC_PARALLEL_READ=1 in the child's environment; `"ranges"` sets the number of key
ranges). COPIED marks an entity's parallel read done, STAGED the whole fetch done (the stage
closed, the store not yet opened for writing); KEYPAGE a page of the key read that brings
the delta link, which `"token_pause_s"` slows: the copy then ends before it and commits
without it, and the next cycle's end of that read can be killed.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import Any


def _preload() -> None:
    # Everything a cycle imports lazily, so forked children start warm.
    import duckdb  # noqa: F401
    import msal  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401
    import requests  # noqa: F401

    import dynsync_dagster.sync.cycle  # noqa: F401


def _emit(line: str) -> None:
    # One write(2) per line: the fork server and its child share the pipe, and a line split
    # over two writes could interleave with the other process's output.
    os.write(1, (line + "\n").encode())


def _mark(text: str) -> None:
    _emit(f"{os.getpid()} {text}")


def _instrument(page_pause_s: float, write_pause_s: float, publish_pause_s: float) -> None:
    """Markers and pauses around the stage's page writes, the store's merge and the publish."""
    import dynsync_dagster.sync.cycle as cycle_module
    from dynsync_dagster.sync.stage import Stage

    add_page = Stage.add_page

    def paced_add_page(self: Stage, entity: str, page: Any) -> None:
        _mark(f"FETCH {entity}")
        time.sleep(page_pause_s)
        add_page(self, entity, page)

    Stage.add_page = paced_add_page  # type: ignore[method-assign]

    apply_cycle = cycle_module.apply_cycle

    def paced_apply_cycle(con: Any, ctx: Any) -> Any:
        _mark("WRITE")
        counts = apply_cycle(con, ctx)
        _mark("MERGED")
        time.sleep(write_pause_s)  # still inside the cycle's open transaction
        return counts

    cycle_module.apply_cycle = paced_apply_cycle  # type: ignore[assignment]

    import dynsync_dagster.store.publish as publish_module

    fill = publish_module.fill

    def paced_fill(working: Any, fd: int, reused: bool) -> tuple[int, int]:
        _mark("PUBLISH")
        # Half the file, a pause, then the rest: a kill lands mid-copy (over the spare or
        # into a new file) or just before the rename.
        half = os.path.getsize(working) // 2
        with open(working, "rb") as src:
            os.copy_file_range(src.fileno(), fd, half, offset_dst=0)
        time.sleep(publish_pause_s)
        return fill(working, fd, reused)

    publish_module.fill = paced_fill  # type: ignore[assignment]


def _instrument_parallel(staged_pause_s: float, token_pause_s: float) -> None:
    """Markers after each entity's parallel read and after the whole fetch; a slow key read."""
    import dynsync_dagster.sync.parallel_read as parallel_module
    from dynsync_dagster.sync.stage import Stage

    read_all = parallel_module.read_all

    def marked_read_all(read: Any, options: Any, mode: str) -> Any:
        state = read_all(read, options, mode)
        _mark(f"COPIED {read.entity}")
        return state

    parallel_module.read_all = marked_read_all  # type: ignore[assignment]

    finish = Stage.finish

    def marked_finish(self: Stage) -> None:
        finish(self)
        _mark("STAGED")
        time.sleep(staged_pause_s)  # the stage is whole, the store's transaction not begun

    Stage.finish = marked_finish  # type: ignore[method-assign]

    from urllib.parse import parse_qs, urlsplit

    from dynsync_dagster.dynamics.client import DynamicsClient

    iter_link = DynamicsClient.iter_link

    def paced_iter_link(self: DynamicsClient, link: str, **options: Any) -> Any:
        pages = iter_link(self, link, **options)
        if parse_qs(urlsplit(link).query).get("$select") not in (["contactid"], ["accountid"]):
            return pages  # not a key read
        return _paced_key_pages(pages, token_pause_s)

    DynamicsClient.iter_link = paced_iter_link  # type: ignore[method-assign]


def _paced_key_pages(pages: Any, pause_s: float) -> Any:
    for page in pages:
        _mark("KEYPAGE")
        time.sleep(pause_s)
        yield page


def _options(job: dict[str, Any]) -> Any:
    """The cycle's options; a parallel job reads its switch from the environment, as a
    user's cycle does."""
    import dataclasses

    from dynsync_dagster.sync.cycle import CycleOptions
    from dynsync_dagster.sync.parallel_read import ENV_SWITCH

    if not job.get("parallel"):
        return CycleOptions(trigger="crash-test")  # as the environment says
    os.environ[ENV_SWITCH] = "1"
    _instrument_parallel(job.get("staged_pause_s", 0.2), job.get("token_pause_s", 0.0))
    options = CycleOptions(trigger="crash-test")
    assert options.parallel is not None, "DYNSYNC_PARALLEL_READ=1 did not switch it on"
    if job.get("ranges"):
        parallel = dataclasses.replace(options.parallel, ranges=job["ranges"])
        options = dataclasses.replace(options, parallel=parallel)
    return options


def _run(job: dict[str, Any]) -> int:
    from pathlib import Path

    from dynsync_dagster.settings import ConnectionSettings, SyncSettings
    from dynsync_dagster.sync.cycle import run_cycle

    _instrument(
        job.get("page_pause_s", 0.03),
        job.get("write_pause_s", 0.3),
        job.get("publish_pause_s", 0.2),
    )
    options = _options(job)
    conn = ConnectionSettings.from_env(job["env"])
    settings = SyncSettings(
        tuple(job["account_fields"]), tuple(job["contact_fields"]), job.get("limit", 5000)
    )
    _mark("READY")
    run_cycle(conn, settings, Path(job["db"]), options)
    _mark("DONE")
    return 0


def main() -> int:
    _preload()
    _emit("ZYGOTE READY")
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _run(job)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _emit(f"STARTED {pid}")
        _, status = os.waitpid(pid, 0)
        _emit(f"EXIT {pid} {status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
