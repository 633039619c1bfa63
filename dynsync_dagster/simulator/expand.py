"""$expand on records: parsing, and the rows each navigation property of a record leads to."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import bad_query, not_implemented, property_not_found
from .relationships import Relationship, navigation
from .table import Table

MAX_EXPANDS = 15  # "You can include up to 15 $expand options in a query"
COLLECTION_LIMIT = 5000  # a single-level expansion is not paged: up to 5,000 related rows
_ITEM = re.compile(r"\s*([A-Za-z_]\w*)(/\$ref)?\s*(?:\((.*)\))?\s*", re.S)


@dataclass(frozen=True)
class Expansion:
    name: str
    rel: Relationship
    collection: bool
    select: str | None  # the inner $select, as written

    @property
    def target(self) -> str:
        return self.rel.referencing if self.collection else self.rel.referenced


def _split(text: str, sep: str) -> list[str]:
    """Split on `sep` outside parentheses and quotes."""
    parts, depth, quote, start = [], 0, False, 0
    for i, ch in enumerate(text):
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        elif not quote and depth == 0 and ch == sep:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def parse_expand(text: str, entity: str) -> list[Expansion]:
    """`parentcustomerid_account($select=name)` etc. Only $select is served inside an expand."""
    items = [item for item in _split(text, ",") if item.strip()]
    if not items:
        raise bad_query("The $expand expression must not be empty.")
    if len(items) > MAX_EXPANDS:
        raise bad_query(f"Number of expands exceeds the limit of {MAX_EXPANDS}.")
    out: list[Expansion] = []
    for item in items:
        m = _ITEM.fullmatch(item)
        if m is None:
            raise bad_query(f"Syntax error in $expand at '{item.strip()}'.")
        name, ref, inner = m.group(1), m.group(2), m.group(3)
        found = navigation(entity, name)
        if found is None:
            raise property_not_found(name, entity)
        if ref:
            raise not_implemented("$expand with /$ref")
        select = None
        for option in _split(inner or "", ";"):
            key, _, value = option.partition("=")
            key = key.strip()
            if not key:
                continue
            if key == "$select":
                select = value.strip()
            elif key in ("$filter", "$orderby", "$top", "$expand"):
                raise not_implemented(f"The {key} option inside $expand")
            else:
                raise bad_query(f"The query option '{key}' is not supported inside $expand.")
        out.append(Expansion(name, found[0], found[1], select))
    return out


def single_target(rel: Relationship, table: Table, row: list) -> str | None:
    """Id of the row a single-valued navigation property points at (None: no such row)."""
    value = row[table.slots[rel.attribute]]
    if value is None:
        return None
    if rel.polymorphic:
        type_slot = table.slots.get(f"{rel.attribute}type")
        target = (row[type_slot] if type_slot is not None else None) or "account"
        if target != rel.referenced:
            return None
    return value


def children_index(rel: Relationship, referencing: Table) -> dict[str, list[str]]:
    """Referenced id -> ids of the referencing rows pointing at it, in primary-key order."""
    index: dict[str, list[str]] = {}
    rows = referencing.rows
    for record_id in referencing.sorted_ids:
        parent = single_target(rel, referencing, rows[record_id])
        if parent is not None:
            index.setdefault(parent, []).append(record_id)
    return index
