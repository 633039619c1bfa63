"""`dynsync validate`: Marketo's "Validate Sync" checklist, against the configured org."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dynsync_dagster.dynamics.client import DynamicsClient
from dynsync_dagster.dynamics.errors import DynamicsError
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
    except SettingsError as exc:
        yield Check("environment", False, str(exc))
        return
    yield Check("environment", True, f"{conn.url} ({conn.flow.replace('_', ' ')})")
    sync = yield from _settings_file(config)
    with DynamicsClient(conn) as client:
        roles = yield from _access_checks(client)
        if sync is not None and roles is not None:
            yield from _field_checks(client, sync)


def _settings_file(config: str | None) -> Generator[Check, None, SyncSettings | None]:
    try:
        sync = SyncSettings.load(config)
    except SettingsError as exc:
        yield Check("settings file", False, str(exc))
        return None
    yield Check(
        "settings file",
        True,
        f"{sync.source}: {len(sync.account_fields)} account and {len(sync.contact_fields)} "
        f"contact fields, activity-log limit {sync.activity_log_contact_limit}",
    )
    return sync


def _access_checks(client: DynamicsClient) -> Generator[Check, None, list[str] | None]:
    """Sign-in, the sync user's roles, and per entity its read privilege and change tracking.
    Returns the roles; None when signing in or reading them failed."""
    who = yield from _step("credentials and URL", client.whoami, _describe_whoami)
    if who is None:
        return None
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
    return roles


def _field_checks(client: DynamicsClient, sync: SyncSettings) -> Iterator[Check]:
    """Whether every selected field exists and the sync user can read it."""
    try:
        plan = resolve_fields(client, sync.account_fields, sync.contact_fields)
    except (FieldSelectionError, DynamicsError) as exc:
        yield Check("selected fields", False, str(exc))
        return
    excluded = plan.excluded()
    synced = sum(len(plan.synced(e)) for e in ENTITIES)
    if excluded:
        detail = "; ".join(f"{d.entity}.{d.field}: {d.reason}" for d in excluded)
        yield Check("selected fields readable", False, f"{synced} sync, but {detail}")
    else:
        yield Check("selected fields readable", True, f"all {synced} selected fields sync")


def _step(name: str, call: Callable, describe: Callable) -> Generator[Check, None, Any]:
    """Run one check; the generator's return value is the call's result, or None on failure."""
    try:
        result = call()
    except DynamicsError as exc:  # AuthError too: a wrong secret or tenant
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
