"""The Web API's error shape: {"error": {"code": "0x...", "message": "..."}} with an HTTP status."""

from __future__ import annotations

import orjson

PARSE_ERROR = "0x80060888"
NOT_FOUND = "0x80040217"
UNEXPECTED = "0x80040216"
EXPIRED_VERSION_STAMP = "0x80044352"
EXPIRED_VERSION_MESSAGE = (
    "Version stamp associated with the client has expired. Please perform a full sync."
)


class ODataError(Exception):
    """Raised anywhere in request handling; the server turns it into the JSON error response."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> bytes:
        return orjson.dumps({"error": {"code": self.code, "message": self.message}})


def property_not_found(name: str, entity: str) -> ODataError:
    return ODataError(
        400,
        PARSE_ERROR,
        f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{entity}'.",
    )


def bad_query(message: str) -> ODataError:
    return ODataError(400, PARSE_ERROR, message)


def not_implemented(feature: str) -> ODataError:
    """A Dataverse feature this simulator does not serve: 501, never a 200 that ignores it."""
    return ODataError(
        501,
        "",
        f"{feature} is not implemented by the dynsync simulator (Dataverse supports it). "
        "Use OData query options the simulator serves, or test this against a real org.",
    )
