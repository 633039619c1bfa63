"""The $skiptoken paging cookie: Dataverse's nested, URL-encoded XML format."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import quote, unquote

from .errors import bad_query
from .schema import Attribute


@dataclass
class Cookie:
    """Where the next page starts, plus what must survive between pages."""

    page_number: int = 1
    is_tracking: bool = False
    # (logical name, last value) for each ordering column, primary key last.
    last: list[tuple[str, Any]] = field(default_factory=list)
    first_key: str | None = None
    snapshot: int | None = None  # change-tracking snapshot version of the initial read
    offset: int | None = None  # position in a delta change list
    page_size: int | None = None  # so the nextLink pages alike without a resent Prefer


def _encode_value(value: Any) -> str:
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def decode_value(attr: Attribute, text: str) -> Any:
    kind = attr.attribute_type
    if kind == "DateTime":
        if attr.datetime_behavior == "DateOnly":
            return date.fromisoformat(text)
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    if kind in ("Integer", "BigInt", "Picklist", "State", "Status"):
        return int(text)
    if kind in ("Money", "Decimal", "Double"):
        return float(text)
    if kind == "Boolean":
        return text == "1"
    if kind in ("Uniqueidentifier", "Lookup", "Customer", "Owner"):
        return str(uuid.UUID(text.strip("{}")))
    return text


def _key_text(value: str) -> str:
    return "{" + value.upper() + "}"  # GUIDs appear upper case in braces, as in real cookies


def encode(cookie: Cookie, primary_key: str) -> str:
    """The $skiptoken value (still to be URL-encoded once more in the link)."""
    inner = ET.Element("cookie", {"page": str(cookie.page_number - 1)})
    for attr_name in ("snapshot", "offset", "page_size"):
        value = getattr(cookie, attr_name)
        if value is not None:
            inner.set(attr_name.replace("_", ""), str(value))
    for name, value in cookie.last:
        element = ET.SubElement(inner, name)
        if value is None:
            element.set("lastnull", "1")
        elif name == primary_key:
            element.set("last", _key_text(value))
            if cookie.first_key:
                element.set("first", _key_text(cookie.first_key))
        else:
            element.set("last", _encode_value(value))
    paging = quote(ET.tostring(inner, encoding="unicode", short_empty_elements=True), safe="")
    outer = (
        f'<cookie pagenumber="{cookie.page_number}" pagingcookie="{paging}" '
        f'istracking="{"True" if cookie.is_tracking else "False"}" />'
    )
    return outer


def decode(token: str, columns: dict[str, Attribute]) -> Cookie:
    """Parse a $skiptoken; `columns` resolves the ordering column names to attributes."""
    try:
        outer = ET.fromstring(token)
        inner = ET.fromstring(unquote(outer.attrib["pagingcookie"]))
        cookie = Cookie(
            page_number=int(outer.attrib.get("pagenumber", "2")),
            is_tracking=outer.attrib.get("istracking", "False").lower() == "true",
        )
        for attr_name in ("snapshot", "offset", "page_size"):
            raw = inner.attrib.get(attr_name.replace("_", ""))
            if raw is not None:
                setattr(cookie, attr_name, int(raw))
        for element in inner:
            attr = columns.get(element.tag)
            if attr is None:
                raise ValueError(element.tag)
            if element.attrib.get("lastnull") == "1":
                cookie.last.append((element.tag, None))
            else:
                cookie.last.append((element.tag, decode_value(attr, element.attrib["last"])))
        return cookie
    except (ET.ParseError, KeyError, ValueError, TypeError):
        raise bad_query("The $skiptoken value is not a valid paging cookie.") from None
