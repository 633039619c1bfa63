"""Sync Status's backlog: how many records changed in Dynamics since a time, and the oldest.

One capped request per entity (`$count=true&$top=1`, oldest `modifiedon` first), never a full
read. Dataverse stops `@odata.count` at 5,000, so a larger backlog reads as "5,000+".
Deletions are not counted: Dataverse reports them only through a delta link, and polling one
would move nothing here but would cost a read of every change.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from dynsync_dagster.dynamics.client import DynamicsClient
from dynsync_dagster.dynamics.errors import DynamicsError
from dynsync_dagster.dynamics.fields import ENTITY_SET, PRIMARY_KEY
from dynsync_dagster.dynamics.transport import RetryPolicy
from dynsync_dagster.settings import ConnectionSettings

COUNT_CAP = 5000  # Dataverse's ceiling for @odata.count
# A status is a glance: a few quick attempts, not a cycle's minutes of patience.
_GLANCE = RetryPolicy(max_attempts=3, max_total_wait_s=15, base_backoff_s=0.5, max_backoff_s=5)


@dataclass(frozen=True)
class Pending:
    """Records of one entity modified after `since`, as Dynamics counts them."""

    entity: str
    since: datetime
    count: int  # at most COUNT_CAP
    oldest_modifiedon: datetime | None

    @property
    def capped(self) -> bool:
        return self.count >= COUNT_CAP

    @property
    def shown(self) -> str:
        """The count as a person reads it: `5,000+` where the API stops counting."""
        return f"{COUNT_CAP:,}+" if self.capped else str(self.count)


def pending_changes(conn: ConnectionSettings, since: dict[str, datetime]) -> dict[str, Pending]:
    """Per entity, what changed after its `since` (a client of its own, closed afterwards)."""
    with DynamicsClient(conn, retry=_GLANCE, timeout_s=30) as client:
        return {entity: pending_since(client, entity, t) for entity, t in since.items()}


def pending_since(client: DynamicsClient, entity: str, since: datetime) -> Pending:
    """Count the records of `entity` modified after `since` (one GET, at most one row)."""
    body = client.get_json(
        ENTITY_SET[entity],
        {
            "$select": f"{PRIMARY_KEY[entity]},modifiedon",
            "$filter": f"modifiedon gt {_odata_time(since)}",
            "$orderby": "modifiedon asc",
            "$top": "1",
            "$count": "true",
        },
    )
    rows = body.get("value")
    count = body.get("@odata.count")
    if not isinstance(rows, list) or not isinstance(count, int):
        raise DynamicsError(
            f"{ENTITY_SET[entity]}: the count query returned no @odata.count; the org's Web API "
            "does not answer $count=true as Dataverse does"
        )
    oldest = rows[0].get("modifiedon") if rows else None
    return Pending(entity, since, min(count, COUNT_CAP), _parse_time(oldest))


def _odata_time(value: datetime) -> str:
    """An OData DateTimeOffset literal at second precision, as Dataverse stamps modifiedon."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
