"""The session's code location with its resources bound to the variables a test has set."""

from __future__ import annotations

import dagster as dg

from dynsync_dagster.defs.resources import build_resources


def bound_now(definitions: dg.Definitions) -> dg.Definitions:
    """`definitions` with resources that bind the variables set now.

    The resources bind only the variables set when the code location loads
    (defs/resources.py). A test sets its simulator's after the session loaded it, and loading
    it again after an `instance_for_test` would pick up that instance's state storage.
    """
    return dg.Definitions(
        assets=definitions.assets,
        asset_checks=definitions.asset_checks,
        jobs=definitions.jobs,
        schedules=definitions.schedules,
        sensors=definitions.sensors,
        resources=build_resources(),
        executor=definitions.executor,
    )
