"""Decoding a Web API page: JSON bytes to Python objects, or entity rows straight to Arrow.

A full read spends most of its CPU decoding pages, on two threads that share the GIL: the
one fetching and the one staging. For entity pages, pyarrow's JSON reader turns the body
into typed Arrow columns in C++ without holding the GIL, so neither thread waits on the
other. It applies the field plan's types as it parses; a page it cannot read that way (a
value of another type than the metadata says, say) falls back to the plain JSON decode,
where the stage reports the value precisely.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.json as pa_json

# Properties a delta page gives a removed record: {"@odata.context": ".../$deletedEntity",
# "id": ..., "reason": "deleted"}. Live rows have none of them.
DELETION_FIELDS = (("@odata.context", pa.string()), ("id", pa.string()), ("reason", pa.string()))


def is_deleted_row(row: dict[str, Any]) -> bool:
    """True for a delta page's removed record (its key is `id`, not `<entity>id`)."""
    return row.get("reason") == "deleted" and "id" in row and "@odata.context" in row


class MalformedBody(ValueError):
    """The body is not a JSON document (truncated or garbled in transit)."""


@dataclass(frozen=True)
class ArrowRows:
    """The rows of one entity page as Arrow columns, and the page's links."""

    rows: pa.Table  # one column per property asked for, plus the DELETION_FIELDS
    next_link: str | None
    delta_link: str | None
    context: str


def decode_json(content: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise MalformedBody(str(exc)) from None
    if not isinstance(body, dict):
        raise TypeError("the JSON is not an object")
    return body


class ArrowDecoder:
    """Decodes entity pages to ArrowRows with the given property -> Arrow type schema."""

    def __init__(self, properties: Sequence[tuple[str, pa.DataType]]) -> None:
        fields: dict[str, pa.DataType] = {}
        for name, arrow_type in (*properties, *DELETION_FIELDS):
            fields.setdefault(name, arrow_type)
        self._parse = pa_json.ParseOptions(
            explicit_schema=pa.schema(
                [
                    ("value", pa.list_(pa.struct(list(fields.items())))),
                    ("@odata.nextLink", pa.string()),
                    ("@odata.deltaLink", pa.string()),
                    ("@odata.context", pa.string()),
                ]
            ),
            unexpected_field_behavior="ignore",
            newlines_in_values=True,  # one document, whatever its layout
        )

    def __call__(self, content: bytes) -> ArrowRows | dict[str, Any]:
        try:
            doc = pa_json.read_json(
                io.BytesIO(content),
                read_options=pa_json.ReadOptions(block_size=len(content) + 1, use_threads=False),
                parse_options=self._parse,
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # Not valid JSON (retried as malformed), or valid JSON with a value Arrow cannot
            # hold as its declared type: the plain decode, and the stage, deal with it.
            return decode_json(content)
        if doc.num_rows != 1 or not doc.column("value")[0].is_valid:
            return decode_json(content)  # not an entity page: let the caller say so
        values = doc.column("value").chunk(0).values
        rows = pa.Table.from_struct_array(values)

        def link(name: str) -> str | None:
            v = doc.column(name)[0]
            return v.as_py() if v.is_valid else None

        return ArrowRows(
            rows=rows,
            next_link=link("@odata.nextLink"),
            delta_link=link("@odata.deltaLink"),
            context=link("@odata.context") or "",
        )
