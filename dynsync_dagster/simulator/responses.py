"""What a handler returns: status, body bytes, content type and extra headers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

JSON_TYPE = (
    "application/json; odata.metadata=minimal; odata.streaming=true; "
    "IEEE754Compatible=false; charset=utf-8"
)
PLAIN_JSON = "application/json; charset=utf-8"


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)


def json_response(
    data: Any,
    status: int = 200,
    content_type: str = JSON_TYPE,
    headers: dict[str, str] | None = None,
) -> Response:
    return Response(
        status, orjson.dumps(data, option=orjson.OPT_UTC_Z), content_type, headers or {}
    )
