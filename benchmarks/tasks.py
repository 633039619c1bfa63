"""The measured operations, each run in a child process (`run.py --child TASK`).

Each task reads its payload, times only the operation itself (imports excluded) and returns
`wall_s`, `records` and whatever details the report shows.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

API = "/api/data/v9.2/"
PAGE_SIZE = 5000


def run_child(task: str, payload_path: Path, out_path: Path) -> int:
    payload = json.loads(payload_path.read_text())
    result = CHILD_TASKS[task](payload)
    out_path.write_text(json.dumps(result, default=str))
    return 0


def _token_session(env: dict[str, str]):
    """A requests session and an msal app that verify TLS against the simulator's CA.

    REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE would override a session-level verify, so msal gets a
    session with trust_env off, and our own GETs pass verify= per request.
    """
    import msal
    import requests

    ca = env["DYNAMICS_CA_BUNDLE"]
    session = requests.Session()
    session.trust_env = False
    session.verify = ca
    app = msal.ConfidentialClientApplication(
        env["DYNAMICS_CLIENT_ID"],
        client_credential=env["DYNAMICS_CLIENT_SECRET"],
        authority=f"{env['DYNAMICS_AUTHORITY_HOST']}/{env['DYNAMICS_TENANT_ID']}",
        instance_discovery=False,
        http_client=session,
    )
    scopes = [env["DYNAMICS_URL"] + "/.default"]

    def token() -> str:
        result = app.acquire_token_for_client(scopes=scopes)
        if "access_token" not in result:
            raise RuntimeError(
                f"no token: {result.get('error')}: {result.get('error_description')}"
            )
        return result["access_token"]

    return session, token, ca


def _odata_pages(
    env: dict[str, str],
    http: tuple,
    entity_set: str,
    select: list[str],
    track: bool,
    parse: Callable[[bytes], Any],
    annotations: str,
) -> Iterator[list[dict[str, Any]]]:
    """Pages of one entity set: the same $select and Prefer (`annotations`: what dynsync's
    stage asks for, passed in so that a bare loop imports no DuckDB or pyarrow)."""
    session, token, ca = http
    prefer = f'odata.maxpagesize={PAGE_SIZE}, odata.include-annotations="{annotations}"'
    if track:
        prefer += ", odata.track-changes"
    url: str | None = f"{env['DYNAMICS_URL']}{API}{entity_set}?$select={','.join(select)}"
    while url:
        resp = session.get(
            url,
            headers={
                "Authorization": f"Bearer {token()}",
                "Accept": "application/json",
                "OData-MaxVersion": "4.0",
                "OData-Version": "4.0",
                "Prefer": prefer,
            },
            verify=ca,
            timeout=300,
        )
        resp.raise_for_status()
        body = parse(resp.content)
        yield body["value"]
        url = body.get("@odata.nextLink")


def task_ceiling(p: dict[str, Any]) -> dict[str, Any]:
    import orjson

    env = dict(os.environ)
    http = _token_session(env)
    t0 = time.perf_counter()
    rows = pages = 0
    for entity_set, select, track in p["reads"]:
        pages_ = _odata_pages(env, http, entity_set, select, track, orjson.loads, p["annotations"])
        for page in pages_:
            rows += len(page)
            pages += 1
    return {"wall_s": time.perf_counter() - t0, "records": rows, "pages": pages}


def task_cycle(p: dict[str, Any]) -> dict[str, Any]:
    from dynsync_dagster.settings import ConnectionSettings, SyncSettings
    from dynsync_dagster.sync.cycle import CycleOptions, run_cycle

    conn = ConnectionSettings.from_env(os.environ)
    sync = dataclasses.replace(
        SyncSettings.load(p["config"]), activity_log_contact_limit=int(p["limit"])
    )
    t0 = time.perf_counter()
    r = run_cycle(conn, sync, Path(p["db"]), CycleOptions(trigger="benchmark"))
    wall = time.perf_counter() - t0
    counts = dataclasses.asdict(r.counts)
    counts["suppressed_accounts"] = len(counts["suppressed_accounts"])
    return {
        "wall_s": wall,
        "records": sum(r.rows_read.values()),
        "rows_read": r.rows_read,
        "modes": r.modes,
        "fetch_s": round(r.fetch_s, 3),
        "write_s": round(r.write_s, 3),
        # Copying the store for readers after the commit (publish.py); 0 when not copied.
        "publish_s": round(r.publish_s, 4),
        "published_mb": round(r.published.bytes / 1e6, 1) if r.published else 0.0,
        # ... of which: the copy, the fsync, the rename; and whether the copy rewrote the spare
        # (only changed blocks written) or made a new file (publish.py)
        "publish_steps_s": (
            [r.published.copy_s, r.published.sync_s, r.published.swap_s] if r.published else []
        ),
        "publish_reused_spare": bool(r.published and r.published.reused_spare),
        "publish_written_mb": round(r.published.written_bytes / 1e6, 1) if r.published else 0.0,
        "requests": r.stats.requests,
        "counts": counts,
        "table_rows": r.table_rows,
    }


def task_local_edit(p: dict[str, Any]) -> dict[str, Any]:
    from dynsync_dagster.sync.local_edit import set_account_field

    t0 = time.perf_counter()
    r = set_account_field(Path(p["db"]), p["contact_id"], p["field"], p["value"])
    return {
        "wall_s": time.perf_counter() - t0,
        "records": r.contacts_changed,
        "activities_logged": r.activities_logged,
    }


def task_dagster(p: dict[str, Any]) -> dict[str, Any]:
    t0 = time.perf_counter()
    import dagster as dg

    from dynsync_dagster.definitions import defs
    from dynsync_dagster.store.connection import open_store, working_path
    from dynsync_dagster.store.publish import read_record

    job = defs().resolve_job_def("dynamics_sync_job")
    load_s = time.perf_counter() - t0
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    with dg.DagsterInstance.get() as instance:
        t1 = time.perf_counter()
        result = job.execute_in_process(
            instance=instance, partition_key=today, tags={"dynsync/trigger": "schedule"}
        )
        total = time.perf_counter() - t1
    record = read_record(Path(p["db"]))
    # A cycle that changed nothing is not published: its sync_runs row is in the working store.
    with open_store(working_path(Path(p["db"])), read_only=True, wait_s=30) as con:
        row = con.execute(
            "SELECT epoch(finished_at) - epoch(started_at), accounts_read, contacts_read, outcome "
            "FROM sync_runs WHERE run_id = ?",
            [result.run_id],
        ).fetchone()
    if row is None:
        raise RuntimeError(f"no sync_runs row for Dagster run {result.run_id}")
    return {
        "wall_s": total,
        "records": int(row[1] or 0) + int(row[2] or 0),
        "cycle_s": float(row[0]),
        "outcome": row[3],
        "load_definitions_s": round(load_s, 3),
        "success": result.success,
        "published": record is not None and record.run_id == result.run_id,
    }


def task_dlt(p: dict[str, Any]) -> dict[str, Any]:
    import dlt
    import orjson

    env = dict(os.environ)
    http = _token_session(env)
    seen = {"rows": 0}

    def make(entity_set: str, select: list[str], track: bool, key: str):
        def pages():
            for page in _odata_pages(
                env, http, entity_set, select, track, orjson.loads, p["annotations"]
            ):
                seen["rows"] += len(page)
                yield page

        return dlt.resource(pages, name=entity_set, primary_key=key, write_disposition="merge")

    pipeline = dlt.pipeline(
        pipeline_name="dynsync_peer",
        pipelines_dir=p["pipelines_dir"],
        destination=dlt.destinations.duckdb(credentials=p["db"]),
        dataset_name="dynamics",
    )
    resources = [make(s, sel, track, key) for s, sel, track, key in p["reads"]]
    t0 = time.perf_counter()
    info = pipeline.run(resources, loader_file_format=p.get("loader_file_format"))
    wall = time.perf_counter() - t0
    import duckdb

    with duckdb.connect(p["db"], read_only=True) as con:
        stored = {
            s: con.execute(f"SELECT count(*) FROM dynamics.{s}").fetchone()[0]
            for s, *_ in p["reads"]
        }
    return {
        "wall_s": wall,
        "records": seen["rows"],
        "stored": stored,
        "loads": len(info.loads_ids),
        "loader_file_format": p.get("loader_file_format")
        or str(pipeline.destination.capabilities().preferred_loader_file_format),
    }


WARM_MODULES = (
    "duckdb",
    "pyarrow",
    "pandas",
    "orjson",
    "msal",
    "requests",
    "dagster",
    "dynsync_dagster.sync.cycle",
    "dynsync_dagster.sync.local_edit",
    "dynsync_dagster.definitions",
    "dlt",
)


def task_warmup(p: dict[str, Any]) -> dict[str, Any]:
    """Import what the measured children import, and run a 3-row dlt load, so that their
    bytecode is cached before anything is measured (not itself a figure)."""
    t0 = time.perf_counter()
    for name in WARM_MODULES:
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            importlib.import_module(name)
    if importlib.util.find_spec("dlt") is not None:
        import dlt

        rows = [{"id": i, "name": f"row {i}"} for i in range(3)]
        pipeline = dlt.pipeline(
            pipeline_name="warmup",
            pipelines_dir=str(Path(p["dir"]) / "pipelines"),
            destination=dlt.destinations.duckdb(credentials=str(Path(p["dir"]) / "w.duckdb")),
            dataset_name="warmup",
        )
        pipeline.run(dlt.resource(rows, name="rows", primary_key="id", write_disposition="merge"))
    return {"wall_s": time.perf_counter() - t0, "records": 0}


CHILD_TASKS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "warmup": task_warmup,
    "ceiling": task_ceiling,
    "cycle": task_cycle,
    "local_edit": task_local_edit,
    "dagster": task_dagster,
    "dlt": task_dlt,
}
