"""`dynsync validate`: Marketo's "Validate Sync" checklist, against the configured org."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from dynsync_dagster.dynamics.client import DynamicsClient
from dynsync_dagster.dynamics.errors import AuthError, DynamicsError
from dynsync_dagster.dynamics.fields import (
    ENTITIES,
    ENTITY_SET,
    PRIMARY_KEY,
    FieldSelectionError,
    resolve_fields,
)
from dynsync_dagster.settings import ConnectionSettings, SettingsError, SyncSettings


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def validate(env: Mapping[str, str] | None = None, config: str | None = None) -> list[Check]:
    """Run every check that can run; a failed prerequisite skips the checks that need it."""
    return list(_checks(env, config))


def _checks(env: Mapping[str, str] | None, config: str | None) -> Iterator[Check]:
    try:
        conn = ConnectionSettings.from_env(env)
        yield Check("environment", True, f"{conn.url} ({conn.flow.replace('_', ' ')})")
    except SettingsError as exc:
        yield Check("environment", False, str(exc))
        return
    try:
        sync = SyncSettings.load(config)
        yield Check(
            "settings file",
            True,
            f"{sync.source}: {len(sync.account_fields)} account and {len(sync.contact_fields)} "
            f"contact fields, activity-log limit {sync.activity_log_contact_limit}",
        )
    except SettingsError as exc:
        yield Check("settings file", False, str(exc))
        sync = None

    with DynamicsClient(conn) as client:
        who = yield from _step("credentials and URL", client.whoami, _describe_whoami)
        if who is None:
            return
        user_id = who.get("UserId")
        roles = yield from _step(
            "sync user's roles",
            lambda: client.role_names(user_id),
            lambda r: ", ".join(r) or "no security role (it cannot read anything)",
        )
        for entity in ENTITIES:
            yield from _step(
                f"read privilege on {entity}",
                lambda e=entity: client.get_json(
                    ENTITY_SET[e], {"$select": PRIMARY_KEY[e], "$top": "1"}
                ),
                lambda _r: "can read",
            )
            yield from _step(
                f"change tracking on {entity}",
                lambda e=entity: client.entity_definition(e),
                lambda d: (
                    "enabled (delta links)"
                    if d.get("ChangeTrackingEnabled")
                    else "off: dynsync reads by modifiedon with an overlap and finds deletes only "
                    "on a full read; enable change tracking on the table for exact deletes"
                ),
            )
        if sync is None or roles is None:
            return
        try:
            plan = resolve_fields(client, sync.account_fields, sync.contact_fields)
        except FieldSelectionError as exc:
            yield Check("selected fields", False, str(exc))
            return
        except DynamicsError as exc:
            yield Check("selected fields", False, str(exc))
            return
        excluded = plan.excluded()
        synced = sum(len(plan.synced(e)) for e in ENTITIES)
        if excluded:
            detail = "; ".join(f"{d.entity}.{d.field}: {d.reason}" for d in excluded)
            yield Check("selected fields readable", False, f"{synced} sync, but {detail}")
        else:
            yield Check("selected fields readable", True, f"all {synced} selected fields sync")


def _step(name: str, call: Callable, describe: Callable) -> Iterator[Check]:
    """Run one check; the generator's return value is the call's result, or None on failure."""
    try:
        result = call()
    except AuthError as exc:
        yield Check(name, False, str(exc))
        return None
    except DynamicsError as exc:
        yield Check(name, False, str(exc))
        return None
    yield Check(name, True, describe(result))
    return result


def _describe_whoami(who: dict) -> str:
    return f"signed in; the sync user is {who.get('UserId')} (organisation {who.get('OrganizationId')})"


def render(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        mark = "ok  " if c.ok else "FAIL"
        lines.append(f"[{mark}] {c.name}: {c.detail}")
    failed = sum(1 for c in checks if not c.ok)
    lines.append("all checks passed" if not failed else f"{failed} check(s) failed")
    return "\n".join(lines)
