"""Row -> JSON bytes for one response shape, compiled once and cached per row version."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import orjson

from .annotations import FORMATTED, LOOKUP_LOGICAL_NAME, NAVIGATION_PROPERTY, Annotations
from .schema import Attribute

if TYPE_CHECKING:
    from .org import Org
    from .table import Table

DUMPS_OPTIONS = orjson.OPT_UTC_Z


def format_money(value: float) -> str:
    return f"{'-' if value < 0 else ''}${abs(value):,.2f}"


def format_datetime(value: datetime) -> str:
    # The sync user's locale is en-US and its time zone UTC.
    hour = value.hour % 12 or 12
    suffix = "AM" if value.hour < 12 else "PM"
    return f"{value.month}/{value.day}/{value.year} {hour}:{value.minute:02d} {suffix}"


def format_date(value: date) -> str:
    return f"{value.month}/{value.day}/{value.year}"


def format_number(value: float) -> str:
    return f"{value:,}"


def navigation_property(attr: Attribute, target: str) -> str:
    # Polymorphic Customer lookups have one navigation property per target type.
    if attr.attribute_type == "Customer":
        return f"{attr.logical_name}_{target}"
    return attr.logical_name


def _formatter(attr: Attribute) -> str | None:
    """Name of the helper in the generated code's namespace that formats this type, if any."""
    kind = attr.attribute_type
    if (
        kind in ("Picklist", "State", "Status", "Boolean")
        or attr.type_name == "MultiSelectPicklistType"
    ):
        return None  # labels dict, handled separately
    if kind == "Money":
        return "fmt_money"
    if kind == "DateTime":
        return "fmt_date" if attr.datetime_behavior == "DateOnly" else "fmt_datetime"
    if kind in ("Integer", "BigInt", "Decimal", "Double"):
        return "fmt_number"
    return None


def _fragment_builder(
    attr: Attribute, ann: Annotations
) -> tuple[dict[tuple[str, str | None], bytes], Callable[[str, str, str | None], bytes]]:
    """Annotated lookup JSON depends only on (target id, target name), and many rows share a
    target (contacts of one account), so it is serialised once and spliced into rows."""
    key = attr.web_name
    cache: dict[tuple[str, str | None], bytes] = {}

    def build(target: str, value: str, name: str | None) -> bytes:
        d: dict[str, str] = {}
        if ann.formatted and name is not None:
            d[f"{key}@{FORMATTED}"] = name
        if ann.navigation_property:
            d[f"{key}@{NAVIGATION_PROPERTY}"] = navigation_property(attr, target)
        if ann.lookup_logical_name:
            d[f"{key}@{LOOKUP_LOGICAL_NAME}"] = target
        d[key] = value
        fragment = orjson.dumps(d)[1:-1]
        if len(cache) > 1_000_000:
            cache.clear()  # bound memory under endless renames
        cache[(value, name)] = fragment
        return fragment

    return cache, build


def compile_serializer(
    org: Org, table: Table, props: list[Attribute], ann: Annotations, masked: frozenset[str]
) -> Callable[[list[Any]], bytes]:
    """Generate a straight-line function for this shape: serialising a million rows through
    per-column closures is several times slower, and this is the page-serving hot path."""
    ns: dict[str, Any] = {
        "dumps": orjson.dumps,
        "OPT": DUMPS_OPTIONS,
        "fmt_money": format_money,
        "fmt_datetime": format_datetime,
        "fmt_date": format_date,
        "fmt_number": format_number,
        "name_of": org.primary_name,
    }
    slots = table.slots
    lines = [
        "def serialize(row):",
        f"    d = {{'@odata.etag': 'W/\"%s\"' % row[{slots['versionnumber']}]}}",
    ]
    annotated = ann.formatted or ann.navigation_property or ann.lookup_logical_name
    for n, attr in enumerate(props):
        key = attr.web_name
        if attr.logical_name in masked:
            lines.append(f"    d[{key!r}] = None")
            continue
        lines.append(f"    v = row[{slots[attr.logical_name]}]")
        if attr.is_lookup and annotated:
            lines += _lookup_lines(n, attr, slots, ann, ns)
            continue
        if ann.formatted:  # lookups are only here without annotations
            lines += _formatted_value_lines(n, attr, ns)
        lines.append(f"    d[{key!r}] = v")
    if any(line.startswith("        parts.append") for line in lines):
        lines.insert(2, "    parts = []")
        # Lookup fragments go after the other properties (JSON objects are unordered; each
        # annotation still precedes its own property).
        lines.append('    return dumps(d, option=OPT)[:-1] + b"," + b",".join(parts) + b"}"')
    else:
        lines.append("    return dumps(d, option=OPT)")
    exec(compile("\n".join(lines), f"<serializer {table.name}>", "exec"), ns)
    return ns["serialize"]


def _lookup_lines(
    n: int, attr: Attribute, slots: dict[str, int], ann: Annotations, ns: dict[str, Any]
) -> list[str]:
    """Code appending an annotated lookup's JSON fragment (built once per target) to parts."""
    type_slot = slots.get(f"{attr.logical_name}type")
    target = f"row[{type_slot}]" if type_slot is not None else repr(attr.targets[0])
    ns[f"frags{n}"], ns[f"build{n}"] = _fragment_builder(attr, ann)
    ns[f"null{n}"] = orjson.dumps({attr.web_name: None})[1:-1]
    name = "name_of(t, v)" if ann.formatted else "None"
    return [
        "    if v is None:",
        f"        parts.append(null{n})",
        "    else:",
        f"        t = {target} or {attr.targets[0]!r}",
        f"        n = {name}",
        f"        f = frags{n}.get((v, n))",
        f"        parts.append(f if f is not None else build{n}(t, v, n))",
    ]


def _formatted_value_lines(n: int, attr: Attribute, ns: dict[str, Any]) -> list[str]:
    """Code adding the FormattedValue annotation of a non-lookup property, if its type has one."""
    annotation = attr.web_name + "@" + FORMATTED
    if attr.options:
        # Booleans look up their 0/1 option labels too: False == 0 and True == 1 as keys.
        ns[f"labels{n}"] = attr.option_label
        return ["    if v is not None:", f"        d[{annotation!r}] = labels{n}.get(v, str(v))"]
    if (helper := _formatter(attr)) is not None:
        return ["    if v is not None:", f"        d[{annotation!r}] = {helper}(v)"]
    return []


class RowCache:
    """Serialised rows of one shape, valid while the row's version and lookup names are.

    Plain str->bytes/int dicts on purpose: they hold no GC-tracked objects, so a million
    cached rows add nothing to the cyclic collector's work (tuples did, and cost 2x)."""

    def __init__(
        self, org: Org, table: Table, serialize: Callable[[list[Any]], bytes], name_slots: list[int]
    ) -> None:
        self.org = org
        self.serialize = serialize
        self.version_slot = table.slots["versionnumber"]
        self.name_slots = name_slots
        self.data: dict[str, bytes] = {}
        self.versions: dict[str, int] = {}
        self.built_at: dict[str, int] = {}

    def row_bytes(self, record_id: str, row: list[Any]) -> bytes:
        version = row[self.version_slot]
        if self.versions.get(record_id) == version and (
            not self.name_slots or self._names_unchanged(row, self.built_at[record_id])
        ):
            return self.data[record_id]
        data = self.serialize(row)
        self.data[record_id] = data
        self.versions[record_id] = version
        self.built_at[record_id] = self.org.current_version
        return data

    def is_fresh(self, record_id: str, row: list[Any] | None) -> bool:
        return row is not None and self.versions.get(record_id) == row[self.version_slot]

    def _names_unchanged(self, row: list[Any], built_at: int) -> bool:
        names = self.org.name_versions
        if not names:
            return True
        return all(names.get(row[s], 0) <= built_at for s in self.name_slots if row[s] is not None)
