"""Read-only Dynamics 365 (Dataverse) Web API client: paging, delta links, metadata, retries."""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote, urlsplit

import orjson
import pyarrow as pa
import requests
import urllib3

from dynsync_dagster.dynamics.auth import TokenProvider, build_session
from dynsync_dagster.dynamics.errors import (
    DynamicsError,
    ExpiredDeltaToken,
    PagingLoopError,
    ThrottledError,
    TransientError,
)
from dynsync_dagster.dynamics.pages import ArrowDecoder, ArrowRows, MalformedBody, decode_json
from dynsync_dagster.settings import ConnectionSettings

log = logging.getLogger("dynsync.client")

# The only HTTP method this module can send (SPEC rule 2: Dynamics is never written to).
_METHOD: Final = "GET"

EXPIRED_VERSION_STAMP = "0x80044352"
_UNEXPECTED_ERROR = "0x80040216"  # generic 500, sometimes transient
_RETRY_STATUSES = frozenset({502, 503, 504})
_MAX_UNEXPECTED_ERROR_ATTEMPTS = 3  # "retry 0x80040216 a few times at most" (doc §7.2)
_MAX_PAGE_SIZE = 5000

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


@dataclass
class ClientStats:
    requests: int = 0
    retries: int = 0
    throttled: int = 0
    throttle_wait_s: float = 0.0
    backoff_wait_s: float = 0.0
    unauthorized_retries: int = 0
    pages: int = 0
    rows: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying one URL: attempts in total, and seconds of waiting in total."""

    max_attempts: int = 6
    max_total_wait_s: float = 300
    base_backoff_s: float = 0.5
    max_backoff_s: float = 60


@dataclass
class _Response:
    body: Any  # what the decoder made of it: a dict, or ArrowRows
    nbytes: int


@dataclass
class _Retry:
    wait_s: float
    error: DynamicsError
    throttled: bool


@dataclass
class _Attempt:
    """State of one logical request across its retries."""

    url: str
    attempts: int = 0
    waited_s: float = 0.0
    unauthorized_retried: bool = False
    unexpected_errors: int = 0


class DynamicsClient:
    """Reads from the Dataverse Web API. Every request is a GET; there is no write method."""

    def __init__(
        self,
        conn: ConnectionSettings,
        *,
        retry: RetryPolicy = RetryPolicy(),  # frozen: sharing the default is safe
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
        self._retry = retry
        self._page_size = page_size
        self._timeout_s = timeout_s
        self._sleep = sleep
        self._owns_session = session is None
        self._session = session if session is not None else build_session(conn)
        self._tokens = token_provider or TokenProvider(conn, self._session, timeout_s=timeout_s)
        self.stats = ClientStats()

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

    def get_json(
        self,
        path_or_url: str,
        params: dict[str, str] | None = None,
        *,
        prefer: Sequence[str] = (),
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """GET one JSON document: a path under the API root, or an absolute URL inside it."""
        return self._get(self._url(path_or_url, params), prefer, headers).body

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
        # $top is ignored when odata.maxpagesize is sent (doc §3.1): send one or the other.
        prefer = self._prefer(track_changes, annotations, page_size=top is None)
        return self._follow(url, prefer, arrow)

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
            resp = self._get(url, prefer, None, arrow or decode_json)
            body = resp.body
            if isinstance(body, ArrowRows):
                page = Page(
                    rows=[],
                    next_link=body.next_link,
                    delta_link=body.delta_link,
                    is_delta=body.context.endswith("/$delta") or "$deltatoken=" in url,
                    nbytes=resp.nbytes,
                    table=body.rows,
                )
            else:
                rows = body.get("value")
                if not isinstance(rows, list):
                    raise DynamicsError(
                        f"{_short(url)} returned no `value` list: not an entity-set query",
                        url=_short(url),
                    )
                context = str(body.get("@odata.context") or "")
                page = Page(
                    rows=rows,
                    next_link=body.get("@odata.nextLink"),
                    delta_link=body.get("@odata.deltaLink"),
                    is_delta=context.endswith("/$delta") or "$deltatoken=" in url,
                    nbytes=resp.nbytes,
                )
            next_link = page.next_link
            self.stats.pages += 1
            self.stats.rows += len(page)
            yield page
            if not next_link:
                return
            if next_link in seen:
                raise PagingLoopError(
                    f"the server repeated a nextLink ({_short(next_link)}); stopping instead of "
                    "looping forever. Retry the cycle; if it persists, the org's paging is broken "
                    "for this query (add a unique key to $orderby)",
                    url=_short(next_link),
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

    # ---- the one place that sends ---------------------------------------------------------

    def _url(self, path_or_url: str, params: dict[str, str] | None) -> str:
        if "://" in path_or_url:
            if not path_or_url.startswith(self._api_root):
                raise DynamicsError(
                    f"refusing to request {_short(path_or_url)}: it is outside the org's Web API "
                    f"{self._api_root} and would receive the access token",
                    url=_short(path_or_url),
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

    def _get(
        self,
        url: str,
        prefer: Sequence[str],
        extra_headers: dict[str, str] | None,
        decode: Callable[[bytes], Any] = decode_json,
    ) -> _Response:
        """GET `url` under the retry policy; returns the decoded body."""
        state = _Attempt(url=url)
        while True:
            state.attempts += 1
            outcome = self._send_once(state, prefer, extra_headers, decode)
            if isinstance(outcome, _Response):
                return outcome
            wait, err = outcome.wait_s, outcome.error
            if outcome.throttled:
                self.stats.throttled += 1
            over_budget = state.waited_s + wait > self._retry.max_total_wait_s
            if state.attempts >= self._retry.max_attempts or over_budget:
                why = (
                    f"{state.waited_s:.1f}s of waiting (the next {wait:.1f}s would exceed the "
                    f"{self._retry.max_total_wait_s:.0f}s budget)"
                    if over_budget
                    else f"{state.attempts} attempts"
                )
                kind = ThrottledError if outcome.throttled else TransientError
                hint = (
                    "the org's service protection limits are exceeded; run less often or "
                    "raise RetryPolicy.max_total_wait_s"
                    if outcome.throttled
                    else "Dynamics or the network is failing; retry the cycle later"
                )
                raise kind(
                    f"gave up on {_short(url)} after {why}: {err.message}; {hint}",
                    status=err.status,
                    code=err.code,
                    url=_short(url),
                ) from None
            self.stats.retries += 1
            if outcome.throttled:
                self.stats.throttle_wait_s += wait
                log.warning(
                    "throttled by Dynamics (%s) on %s: waiting %.2fs",
                    err.code or err.status,
                    _short(url),
                    wait,
                )
            else:
                self.stats.backoff_wait_s += wait
                log.warning(
                    "transient failure on %s (%s): retry %d in %.2fs",
                    _short(url),
                    err.message,
                    state.attempts,
                    wait,
                )
            state.waited_s += wait
            self._sleep(wait)

    def _send_once(
        self,
        state: _Attempt,
        prefer: Sequence[str],
        extra_headers: dict[str, str] | None,
        decode: Callable[[bytes], Any],
    ) -> _Response | _Retry:
        """One attempt (plus one re-authentication on 401): the response, or how to retry.

        Failures that retrying cannot fix raise.
        """
        url = state.url
        while True:
            try:
                token = self._tokens.get_token()  # MSAL cache hit almost always
            except TransientError as exc:
                return self._retry_later(state, exc)
            headers = {
                "Accept": "application/json",
                "OData-MaxVersion": "4.0",
                "OData-Version": "4.0",
                "If-None-Match": "null",
            }
            if prefer:
                headers["Prefer"] = ", ".join(prefer)
            if extra_headers:
                headers.update(extra_headers)
            headers["Authorization"] = f"Bearer {token}"
            self.stats.requests += 1
            assert _METHOD == "GET"
            try:
                raw = self._session.request(
                    _METHOD,
                    url,
                    headers=headers,
                    timeout=self._timeout_s,
                    allow_redirects=False,  # a redirect could carry the token elsewhere
                    stream=True,
                )
                content = _read_body(raw)
            except requests.exceptions.SSLError as exc:
                raise DynamicsError(
                    f"TLS verification failed for {_short(url)} ({type(exc).__name__}): if the "
                    "org uses a private CA, set DYNAMICS_CA_BUNDLE to a PEM file with that CA",
                    url=_short(url),
                ) from None
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError,
                urllib3.exceptions.HTTPError,  # the body cut short, or the read timed out
            ) as exc:
                failure = TransientError(f"connection failed ({type(exc).__name__})")
                return self._retry_later(state, failure)

            status = raw.status_code
            self.stats.bytes += len(content)
            if status == 200:
                try:
                    body = decode(content)
                except MalformedBody:
                    # Truncated or garbled in transit: worth another try.
                    failure = TransientError(f"malformed JSON body ({len(content)} bytes)")
                    return self._retry_later(state, failure)
                except TypeError:
                    raise DynamicsError(
                        f"{_short(url)} returned JSON that is not an object: this client "
                        "reads OData documents only (not e.g. /$count)",
                        status=200,
                        url=_short(url),
                    ) from None
                return _Response(body=body, nbytes=len(content))

            err = _error_from(raw, content, url)
            if err.code == EXPIRED_VERSION_STAMP:
                raise ExpiredDeltaToken(
                    f"the delta link has expired ({err.code}: {err.message}); do a full read "
                    "of the table to get a new delta link",
                    status=status,
                    code=err.code,
                    url=_short(url),
                )
            if status == 401:
                if not state.unauthorized_retried:
                    # Revoked, expired early, or clock skew: one fresh token, then give up.
                    state.unauthorized_retried = True
                    self.stats.unauthorized_retries += 1
                    log.info(
                        "401 from %s: fetching a new access token and retrying once", _short(url)
                    )
                    self._tokens.invalidate()
                    continue
                who = "application user" if self._conn.flow == "client_credentials" else "sync user"
                raise DynamicsError(
                    f"Dynamics refused a fresh access token for {_short(url)} (HTTP 401"
                    f"{': ' + err.message if err.message else ''}): check that the {who}"
                    " exists in the org, is enabled and has a security role, and that "
                    f"DYNAMICS_URL ({self._conn.url}) is the org the token is issued for",
                    status=401,
                    code=err.code,
                    url=_short(url),
                )
            if status == 429:
                wait = _retry_after(raw)
                if wait is None:
                    wait = self._backoff(state.attempts)
                return _Retry(wait_s=wait, error=err, throttled=True)
            if status in _RETRY_STATUSES:
                # A 503 during maintenance may say how long to wait; otherwise back off.
                wait = _retry_after(raw)
                if wait is None:
                    return self._retry_later(state, err)
                return _Retry(
                    wait_s=min(wait, self._retry.max_backoff_s), error=err, throttled=False
                )
            if status == 500 and err.code == _UNEXPECTED_ERROR:
                state.unexpected_errors += 1
                if state.unexpected_errors < _MAX_UNEXPECTED_ERROR_ATTEMPTS:
                    return self._retry_later(state, err)
            raise err

    def _retry_later(self, state: _Attempt, error: DynamicsError) -> _Retry:
        return _Retry(wait_s=self._backoff(state.attempts), error=error, throttled=False)

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with full jitter in its upper half."""
        cap = min(self._retry.max_backoff_s, self._retry.base_backoff_s * 2 ** (attempt - 1))
        return cap / 2 + random.uniform(0, cap / 2)


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP-date; Dataverse sends seconds, so fall back to backoff
    return seconds if seconds >= 0 else None


def _error_from(resp: requests.Response, content: bytes, url: str) -> DynamicsError:
    """A DynamicsError from a Dataverse error body `{"error": {"code", "message"}}`."""
    code: str | None = None
    message = ""
    try:
        body = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        code = str(error.get("code") or "") or None
        message = _first_line(str(error.get("message") or ""))
        inner = error.get("innererror")
        inner_message = inner.get("message") if isinstance(inner, dict) else None
        if inner_message and _first_line(str(inner_message)) != message:
            message += f" ({_first_line(str(inner_message))})"
    if not message:
        message = resp.reason or "no error message"
    status = resp.status_code
    privilege = re.search(r"\bprv\w+", message) if status == 403 else None
    hint = {
        400: "the query is invalid for this org (check the selected field names and filter)",
        403: "the sync user lacks a privilege: give it a security role with organization-level "
        "read on the table",
        404: "the record, table or endpoint does not exist in this org",
    }.get(status, "")
    if privilege:  # Dataverse names the missing privilege: point at it, not at table access
        hint = (
            f"the sync user lacks the {privilege.group(0)} privilege: add it to its security role"
        )
    text = f"HTTP {status}{' ' + code if code else ''} from {_short(url)}: {message}"
    return DynamicsError(
        text + (f"; {hint}" if hint else ""), status=status, code=code, url=_short(url)
    )


def _checked_logical_name(name: str) -> str:
    if not _LOGICAL_NAME.match(name):
        raise ValueError(f"{name!r} is not a Dataverse logical name (lower-case, e.g. 'account')")
    return name


def _checked_guid(value: str) -> str:
    if not _GUID.match(value):
        raise ValueError(f"{value!r} is not a GUID")
    return value.lower()


def _first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0] if stripped else ""


def _short(url: str, limit: int = 300) -> str:
    """The URL for messages and logs: opaque paging/delta tokens shortened, length capped."""
    parts = urlsplit(url)
    query = re.sub(r"(\$(?:skiptoken|deltatoken)=)[^&]{12,}", r"\1…", parts.query)
    text = parts._replace(query=query).geturl()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _read_body(raw: requests.Response) -> bytes:
    """The whole body in one read, which releases the connection to the pool.

    requests' `.content` reads in 10 KB chunks through several Python layers; a 2 MB page then
    costs twice the CPU, on the thread the fetch waits on. urllib3 raises IncompleteRead when
    the body ends short of its Content-Length.
    """
    try:
        return raw.raw.read(decode_content=True)
    except BaseException:
        raw.close()  # a half-read connection cannot be reused
        raise
