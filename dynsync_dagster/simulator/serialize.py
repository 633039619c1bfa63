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
    for n, attr in enumerate(props):
        key = attr.web_name
        slot = slots[attr.logical_name]
        if attr.logical_name in masked:
            lines.append(f"    d[{key!r}] = None")
            continue
        lines.append(f"    v = row[{slot}]")
        if attr.is_lookup:
            type_slot = slots.get(f"{attr.logical_name}type")
            target = f"row[{type_slot}]" if type_slot is not None else repr(attr.targets[0])
            body: list[str] = []
            if ann.formatted:
                body += [
                    "        n = name_of(t, v)",
                    "        if n is not None:",
                    f"            d[{key + '@' + FORMATTED!r}] = n",
                ]
            if ann.navigation_property:
                ns[f"nav{n}"] = {t: navigation_property(attr, t) for t in attr.targets}
                body.append(f"        d[{key + '@' + NAVIGATION_PROPERTY!r}] = nav{n}.get(t)")
            if ann.lookup_logical_name:
                body.append(f"        d[{key + '@' + LOOKUP_LOGICAL_NAME!r}] = t")
            if body:
                lines += [
                    "    if v is not None:",
                    f"        t = {target} or {attr.targets[0]!r}",
                    *body,
                ]
        elif ann.formatted:
            if attr.options:
                # Booleans look up their 0/1 option labels too: False == 0 and True == 1 as keys.
                ns[f"labels{n}"] = attr.option_label
                lines += [
                    "    if v is not None:",
                    f"        d[{key + '@' + FORMATTED!r}] = labels{n}.get(v, str(v))",
                ]
            elif (helper := _formatter(attr)) is not None:
                lines += [
                    "    if v is not None:",
                    f"        d[{key + '@' + FORMATTED!r}] = {helper}(v)",
                ]
        lines.append(f"    d[{key!r}] = v")
    lines.append("    return dumps(d, option=OPT)")
    exec(compile("\n".join(lines), f"<serializer {table.name}>", "exec"), ns)
    return ns["serialize"]


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
