"""The Dataverse Web API as dynsync reads it: entity pages and delta links, metadata, who-am-I.

Every request goes through the transport (dynamics/transport.py), which sends it with
retries; this module decides what to ask for and reads the pages that come back.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import requests

from dynsync_dagster.dynamics.auth import TokenProvider, build_session
from dynsync_dagster.dynamics.budget import Budget, SpareGate
from dynsync_dagster.dynamics.errors import DynamicsError, PagingLoopError
from dynsync_dagster.dynamics.pages import ArrowDecoder, ArrowRows, decode_json
from dynsync_dagster.dynamics.transport import (
    ClientStats,
    Response,
    RetryPolicy,
    Transport,
    short_url,
)
from dynsync_dagster.settings import ConnectionSettings

_MAX_PAGE_SIZE = 5000
_DEFAULT_RETRY = RetryPolicy()  # frozen: sharing one instance is safe

_LOGICAL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,99}$")
_METADATA_TYPE = re.compile(r"^[A-Za-z]{1,80}AttributeMetadata$")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")
# Characters kept literal in OData query strings, as Dataverse's own links do.
_QUERY_SAFE = "$,()'/:@*"

_ATTRIBUTE_SELECT = (
    "LogicalName",
    "SchemaName",
    "AttributeType",
    "AttributeTypeName",
    "IsValidForRead",
    "IsSecured",
    "AttributeOf",
    "IsLogical",
    "MetadataId",
)


@dataclass
class Page:
    """One response page: its rows as the server sent them, or (read with an ArrowDecoder)
    as Arrow columns in `table`, with `rows` empty."""

    rows: list[dict[str, Any]]
    next_link: str | None
    delta_link: str | None
    is_delta: bool
    nbytes: int
    table: pa.Table | None = None

    def __len__(self) -> int:
        return self.table.num_rows if self.table is not None else len(self.rows)


class DynamicsClient:
    """Reads from the Dataverse Web API. Every request is a GET; there is no write method."""

    def __init__(
        self,
        conn: ConnectionSettings,
        *,
        retry: RetryPolicy = _DEFAULT_RETRY,
        page_size: int = _MAX_PAGE_SIZE,
        timeout_s: float = 120,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
        token_provider: TokenProvider | None = None,
    ) -> None:
        if not 1 <= page_size <= _MAX_PAGE_SIZE:
            raise ValueError(
                f"page_size must be 1..{_MAX_PAGE_SIZE} (Dataverse's cap), got {page_size}"
            )
        self._conn = conn
        self._api_root = conn.api_root
        self._page_size = page_size
        self._owns_session = session is None
        self._session = session if session is not None else build_session(conn)
        tokens = token_provider or TokenProvider(conn, self._session, timeout_s=timeout_s)
        self._transport = Transport(
            conn, self._session, tokens, retry=retry, timeout_s=timeout_s, sleep=sleep
        )
        self.stats: ClientStats = self._transport.stats
        self._options = dict(retry=retry, page_size=page_size, timeout_s=timeout_s, sleep=sleep)

    def fork(self, gate: Budget | SpareGate | None = None) -> DynamicsClient:
        """A client for another thread: its own HTTP session (a requests Session is not
        thread-safe) and stats, the same access tokens and options; its requests pass `gate`."""
        twin = DynamicsClient(self._conn, token_provider=self._transport.tokens, **self._options)
        twin._transport.gate = gate
        return twin

    def __repr__(self) -> str:
        return f"DynamicsClient(api_root={self._api_root!r}, flow={self._conn.flow!r})"

    def __enter__(self) -> DynamicsClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_session:
            self._session.close()

    # ---- public reads -------------------------------------------------------------------

    def get_json(self, path_or_url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        """GET one JSON document: a path under the API root, or an absolute URL inside it."""
        return self._transport.get(self._url(path_or_url, params), prefer=()).body

    def iter_pages(
        self,
        entity_set: str,
        *,
        select: Sequence[str],
        filter: str | None = None,
        orderby: str | None = None,
        top: int | None = None,
        track_changes: bool = False,
        annotations: str = "*",
        arrow: ArrowDecoder | None = None,
    ) -> Iterator[Page]:
        """Query an entity set and yield its pages one at a time, following nextLinks.

        With `track_changes` the last page carries the delta link to poll next time. With
        `arrow`, pages come as Arrow columns (Page.table) where they can.
        """
        if not _LOGICAL_NAME.match(entity_set):
            raise ValueError(f"entity set {entity_set!r} is not a Dataverse entity set name")
        if not select:
            raise ValueError(
                "select is empty: name the columns to read (without $select Dataverse "
                "returns every column, which is slow)"
            )
        if track_changes and (filter or orderby or top is not None):
            raise ValueError(
                "Dataverse rejects $filter, $orderby and $top with change tracking: "
                "a delta query always covers the whole table"
            )
        params = {"$select": ",".join(select)}
        if filter:
            params["$filter"] = filter
        if orderby:
            params["$orderby"] = orderby
        if top is not None:
            params["$top"] = str(top)
        url = self._url(entity_set, params)
        # Dataverse ignores $top when odata.maxpagesize is sent: send one or the other.
        prefer = self._prefer(track_changes, annotations, page_size=top is None)
        return self._follow(url, prefer, arrow)

    def query_link(
        self, entity_set: str, *, select: Sequence[str], filter: str | None, orderby: str | None
    ) -> str:
        """The URL of a query's first page, to save and follow later with `iter_link`."""
        params = {"$select": ",".join(select)}
        for key, value in (("$filter", filter), ("$orderby", orderby)):
            if value:
                params[key] = value
        return self._url(_checked_logical_name(entity_set), params)

    def iter_link(
        self,
        link: str,
        *,
        track_changes: bool = False,
        annotations: str = "*",
        arrow: ArrowDecoder | None = None,
    ) -> Iterator[Page]:
        """Follow a stored nextLink or deltaLink verbatim (resume or delta poll), then its pages."""
        url = self._url(link, None)
        return self._follow(url, self._prefer(track_changes, annotations, page_size=True), arrow)

    def whoami(self) -> dict[str, Any]:
        """`{"UserId", "BusinessUnitId", "OrganizationId"}` of the signed-in principal."""
        return self.get_json("WhoAmI")

    def entity_definition(self, logical_name: str) -> dict[str, Any]:
        name = _checked_logical_name(logical_name)
        return self.get_json(
            f"EntityDefinitions(LogicalName='{name}')",
            {
                "$select": "LogicalName,EntitySetName,PrimaryIdAttribute,PrimaryNameAttribute,"
                "ChangeTrackingEnabled,MetadataId"
            },
        )

    def attributes(self, logical_name: str) -> list[dict[str, Any]]:
        name = _checked_logical_name(logical_name)
        return self._collect(
            f"EntityDefinitions(LogicalName='{name}')/Attributes",
            {"$select": ",".join(_ATTRIBUTE_SELECT)},
        )

    def typed_attributes(
        self,
        logical_name: str,
        metadata_type: str,
        select: Sequence[str],
        expand: str | None = None,
    ) -> list[dict[str, Any]]:
        """Attributes of one metadata type via a cast segment, for type-specific properties.

        e.g. `("account", "PicklistAttributeMetadata", ["LogicalName"], "OptionSet")`.
        """
        name = _checked_logical_name(logical_name)
        if not _METADATA_TYPE.match(metadata_type):
            raise ValueError(
                f"metadata type {metadata_type!r} is not an attribute metadata type "
                "(e.g. PicklistAttributeMetadata, DateTimeAttributeMetadata)"
            )
        params = {"$select": ",".join(select)}
        if expand:
            params["$expand"] = expand
        return self._collect(
            f"EntityDefinitions(LogicalName='{name}')/Attributes/Microsoft.Dynamics.CRM.{metadata_type}",
            params,
        )

    def attribute_privileges(self, user_id: str) -> list[dict[str, Any]]:
        """Secured-column privileges of a user (direct and via teams): AttributeId, CanRead…"""
        uid = _checked_guid(user_id)
        body = self.get_json(
            f"systemusers({uid})/Microsoft.Dynamics.CRM.RetrievePrincipalAttributePrivileges()"
        )
        return list(body.get("AttributePrivileges") or [])

    def record_counts(self, logical_names: Sequence[str]) -> dict[str, int]:
        """Row counts per table from Dataverse's snapshot (up to a day old): an estimate, but
        the only count past `$count`'s cap of 5,000."""
        names = [_checked_logical_name(n) for n in logical_names]
        body = self.get_json(
            "RetrieveTotalRecordCount(EntityNames=@p1)",
            {"@p1": "[" + ",".join(f"'{n}'" for n in names) + "]"},
        )
        counts = body.get("EntityRecordCountCollection") or {}
        return {
            str(k): int(v)
            for k, v in zip(counts.get("Keys") or [], counts.get("Values") or [], strict=False)
        }

    def role_names(self, user_id: str) -> list[str]:
        uid = _checked_guid(user_id)
        rows = self._collect(f"systemusers({uid})/systemuserroles_association", {"$select": "name"})
        return [str(r["name"]) for r in rows if r.get("name") is not None]

    # ---- paging -------------------------------------------------------------------------

    def _prefer(self, track_changes: bool, annotations: str, *, page_size: bool) -> list[str]:
        prefer = []
        if page_size:
            prefer.append(f"odata.maxpagesize={self._page_size}")
        if annotations:
            prefer.append(f'odata.include-annotations="{annotations}"')
        if track_changes:
            prefer.append("odata.track-changes")
        return prefer

    def _follow(
        self, url: str, prefer: Sequence[str], arrow: ArrowDecoder | None = None
    ) -> Iterator[Page]:
        # A generator: nothing is requested until the caller asks for the first page, and only
        # one page is held at a time.
        seen = {url}
        while True:
            page = _page(self._transport.get(url, prefer, arrow or decode_json), url)
            next_link = page.next_link
            self.stats.rows += len(page)
            yield page
            if not next_link:
                return
            if next_link in seen:
                raise PagingLoopError(
                    f"the server repeated a nextLink ({short_url(next_link)}); stopping instead "
                    "of looping forever. Retry the cycle; if it persists, the org's paging is "
                    "broken for this query (add a unique key to $orderby)",
                    url=short_url(next_link),
                )
            seen.add(next_link)
            # Relative or foreign links are refused by _url (the token only goes to the org).
            url = self._url(next_link, None)

    def _collect(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """All rows of a small collection (metadata, roles), following nextLinks if any."""
        rows: list[dict[str, Any]] = []
        for page in self._follow(self._url(path, params), ()):
            rows.extend(page.rows)
        return rows

    # ---- building URLs --------------------------------------------------------------------

    def _url(self, path_or_url: str, params: dict[str, str] | None) -> str:
        if "://" in path_or_url:
            if not path_or_url.startswith(self._api_root):
                raise DynamicsError(
                    f"refusing to request {short_url(path_or_url)}: it is outside the org's Web API "
                    f"{self._api_root} and would receive the access token",
                    url=short_url(path_or_url),
                )
            url = path_or_url
        else:
            url = self._api_root + path_or_url.lstrip("/")
        if params:
            query = "&".join(
                f"{quote(k, safe='$')}={quote(v, safe=_QUERY_SAFE)}" for k, v in params.items()
            )
            url += ("&" if "?" in url else "?") + query
        return url


def _checked_logical_name(name: str) -> str:
    if not _LOGICAL_NAME.match(name):
        raise ValueError(f"{name!r} is not a Dataverse logical name (lower-case, e.g. 'account')")
    return name


def _checked_guid(value: str) -> str:
    if not _GUID.match(value):
        raise ValueError(f"{value!r} is not a GUID")
    return value.lower()


def _page(resp: Response, url: str) -> Page:
    """The Page of an entity-set response, decoded as Arrow columns or as dicts."""
    body = resp.body
    if isinstance(body, ArrowRows):
        return Page(
            rows=[],
            next_link=body.next_link,
            delta_link=body.delta_link,
            is_delta=body.context.endswith("/$delta") or "$deltatoken=" in url,
            nbytes=resp.nbytes,
            table=body.rows,
        )
    rows = body.get("value")
    if not isinstance(rows, list):
        raise DynamicsError(
            f"{short_url(url)} returned no `value` list: not an entity-set query",
            url=short_url(url),
        )
    context = str(body.get("@odata.context") or "")
    return Page(
        rows=rows,
        next_link=body.get("@odata.nextLink"),
        delta_link=body.get("@odata.deltaLink"),
        is_delta=context.endswith("/$delta") or "$deltatoken=" in url,
        nbytes=resp.nbytes,
    )
