"""Whether the five-minute schedule is ticking, from a Dagster instance's ticks.

Kept apart from the asset modules so that `dynsync status` loads Dagster, not the sync.
"""

from datetime import UTC, datetime
from pathlib import Path

import dagster as dg

# defs/schedules.py's every_five_minutes (tests/defs/test_admin.py holds them equal).
SCHEDULE_NAME = "every_five_minutes"
# A tick older than this (two missed ticks) means no daemon is evaluating the schedule.
_TICK_LATE_S = 11 * 60


def schedule_state(instance: dg.DagsterInstance, now: datetime | None = None) -> str:
    """Whether the five-minute schedule is running, as the instance's ticks tell it."""
    now = now or datetime.now(UTC)
    name = SCHEDULE_NAME
    states = [s for s in instance.all_instigator_state() if s.name == name]
    if not states:
        return (
            f"{name} has never ticked on this Dagster instance: start it with `dynsync dev` "
            "(or `dagster dev`, which runs the daemon)"
        )
    if all(s.status.value == "STOPPED" for s in states):
        return f"{name} is stopped: start it on the Automation page of the Dagster UI"
    ticks = [
        t
        for s in states
        for t in instance.get_ticks(s.instigator_origin_id, s.selector_id, limit=1)
    ]
    if not ticks:
        return f"{name} is on but has not ticked yet: is the daemon running (`dagster dev`)?"
    age = now.timestamp() - max(t.timestamp for t in ticks)
    if age > _TICK_LATE_S:
        return (
            f"{name} is on, but its last tick was {int(age // 60)} min ago: the daemon is not "
            "running; start it with `dynsync dev` or `dagster dev`"
        )
    return f"{name} is running (last tick {int(age)} s ago)"


def schedule_state_at(home: Path) -> str:
    """schedule_state() on the Dagster instance in `home` (what `dynsync status` reads)."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return schedule_state(instance)
