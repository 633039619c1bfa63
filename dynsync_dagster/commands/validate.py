"""`dynsync validate`: Marketo's "Validate Sync" checklist, against the configured org."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dynsync_dagster.dynamics.client import DynamicsClient, RetryPolicy
from dynsync_dagster.dynamics.errors import DynamicsError, ThrottledError, TransientError
from dynsync_dagster.dynamics.fields import (
    ENTITIES,
    ENTITY_SET,
    PRIMARY_KEY,
    ROLES_UNREADABLE,
    FieldPlan,
    FieldSelectionError,
    resolve_fields,
)
from dynsync_dagster.settings import ConnectionSettings, SettingsError, SyncSettings

# A checklist answers in seconds: a few quick retries, not a sync's minutes of patience.
_RETRY = RetryPolicy(max_attempts=3, max_total_wait_s=10, base_backoff_s=0.5, max_backoff_s=4)
_AGAIN = "then run `dynsync validate` again"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    # Passed, but with something to look at: a sync goes on, without what the detail names.
    warning: bool = False


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
    with DynamicsClient(conn, retry=_RETRY) as client:
        roles_warned = yield from _access_checks(client)
        if sync is not None and roles_warned is not None:
            yield from _field_checks(client, sync, roles_warned)


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


def _access_checks(client: DynamicsClient) -> Generator[Check, None, bool | None]:
    """Sign-in, the sync user's roles, and per entity its read privilege and change tracking.
    Returns whether the roles were unreadable (already warned); None when signing in failed."""
    who = yield from _step(
        "credentials and URL", client.whoami, lambda w: _describe_whoami(client, w)
    )
    if who is None:
        return None
    roles_warned = yield from _roles(client, who.get("UserId"))
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
    return roles_warned


def _roles(client: DynamicsClient, user_id: str) -> Generator[Check, None, bool]:
    """The sync user's roles. A 403 (a minimal role without prvReadRole) is a warning, as
    in a sync: its column privileges then decide. Returns whether it warned."""
    name = "sync user's roles"
    try:
        roles = client.role_names(user_id)
    except DynamicsError as exc:
        if exc.status != 403:
            yield Check(name, False, _failure(exc))
            return False
        yield Check(
            name,
            True,
            f"{exc.message}. A sync still runs: it treats the sync user as not a System "
            "Administrator, and its column privileges decide which secured fields sync",
            warning=True,
        )
        return True
    yield Check(name, True, ", ".join(roles) or "no security role (it cannot read anything)")
    return False


def _field_checks(
    client: DynamicsClient, sync: SyncSettings, roles_warned: bool
) -> Iterator[Check]:
    """Whether every selected field exists (an error, as in a sync) and whether the sync user
    can read it (a warning: a sync leaves an unreadable field out and goes on)."""
    try:
        plan = resolve_fields(
            client,
            sync.account_fields,
            sync.contact_fields,
            sync_filter_field=sync.sync_filter_field,
        )
    except FieldSelectionError as exc:
        yield Check(
            "selected fields exist",
            False,
            f"{exc.problem}. Fix the names in account_fields / contact_fields of {sync.source}, "
            f"{_AGAIN}",
        )
        return
    except DynamicsError as exc:
        yield Check("selected fields exist", False, _failure(exc))
        return
    selected = len(sync.account_fields) + len(sync.contact_fields)
    yield Check("selected fields exist", True, f"all {selected} selected fields exist in the org")
    for warning in plan.warnings:
        if not (roles_warned and warning.startswith(ROLES_UNREADABLE)):
            yield Check("sync user's access", True, warning, warning=True)
    yield _readable(plan)
    yield _sync_filter(plan, sync.sync_filter_field)


def _sync_filter(plan: FieldPlan, name: str) -> Check:
    """Whether Marketo's sync filter is in force, and where."""
    where = [f"{e}.{plan.sync_filter[e]}" for e in ENTITIES if e in plan.sync_filter]
    if where:
        detail = f"{', '.join(where)} decides per record (No keeps a record out or stale)"
    else:
        detail = f"no {name} column on account or contact: every record syncs"
    return Check("sync filter", True, detail)


def _readable(plan: FieldPlan) -> Check:
    """The selected fields a sync leaves out, each with why and the fix."""
    synced = sum(len(plan.synced(e)) for e in ENTITIES)
    excluded = plan.excluded()
    if not excluded:
        return Check("selected fields readable", True, f"all {synced} selected fields sync")
    left_out = "; ".join(f"{d.entity}.{d.field}: {d.reason}" for d in excluded)
    return Check(
        "selected fields readable",
        True,
        f"{synced} sync; {len(excluded)} will not sync until fixed (a sync leaves "
        f"{'it' if len(excluded) == 1 else 'them'} out and goes on): {left_out}",
        warning=True,
    )


def _step(name: str, call: Callable, describe: Callable) -> Generator[Check, None, Any]:
    """Run one check; the generator's return value is the call's result, or None on failure."""
    try:
        result = call()
    except DynamicsError as exc:  # AuthError too: a wrong secret or tenant
        yield Check(name, False, _failure(exc))
        return None
    yield Check(name, True, describe(result))
    return result


def _failure(exc: DynamicsError) -> str:
    """What failed and what to check. When retries ran out, the client's message ends with
    its advice to a sync ("retry the cycle later"), which means nothing here: validate's own
    next step replaces that last clause. (Until the client keeps its advice apart from
    what happened, this relies on the advice being the message's last "; " clause.)"""
    if isinstance(exc, ThrottledError | TransientError):
        what = exc.message.rpartition("; ")[0] or exc.message
        check = (
            "wait a few minutes (other integrations signed in as the same user count against "
            "the same limits)"
            if isinstance(exc, ThrottledError)
            else "check DYNAMICS_URL, DYNAMICS_AUTHORITY_HOST and that this machine reaches "
            "them (network, proxy, firewall)"
        )
        return f"{what}; {check}, {_AGAIN}"
    return exc.message


def _describe_whoami(client: DynamicsClient, who: dict) -> str:
    user_id, org = who.get("UserId"), who.get("OrganizationId")
    name = _user_name(client, user_id)
    if name is None:
        return f"signed in; the sync user is {user_id} (organisation {org})"
    return f"signed in; the sync user is {name} (user id {user_id}, organisation {org})"


def _user_name(client: DynamicsClient, user_id: str | None) -> str | None:
    """The sync user's full name and sign-in name, best effort: without prvReadUser it may
    not read its own systemuser row, and the GUID alone must do."""
    try:
        checked = str(uuid.UUID(str(user_id)))
        row = client.get_json(f"systemusers({checked})", {"$select": "fullname,domainname"})
    except (ValueError, DynamicsError):
        return None
    full, domain = row.get("fullname"), row.get("domainname")
    if full and domain and domain != full:
        return f"{full} <{domain}>"
    return full or domain or None


def render(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        mark = "FAIL" if not c.ok else "WARN" if c.warning else "ok  "
        lines.append(f"[{mark}] {c.name}: {c.detail}")
    failed = sum(1 for c in checks if not c.ok)
    warned = sum(1 for c in checks if c.ok and c.warning)
    if failed:
        lines.append(f"{failed} check(s) failed")
    elif warned:
        lines.append(f"all checks passed, with {warned} warning(s) to look at")
    else:
        lines.append("all checks passed")
    return "\n".join(lines)
