"""A snapshot of the code location: every asset, check, job and schedule, as plain JSON.

The test fails on any change to the graph, so that the change shows up in review as a diff of
tests/defs/snapshots/definitions.json. When the change is meant, rewrite the file with

    DYNSYNC_UPDATE_SNAPSHOTS=1 uv run pytest tests/defs/test_snapshot.py

and commit it with the change. The suite moves the partitions' first day (tests/__init__.py);
the snapshot shows it as a placeholder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import dagster as dg

from dynsync_dagster.defs.partitions import DEFAULT_PARTITION_START
from tests import TEST_PARTITION_START

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"


def _first_line(text: str | None) -> str | None:
    return text.strip().splitlines()[0] if text else None


def _partitions(partitions_def: dg.PartitionsDefinition | None) -> str | None:
    """The partitions, with the suite's start date (tests/__init__.py) as a placeholder."""
    if partitions_def is None:
        return None
    return str(partitions_def).replace(TEST_PARTITION_START, "<DYNSYNC_PARTITION_START>")


def test_partitions_start_on_2025_01_01_by_default() -> None:
    assert DEFAULT_PARTITION_START == "2025-01-01"  # README "In Dagster" says so


def _asset(definitions: dg.Definitions, spec: dg.AssetSpec) -> dict:
    assets_def = definitions.resolve_assets_def(spec.key)
    return {
        "key": spec.key.to_user_string(),
        "group": spec.group_name,
        "kinds": sorted(spec.kinds),
        "deps": sorted(dep.asset_key.to_user_string() for dep in spec.deps),
        "partitions": _partitions(spec.partitions_def),
        "description": _first_line(spec.description),
        "metadata_keys": sorted(spec.metadata),
        "owners": sorted(spec.owners),
        "tags": dict(sorted(spec.tags.items())),
        "executable": assets_def.is_executable,
        "node": assets_def.node_def.name if assets_def.is_executable else None,
        "pool": assets_def.node_def.pool if assets_def.is_executable else None,
        "backfill_policy": str(assets_def.backfill_policy) if assets_def.backfill_policy else None,
    }


def _check(graph, key: dg.AssetCheckKey) -> dict:
    spec = graph.get_check_spec(key)
    return {
        "asset": key.asset_key.to_user_string(),
        "name": key.name,
        "description": _first_line(spec.description),
        "blocking": spec.blocking,
        "additional_deps": sorted(d.asset_key.to_user_string() for d in spec.additional_deps),
    }


def _job(job: dg.JobDefinition) -> dict:
    selected = job.asset_layer.selected_asset_keys if job.asset_layer else []
    return {
        "name": job.name,
        "description": _first_line(job.description),
        "tags": dict(sorted(job.tags.items())),
        "assets": sorted(k.to_user_string() for k in selected),
        "nodes": sorted(node.name for node in job.nodes),
    }


def _schedule(schedule: dg.ScheduleDefinition) -> dict:
    return {
        "name": schedule.name,
        "cron": schedule.cron_schedule,
        "job": schedule.job_name,
        "timezone": schedule.execution_timezone,
        "default_status": schedule.default_status.value,
        "description": _first_line(schedule.description),
    }


def summary(definitions: dg.Definitions) -> dict:
    """Everything a reviewer should see change, without values that differ per machine."""
    graph = definitions.resolve_asset_graph()
    repo = definitions.get_repository_def()
    specs = sorted(definitions.resolve_all_asset_specs(), key=lambda s: s.key.to_user_string())
    jobs = [j for j in definitions.resolve_all_job_defs() if not j.name.startswith("__")]
    checks = sorted(graph.asset_check_keys, key=lambda k: (k.asset_key.to_user_string(), k.name))
    return {
        "assets": [_asset(definitions, spec) for spec in specs],
        "asset_checks": [_check(graph, key) for key in checks],
        "jobs": [_job(job) for job in sorted(jobs, key=lambda j: j.name)],
        "schedules": [_schedule(s) for s in sorted(repo.schedule_defs, key=lambda s: s.name)],
        "resources": {
            key: type(resource).__name__
            for key, resource in sorted((definitions.resources or {}).items())
        },
    }


def test_the_definitions_match_their_snapshot(definitions: dg.Definitions) -> None:
    """Fails on any change to assets, checks, jobs or schedules; with
    DYNSYNC_UPDATE_SNAPSHOTS=1 it rewrites the snapshot instead."""
    current = json.dumps(summary(definitions), indent=2, sort_keys=True) + "\n"
    if os.environ.get("DYNSYNC_UPDATE_SNAPSHOTS") == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(current, encoding="utf-8")
        return
    assert SNAPSHOT.is_file(), f"no snapshot yet: run with DYNSYNC_UPDATE_SNAPSHOTS=1 ({SNAPSHOT})"
    assert current == SNAPSHOT.read_text(encoding="utf-8"), (
        "the definitions changed: if that is meant, rewrite the snapshot with "
        "DYNSYNC_UPDATE_SNAPSHOTS=1 and commit it"
    )
