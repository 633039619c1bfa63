"""Entity-set reads: $select/$filter/$orderby/$top/$count, paging and change-tracking deltas."""

from __future__ import annotations

import bisect
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote

import orjson

from . import paging
from .annotations import Annotations, Preferences
from .errors import NOT_FOUND, ODataError, bad_query, not_implemented, property_not_found
from .expand import COLLECTION_LIMIT, Expansion, children_index, parse_expand, single_target
from .odata_filter import COMPARISONS, CRM_FUNCTIONS, Literal, compile_filter, parse_filter
from .org import DeltaTokenError, Org
from .prefetch import Prefetcher
from .relationships import Relationship, navigation
from .responses import JSON_TYPE, Response
from .schema import Attribute
from .serialize import RowCache, compile_serializer
from .table import Table

MAX_PAGE_SIZE = 5000
# Characters left as-is in nextLink/deltaLink query values (as Dataverse writes them).
_SAFE = "$,()'=:@-_.~"
COUNT_LIMIT = 5000
_TRACKING_REJECTS = ("$filter", "$orderby", "$expand", "$top")
# Options Dataverse itself refuses (400).
_UNSUPPORTED = {
    "$skip": "Skip Clause is not supported in CRM",
    "$search": "$search is not supported",
    "$format": "$format is not supported",
}
# Queries Dataverse runs but the simulator does not: a 501, never every row with a 200.
_NOT_IMPLEMENTED = {
    "fetchXml": "A FetchXML query (fetchXml=)",
    "sql": "A SQL query (sql=)",
    "savedQuery": "A saved view query (savedQuery=)",
    "userQuery": "A personal view query (userQuery=)",
    "$apply": "Aggregation ($apply)",
}
_EDM = {
    "String": "Edm.String",
    "Memo": "Edm.String",
    "EntityName": "Edm.String",
    "Virtual": "Edm.String",
    "Uniqueidentifier": "Edm.Guid",
    "Lookup": "Edm.Guid",
    "Customer": "Edm.Guid",
    "Owner": "Edm.Guid",
    "Integer": "Edm.Int32",
    "Picklist": "Edm.Int32",
    "State": "Edm.Int32",
    "Status": "Edm.Int32",
    "BigInt": "Edm.Int64",
    "Money": "Edm.Decimal",
    "Decimal": "Edm.Decimal",
    "Double": "Edm.Double",
    "Boolean": "Edm.Boolean",
}
_ACCEPTS = {
    "Edm.String": {"string"},
    "Edm.Guid": {"guid"},
    "Edm.Int32": {"int"},
    "Edm.Int64": {"int"},
    "Edm.Decimal": {"int", "decimal"},
    "Edm.Double": {"int", "decimal"},
    "Edm.Boolean": {"bool"},
    "Edm.DateTimeOffset": {"datetime"},
    "Edm.Date": {"date"},
}


@dataclass
class QueryContext:
    """Everything about one request the query code needs."""

    api_base: str  # absolute, ends with "/api/data/v9.2/"
    user_id: str
    prefs: Preferences
    page_cap: int
    params: list[tuple[str, str]]

    def param(self, name: str) -> str | None:
        found = None
        for key, value in self.params:
            if key == name:
                found = value
        return found


def _edm(attr: Attribute) -> str:
    if attr.attribute_type == "DateTime":
        return "Edm.Date" if attr.datetime_behavior == "DateOnly" else "Edm.DateTimeOffset"
    return _EDM.get(attr.attribute_type, "Edm.String")


def _coerce(edm: str, lit: Literal, function: str) -> Any:
    """A PropertyValues entry (Collection(Edm.String)) converted to the property's type."""
    text = str(lit.value) if lit.kind in ("string", "int", "decimal") else None
    try:
        if text is None:
            raise ValueError(text)
        if edm in ("Edm.Int32", "Edm.Int64"):
            return int(text)
        if edm in ("Edm.Decimal", "Edm.Double"):
            return float(text)
        if edm == "Edm.Guid":
            return str(uuid.UUID(text))
        if edm == "Edm.Boolean":
            return {"true": True, "false": False}[text.lower()]
        if edm == "Edm.DateTimeOffset":
            return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
        if edm == "Edm.Date":
            return date.fromisoformat(text)
        return text
    except (ValueError, KeyError):
        raise bad_query(
            f"The value '{lit.value}' in PropertyValues of Microsoft.Dynamics.CRM.{function} "
            f"is not a valid {edm}."
        ) from None


def _fold(value: Any) -> Any:
    return value.casefold() if isinstance(value, str) else value


class _Desc:
    """Inverts comparison so descending components fit one ascending tuple key (for bisect)."""

    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v

    def __lt__(self, other: _Desc) -> bool:
        return other.v < self.v

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.v == other.v

    __hash__ = None  # type: ignore[assignment]


def _component(value: Any) -> tuple:
    # SQL Server sorts NULL lowest: first ascending, last descending.
    return (0,) if value is None else (1, _fold(value))


@dataclass
class _View:
    ids: list[str]
    key: Callable[[str], tuple] | None  # None: primary-key order, bisect on the ids directly


@dataclass
class _Expanded:
    """One $expand item, ready to serve: its target table, row shape and child index."""

    exp: Expansion
    target: Table
    cache: RowCache
    names: list[str] | None
    children: dict[str, list[str]]


def _with_expand(names: list[str] | None, expanded: list[_Expanded]) -> list[str] | None:
    """Context-URL selection: `name,contact_customer_accounts(fullname)`."""
    if not expanded:
        return names
    out = list(names or [])
    for item in expanded:
        inner = f"({','.join(item.names)})" if item.names else ""
        out.append(f"{item.exp.name}{inner}")
    return out


class EntityQueries:
    """Serves entity-set requests; owns the per-shape row caches and per-query id lists."""

    def __init__(self, org: Org, max_shapes: int = 4, max_views: int = 16) -> None:
        self.org = org
        self._shapes: OrderedDict[tuple, RowCache] = OrderedDict()
        self._views: OrderedDict[tuple, _View] = OrderedDict()
        self._max_shapes = max_shapes
        self._max_views = max_views
        self.prefetcher = Prefetcher(org)
        self._expand_shapes: OrderedDict[tuple, RowCache] = OrderedDict()
        self._children: dict[str, tuple[tuple[int, int], dict[str, list[str]]]] = {}

    # ---- option parsing ------------------------------------------------------------

    def _select(self, table: Table, text: str | None) -> tuple[list[Attribute], list[str] | None]:
        web = table.entity.web_properties()
        entity = table.entity
        if not text:
            return list(web.values()), None
        names: list[str] = []
        for raw in text.split(","):
            name = raw.strip()
            if name not in web:
                raise property_not_found(name, entity.logical_name)
            if name not in names:
                names.append(name)
        props = [web[n] for n in names]
        extras = [entity.primary_id]
        if any(a.attribute_type == "Money" for a in props):
            extras.append("_transactioncurrencyid_value")  # money brings its currency
        for extra in extras:
            if extra in web and web[extra] not in props:
                props.append(web[extra])
        return props, names

    def _shape(
        self,
        table: Table,
        props: list[Attribute],
        ann: Annotations,
        masked: frozenset[str],
        pool: OrderedDict[tuple, RowCache] | None = None,
    ) -> RowCache:
        # Expanded rows use their own pool so a $expand never evicts a sync client's shapes.
        shapes = self._shapes if pool is None else pool
        flags = (ann.formatted, ann.lookup_logical_name, ann.navigation_property)
        key = (
            table.name,
            tuple(a.logical_name for a in props),
            flags,
            masked,
            table.schema_version,
        )
        cache = shapes.get(key)
        if cache is None:
            serializer = compile_serializer(self.org, table, props, ann, masked)
            name_slots = [
                table.slots[a.logical_name]
                for a in props
                if a.is_lookup and ann.formatted and a.logical_name not in masked
            ]
            cache = RowCache(self.org, table, serializer, name_slots)
            shapes[key] = cache
            if len(shapes) > self._max_shapes:
                shapes.popitem(last=False)
        else:
            shapes.move_to_end(key)
        return cache

    def _predicate(self, table: Table, text: str, masked: frozenset[str]) -> Callable[[list], bool]:
        web = table.entity.web_properties()
        node = parse_filter(text)

        def getter(prop: str) -> Callable[[list], Any]:
            attr = web.get(prop)
            if attr is None:
                raise property_not_found(prop, table.name)
            if attr.logical_name in masked:
                return lambda row: None  # unreadable secured values behave as null
            slot = table.slots[attr.logical_name]
            return lambda row: row[slot]

        def check(prop: str, op: str, lit: Literal) -> Any:
            attr = web[prop]
            edm = _edm(attr)
            if op in CRM_FUNCTIONS:
                return _coerce(edm, lit, op)
            if lit.kind == "null":
                return None
            if lit.kind not in _ACCEPTS.get(edm, {"string"}):
                raise bad_query(
                    "A binary operator with incompatible types was detected. Found operand "
                    f"types '{edm}' and '{lit.edm}' for operator kind "
                    f"'{COMPARISONS.get(op, op)}'."
                )
            return float(lit.value) if lit.kind == "decimal" else lit.value

        return compile_filter(node, getter, check)

    def _order(self, table: Table, text: str | None) -> list[tuple[Attribute, bool]]:
        web = table.entity.web_properties()
        order: list[tuple[Attribute, bool]] = []
        for raw in (text or "").split(","):
            if not raw.strip():
                if text is not None:
                    raise bad_query("The $orderby expression must not be empty.")
                continue
            parts = raw.split()
            if len(parts) > 2 or (len(parts) == 2 and parts[1].lower() not in ("asc", "desc")):
                raise bad_query(f"Syntax error in $orderby at '{raw.strip()}'.")
            attr = web.get(parts[0])
            if attr is None:
                raise property_not_found(parts[0], table.name)
            order.append((attr, len(parts) == 2 and parts[1].lower() == "desc"))
        pk = table.entity.attributes[table.entity.primary_id]
        if all(a.logical_name != pk.logical_name for a, _ in order):
            order.append((pk, False))  # a unique tie-breaker keeps paging deterministic
        return order

    def _view(
        self,
        table: Table,
        filter_text: str | None,
        order: list[tuple[Attribute, bool]],
        masked: frozenset[str],
    ) -> _View:
        default_order = len(order) == 1 and not order[0][1]
        if filter_text is None and default_order:
            return _View(table.sorted_ids, None)  # live index: no copy of a million ids
        key = (
            table.name,
            filter_text,
            tuple((a.logical_name, d) for a, d in order),
            masked,
            table.data_version,
            table.schema_version,
        )
        view = self._views.get(key)
        if view is not None:
            self._views.move_to_end(key)
            return view
        rows = table.rows
        ids = table.sorted_ids
        seek = _key_range(table, filter_text) if filter_text is not None else None
        if seek is not None:  # a primary-key range: a seek in the key index, as SQL does
            ids = ids[seek]
        elif filter_text is not None:
            pred = self._predicate(table, filter_text, masked)
            ids = [i for i in ids if pred(rows[i])]
        else:
            ids = list(ids)
        slots = [(table.slots[a.logical_name], desc, a.logical_name in masked) for a, desc in order]
        # Stable multi-pass sort, last key first; ids start in primary-key order, so a
        # trailing ascending primary key needs no pass of its own.
        passes = (
            slots[:-1]
            if slots[-1] == (table.slots[table.entity.primary_id], False, False)
            else slots
        )
        for slot, desc, hidden in reversed(passes):
            if not hidden:
                ids.sort(key=lambda i, s=slot: _component(rows[i][s]), reverse=desc)

        def sort_key(record_id: str) -> tuple:
            row = rows[record_id]
            return tuple(
                _Desc(_component(None if hidden else row[s]))
                if desc
                else _component(None if hidden else row[s])
                for s, desc, hidden in slots
            )

        view = _View(ids, None if default_order else sort_key)
        self._views[key] = view
        if len(self._views) > self._max_views:
            self._views.popitem(last=False)
        return view

    # ---- requests --------------------------------------------------------------------

    @staticmethod
    def _refuse_unserved(ctx: QueryContext) -> None:
        for option, message in _UNSUPPORTED.items():
            if ctx.param(option) is not None:
                raise bad_query(message)
        for option, feature in _NOT_IMPLEMENTED.items():
            if ctx.param(option) is not None:
                raise not_implemented(feature)

    def collection(self, table: Table, ctx: QueryContext) -> Response:
        self._refuse_unserved(ctx)
        delta_token = ctx.param("$deltatoken")
        tracking_on = table.entity.change_tracking
        if delta_token is not None or (ctx.prefs.track_changes and tracking_on):
            for option in _TRACKING_REJECTS:
                if ctx.param(option) is not None:
                    raise bad_query(
                        f'The "{option}" query parameter isn\'t supported when Change Tracking '
                        "is enabled."
                    )
        with self.org.lock:
            if delta_token is not None:
                return self._delta(table, ctx, delta_token)
            return self._rows(table, ctx, ctx.prefs.track_changes and tracking_on)

    def _page_size(self, ctx: QueryContext, cookie: paging.Cookie | None) -> int:
        requested = ctx.prefs.max_page_size or (cookie.page_size if cookie else None)
        return max(1, min(requested or MAX_PAGE_SIZE, MAX_PAGE_SIZE, ctx.page_cap))

    def _headers(self, ctx: QueryContext, size: int | None, tracking: bool) -> dict[str, str]:
        applied = []
        if ctx.prefs.max_page_size is not None and size is not None:
            applied.append(f"odata.maxpagesize={size}")
        if tracking:
            applied.append("odata.track-changes")
        if ctx.prefs.annotations.requested:
            applied.append(f'odata.include-annotations="{ctx.prefs.annotations.requested}"')
        return {"Preference-Applied": ",".join(applied)} if applied else {}

    def _link(self, ctx: QueryContext, table: Table, params: list[tuple[str, str]]) -> str:
        query = "&".join(f"{k}={quote(v, safe=_SAFE)}" for k, v in params)
        return f"{ctx.api_base}{table.entity.entity_set}?{query}"

    def _rows(self, table: Table, ctx: QueryContext, tracking: bool) -> Response:
        """One page of an entity-set read: its nextLink, or on the last page of a
        change-tracked read its deltaLink."""
        masked = self.org.masked_columns(ctx.user_id, table.name)
        props, names = self._select(table, ctx.param("$select"))
        order = self._order(table, ctx.param("$orderby"))
        top = self._top(ctx.param("$top"))
        count = self._count_flag(ctx.param("$count"))
        cookie = self._cookie(ctx.param("$skiptoken"), order)
        if cookie is not None:
            tracking = cookie.is_tracking and table.entity.change_tracking
        view = self._view(table, ctx.param("$filter"), order, masked)
        size = self._page_size(ctx, cookie)
        start = 0 if cookie is None else self._resume(view, cookie, order, table)
        # Dataverse ignores $top when odata.maxpagesize is sent, and on the later pages of a
        # paged read: the pages win.
        if top is not None and (ctx.prefs.max_page_size is not None or cookie is not None):
            top = None
        if top is not None:
            page_ids, more = view.ids[: min(top, MAX_PAGE_SIZE)], False
        else:
            page_ids = view.ids[start : start + size]
            more = start + size < len(view.ids)
        snapshot = (
            cookie.snapshot
            if cookie and cookie.snapshot is not None
            else (self.org.current_version if tracking else None)
        )
        cache = self._shape(table, props, ctx.prefs.annotations, masked)
        expanded = self._prepare_expand(table, ctx)
        context = self._context(ctx, table, _with_expand(names, expanded))
        body = [b'{"@odata.context":', orjson.dumps(context)]
        body += self._count_annotations(ctx.prefs.annotations, count, len(view.ids))
        body += [b',"value":[', self._values(ctx, table, cache, expanded, page_ids), b"]"]
        if more:
            self.prefetcher.submit(cache, table, view.ids[start + size : start + 2 * size])
            next_cookie = _next_cookie(
                table,
                cookie,
                order,
                masked,
                page_ids,
                tracking=tracking,
                snapshot=snapshot,
                size=size,
            )
            body += [b',"@odata.nextLink":', orjson.dumps(self._next_link(ctx, table, next_cookie))]
        elif tracking and snapshot is not None:
            body += [b',"@odata.deltaLink":', orjson.dumps(self._delta_link(ctx, table, snapshot))]
        body.append(b"}")
        headers = self._headers(ctx, None if top is not None else size, tracking)
        return Response(200, b"".join(body), JSON_TYPE, headers)

    @staticmethod
    def _cookie(token: str | None, order: list[tuple[Attribute, bool]]) -> paging.Cookie | None:
        """The paging cookie of a $skiptoken, checked against this query's $orderby."""
        if token is None:
            return None
        cookie = paging.decode(token, {a.logical_name: a for a, _ in order})
        if [n for n, _ in cookie.last] != [a.logical_name for a, _ in order]:
            raise bad_query("The $skiptoken does not match the $orderby of this query.")
        return cookie

    def _values(
        self,
        ctx: QueryContext,
        table: Table,
        cache: RowCache,
        expanded: list[_Expanded],
        page_ids: list[str],
    ) -> bytes:
        """The page's rows, comma-separated."""
        rows = table.rows
        if expanded:
            items = [self._row(ctx, table, cache, expanded, i, rows[i]) for i in page_ids]
        else:  # the sync client's hot path: cached row bytes, no per-row call
            items = [cache.row_bytes(i, rows[i]) for i in page_ids]
        return b",".join(items)

    def _next_link(self, ctx: QueryContext, table: Table, cookie: paging.Cookie) -> str:
        """This request's URL with the next page's $skiptoken in place of its own."""
        params = [(k, v) for k, v in ctx.params if k != "$skiptoken"]
        params.append(("$skiptoken", paging.encode(cookie, table.entity.primary_id)))
        return self._link(ctx, table, params)

    def _resume(
        self, view: _View, cookie: paging.Cookie, order: list[tuple[Attribute, bool]], table: Table
    ) -> int:
        """Index of the first row after the cookie's last key (stable under inserts/updates)."""
        if view.key is None:
            return bisect.bisect_right(view.ids, cookie.last[-1][1])
        target = tuple(
            _Desc(_component(value)) if desc else _component(value)
            for (_, value), (_, desc) in zip(cookie.last, order, strict=True)
        )
        return bisect.bisect_right(view.ids, target, key=view.key)

    def _count_annotations(self, ann: Annotations, count: bool, total: int) -> list[bytes]:
        out: list[bytes] = []
        if count:
            out.append(b',"@odata.count":' + str(min(total, COUNT_LIMIT)).encode())
        if ann.total_count:
            shown = min(total, COUNT_LIMIT) if count else -1
            out.append(b',"@Microsoft.Dynamics.CRM.totalrecordcount":' + str(shown).encode())
            exceeded = b"true" if count and total > COUNT_LIMIT else b"false"
            out.append(b',"@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded":' + exceeded)
        if ann.metadata_version:
            out.append(
                b',"@Microsoft.Dynamics.CRM.globalmetadataversion":'
                + orjson.dumps(str(self.org.metadata_version + 1_000_000))
            )
        return out

    def _context(
        self, ctx: QueryContext, table: Table, names: list[str] | None, suffix: str = ""
    ) -> str:
        selection = f"({','.join(names)})" if names else ""
        return f"{ctx.api_base}$metadata#{table.entity.entity_set}{selection}{suffix}"

    @staticmethod
    def _top(text: str | None) -> int | None:
        if text is None:
            return None
        if not text.strip().isdigit():
            raise bad_query(f"Invalid value '{text}' for $top query option found.")
        return int(text)

    @staticmethod
    def _count_flag(text: str | None) -> bool:
        if text is None:
            return False
        if text not in ("true", "false"):
            raise bad_query(f"'{text}' is not a valid count option.")
        return text == "true"

    # ---- change tracking -------------------------------------------------------------

    def _delta_link(self, ctx: QueryContext, table: Table, version: int) -> str:
        token = self.org.issue_delta_token(table.name, version)
        params = [(k, v) for k, v in ctx.params if k == "$select"]
        params.append(("$deltatoken", token))
        return self._link(ctx, table, params)

    def _check_token(self, table: Table, token: str) -> int:
        if not table.entity.change_tracking:
            raise bad_query(f"Change tracking is not enabled for entity '{table.name}'.")
        try:
            return self.org.check_delta_token(table.name, token)
        except DeltaTokenError as exc:
            if exc.expired:
                raise ODataError(
                    400,
                    "0x80044352",
                    "Version stamp associated with the client "
                    "has expired. Please perform a full sync.",
                ) from None
            raise bad_query(f"The $deltatoken '{token}' is not valid.") from None

    def changes(self, table: Table, since: int, until: int) -> list[tuple[str, bool]]:
        """Net changes in (since, until]: upserts by version, then deletions."""
        lo = bisect.bisect_right(table.log_versions, since)
        hi = bisect.bisect_right(table.log_versions, until)
        latest: dict[str, tuple[int, bool]] = {}
        for pos in range(lo, hi):
            record_id, deleted = table.log_entries[pos]
            latest.pop(record_id, None)  # re-insert so dict order follows the latest version
            latest[record_id] = (pos, deleted)
        upserts = [(i, False) for i, (_, d) in latest.items() if not d]
        deletions = [(i, True) for i, (_, d) in latest.items() if d]
        return upserts + deletions

    def _delta(self, table: Table, ctx: QueryContext, token: str) -> Response:
        since = self._check_token(table, token)
        masked = self.org.masked_columns(ctx.user_id, table.name)
        props, names = self._select(table, ctx.param("$select"))
        skip = ctx.param("$skiptoken")
        cookie = paging.decode(skip, {}) if skip is not None else None
        if cookie is not None and (cookie.snapshot is None or cookie.offset is None):
            raise bad_query("The $skiptoken is not a change-tracking paging cookie.")
        until = cookie.snapshot if cookie else self.org.current_version
        offset = cookie.offset if cookie else 0
        key = ("delta", table.name, since, until)
        view = self._views.get(key)
        if view is None:
            changes = self.changes(table, since, until)
            view = _View([f"{'-' if d else '+'}{i}" for i, d in changes], None)
            self._views[key] = view
            if len(self._views) > self._max_views:
                self._views.popitem(last=False)
        size = self._page_size(ctx, cookie)
        page = view.ids[offset : offset + size]
        cache = self._shape(table, props, ctx.prefs.annotations, masked)
        deleted_ctx = orjson.dumps(self._context(ctx, table, None, "/$deletedEntity"))
        items: list[bytes] = []
        for entry in page:
            record_id = entry[1:]
            row = table.rows.get(record_id) if entry[0] == "+" else None
            if row is not None:
                items.append(cache.row_bytes(record_id, row))
            else:  # deleted, or deleted again since the snapshot
                items.append(
                    b'{"@odata.context":'
                    + deleted_ctx
                    + b',"id":"'
                    + record_id.encode()
                    + b'","reason":"deleted"}'
                )
        body = [b'{"@odata.context":', orjson.dumps(self._context(ctx, table, names, "/$delta"))]
        body.append(b',"value":[' + b",".join(items) + b"]")
        if offset + size < len(view.ids):
            next_cookie = paging.Cookie(
                page_number=(cookie.page_number if cookie else 1) + 1,
                is_tracking=True,
                snapshot=until,
                offset=offset + size,
                page_size=size,
            )
            params = [(k, v) for k, v in ctx.params if k != "$skiptoken"]
            params.append(("$skiptoken", paging.encode(next_cookie, table.entity.primary_id)))
            body += [b',"@odata.nextLink":', orjson.dumps(self._link(ctx, table, params))]
        else:
            body += [b',"@odata.deltaLink":', orjson.dumps(self._delta_link(ctx, table, until))]
        body.append(b"}")
        return Response(200, b"".join(body), JSON_TYPE, self._headers(ctx, size, True))

    # ---- $expand ----------------------------------------------------------------------

    def _prepare_expand(self, table: Table, ctx: QueryContext) -> list[_Expanded]:
        text = ctx.param("$expand")
        if text is None:
            return []
        out: list[_Expanded] = []
        for exp in parse_expand(text, table.name):
            target = self.org.tables[exp.target]
            props, names = self._select(target, exp.select)
            if exp.collection:  # each related row also carries its lookup to the parent
                back = target.entity.web_properties()[f"_{exp.rel.attribute}_value"]
                if back not in props:
                    props.append(back)
            masked = self.org.masked_columns(ctx.user_id, target.name)
            cache = self._shape(
                target, props, ctx.prefs.annotations, masked, pool=self._expand_shapes
            )
            children = self._children_of(exp.rel, target) if exp.collection else {}
            out.append(_Expanded(exp, target, cache, names, children))
        return out

    def _children_of(self, rel: Relationship, referencing: Table) -> dict[str, list[str]]:
        stamp = (referencing.data_version, referencing.schema_version)
        cached = self._children.get(rel.schema_name)
        if cached is None or cached[0] != stamp:
            cached = (stamp, children_index(rel, referencing))
            self._children[rel.schema_name] = cached
        return cached[1]

    def _row(
        self,
        ctx: QueryContext,
        table: Table,
        cache: RowCache,
        expanded: list[_Expanded],
        record_id: str,
        row: list,
    ) -> bytes:
        data = cache.row_bytes(record_id, row)
        if not expanded:
            return data
        parts: list[bytes] = []
        for item in expanded:
            key = orjson.dumps(item.exp.name)
            if not item.exp.collection:
                target_id = single_target(item.exp.rel, table, row)
                target_row = item.target.rows.get(target_id) if target_id else None
                value = b"null"
                if target_row is not None:  # expanded single-valued records carry no etag
                    obj = orjson.loads(item.cache.row_bytes(target_id, target_row))
                    obj.pop("@odata.etag", None)
                    value = orjson.dumps(obj)
                parts.append(key + b":" + value)
                continue
            ids = item.children.get(record_id, [])[:COLLECTION_LIMIT]
            related = [item.cache.row_bytes(i, item.target.rows[i]) for i in ids]
            parts.append(key + b":[" + b",".join(related) + b"]")
            link = f"{ctx.api_base}{table.entity.entity_set}({record_id})/{item.exp.name}"
            if item.exp.select:
                link += f"?$select={quote(item.exp.select, safe=_SAFE)}"
            parts.append(
                orjson.dumps(f"{item.exp.name}@odata.nextLink") + b":" + orjson.dumps(link)
            )
        return data[:-1] + b"," + b",".join(parts) + b"}"

    def related(
        self, parent: Table, parent_id: str, name: str, ctx: QueryContext
    ) -> Response | None:
        """`accounts(<id>)/contact_customer_accounts`: a filtered collection (None: no such nav)."""
        found = navigation(parent.name, name)
        if found is None or not found[1]:
            return None
        rel = found[0]
        with self.org.lock:
            if parent_id.lower() not in parent.rows:
                raise ODataError(
                    404, NOT_FOUND, f"{parent.name} With Id = {parent_id.lower()} Does Not Exist"
                )
        condition = f"_{rel.attribute}_value eq {parent_id.lower()}"
        user_filter = ctx.param("$filter")
        combined = f"{condition} and ({user_filter})" if user_filter else condition
        params = [(k, v) for k, v in ctx.params if k != "$filter"] + [("$filter", combined)]
        narrowed = QueryContext(ctx.api_base, ctx.user_id, ctx.prefs, ctx.page_cap, params)
        return self.collection(self.org.tables[rel.referencing], narrowed)

    # ---- single record and $count ------------------------------------------------------

    def single(self, table: Table, record_id: str, ctx: QueryContext) -> Response:
        self._refuse_unserved(ctx)
        with self.org.lock:
            masked = self.org.masked_columns(ctx.user_id, table.name)
            props, names = self._select(table, ctx.param("$select"))
            row = table.rows.get(record_id.lower())
            if row is None:
                raise ODataError(
                    404, "0x80040217", f"{table.name} With Id = {record_id.lower()} Does Not Exist"
                )
            cache = self._shape(table, props, ctx.prefs.annotations, masked)
            expanded = self._prepare_expand(table, ctx)
            data = self._row(ctx, table, cache, expanded, record_id.lower(), row)
            context = orjson.dumps(
                self._context(ctx, table, _with_expand(names, expanded), "/$entity")
            )
            body = b'{"@odata.context":' + context + b"," + data[1:]
            return Response(200, body, JSON_TYPE, self._headers(ctx, None, False))

    def count(self, table: Table, ctx: QueryContext) -> Response:
        self._refuse_unserved(ctx)
        with self.org.lock:
            token = ctx.param("$deltatoken")
            if token is not None:
                since = self._check_token(table, token)
                total = len(self.changes(table, since, self.org.current_version))
            else:
                masked = self.org.masked_columns(ctx.user_id, table.name)
                order = self._order(table, None)
                total = len(self._view(table, ctx.param("$filter"), order, masked).ids)
            return Response(
                200, str(min(total, COUNT_LIMIT)).encode(), "text/plain; charset=utf-8", {}
            )


def _next_cookie(
    table: Table,
    previous: paging.Cookie | None,
    order: list[tuple[Attribute, bool]],
    masked: frozenset[str],
    page_ids: list[str],
    *,
    tracking: bool,
    snapshot: int | None,
    size: int,
) -> paging.Cookie:
    """The cookie after this page: its last row's sort values (masked ones hidden)."""
    last_row = table.rows[page_ids[-1]]
    return paging.Cookie(
        page_number=(previous.page_number if previous else 1) + 1,
        is_tracking=tracking,
        last=[
            (
                a.logical_name,
                None if a.logical_name in masked else last_row[table.slots[a.logical_name]],
            )
            for a, _ in order
        ],
        first_key=page_ids[0],
        snapshot=snapshot,
        page_size=size,
    )


def _key_range(table: Table, text: str) -> slice | None:
    """The slice of the key index a filter of only primary-key comparisons with GUIDs
    (`contactid ge X and contactid lt Y`) selects; None for any other filter.

    The same rows as the scan, without evaluating a predicate on every row while the org's
    lock is held: a key-range read of a million-row table took seconds per range that way,
    and blocked every other request meanwhile.
    """
    key = table.entity.primary_id
    comparisons: list[tuple[str, str]] = []

    def collect(node: tuple) -> bool:
        if node[0] == "and":
            return collect(node[1]) and collect(node[2])
        if node[0] != "cmp" or node[2] != key or node[3].kind != "guid":
            return False
        if node[1] not in ("ge", "gt", "le", "lt"):
            return False
        comparisons.append((node[1], node[3].value))
        return True

    if not collect(parse_filter(text)):
        return None
    ids = table.sorted_ids
    lo, hi = 0, len(ids)
    for op, value in comparisons:
        if op in ("ge", "gt"):
            side = bisect.bisect_left if op == "ge" else bisect.bisect_right
            lo = max(lo, side(ids, value))
        else:
            side = bisect.bisect_right if op == "le" else bisect.bisect_left
            hi = min(hi, side(ids, value))
    return slice(lo, max(lo, hi))
