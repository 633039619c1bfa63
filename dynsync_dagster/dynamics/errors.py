"""Exceptions raised when talking to Dynamics (Web API or its Entra ID authority)."""

from __future__ import annotations


class DynamicsError(Exception):
    """A request to Dynamics failed. The message names the problem and what to check.

    `status` is the HTTP status (None when no response arrived), `code` the Dataverse
    `error.code` (e.g. ``0x80060888``) or the OAuth error, `url` the request URL without
    anything secret (access tokens travel in headers only and never appear here).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        url: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.url = url

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, url={self.url!r})"
        )


class AuthError(DynamicsError):
    """The token endpoint refused to issue a token (wrong tenant, client, secret, password…)."""


class ExpiredDeltaToken(DynamicsError):
    """A delta link's token expired (`0x80044352`): do a full read to get a new delta link."""


class ThrottledError(DynamicsError):
    """Still throttled (HTTP 429) after the retry policy's attempts or total wait budget."""


class TransientError(DynamicsError):
    """5xx, dropped connections or malformed bodies persisted past the retry policy."""


class PagingLoopError(DynamicsError):
    """The server returned a nextLink that was already followed (would loop forever)."""


def first_line(text: str) -> str:
    """The first non-blank line of a server's message: enough for an error, without its dump."""
    stripped = text.strip()
    return stripped.splitlines()[0] if stripped else ""
