"""Sending one GET to the Web API: the access token, retries and waits, and errors that say
what to do. The only code that sends anything to the org's Web API."""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import orjson
import requests
import urllib3

from dynsync_dagster.dynamics.auth import TokenProvider, connection_failure
from dynsync_dagster.dynamics.budget import Budget, SpareGate
from dynsync_dagster.dynamics.errors import (
    DynamicsError,
    ExpiredDeltaToken,
    ThrottledError,
    TransientError,
    first_line,
)
from dynsync_dagster.dynamics.pages import MalformedBody, decode_json
from dynsync_dagster.settings import ConnectionSettings

log = logging.getLogger("dynsync.client")

# The only HTTP method this module can send: dynsync never writes to Dynamics.
_METHOD: Final = "GET"

_EXPIRED_VERSION_STAMP = "0x80044352"
_UNEXPECTED_ERROR = "0x80040216"  # generic 500, sometimes transient
_RETRY_STATUSES = frozenset({502, 503, 504})
# 0x80040216 is sometimes transient and sometimes a lasting fault: retry it a few times only.
_MAX_UNEXPECTED_ERROR_ATTEMPTS = 3
_BASE_HEADERS: Final = {
    "Accept": "application/json",
    "OData-MaxVersion": "4.0",
    "OData-Version": "4.0",
    "If-None-Match": "null",
}
# What Dataverse means by an error status, when its message does not say what to do.
_STATUS_HINTS: Final = {
    400: "the query is invalid for this org (check the selected field names and filter)",
    403: "the sync user lacks a privilege: give it a security role with organization-level "
    "read on the table",
    404: "the record, table or endpoint does not exist in this org",
}


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying one URL: attempts in total, and seconds of waiting in total."""

    max_attempts: int = 6
    max_total_wait_s: float = 300
    base_backoff_s: float = 0.5
    max_backoff_s: float = 60


@dataclass
class ClientStats:
    """What one client's requests cost: reported with each cycle's results."""

    requests: int = 0
    retries: int = 0
    throttled: int = 0
    throttle_wait_s: float = 0.0
    backoff_wait_s: float = 0.0
    unauthorized_retries: int = 0
    rows: int = 0


@dataclass
class Response:
    """A 200 answer: what the decoder made of the body (a dict, or ArrowRows), and its size."""

    body: Any
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


class Transport:
    """Sends GETs with the org's access token, retrying what waiting can fix.

    Throttling (429) waits for Retry-After; 502/503/504, dropped connections, malformed bodies
    and a few generic 500s back off exponentially; a 401 gets one fresh token. Everything else
    raises a DynamicsError at once.
    """

    def __init__(
        self,
        conn: ConnectionSettings,
        session: requests.Session,
        tokens: TokenProvider,
        *,
        retry: RetryPolicy,
        timeout_s: float,
        sleep: Callable[[float], None],
    ) -> None:
        self.stats = ClientStats()
        self.tokens = tokens  # public: tests read the token to check it never leaks
        # A parallel read's share of the user's service-protection budget (budget.py).
        self.gate: Budget | SpareGate | None = None
        self._conn = conn
        self._session = session
        self._retry = retry
        self._timeout_s = timeout_s
        self._sleep = sleep

    def get(
        self,
        url: str,
        prefer: Sequence[str],
        decode: Callable[[bytes], Any] = decode_json,
    ) -> Response:
        """GET `url` under the retry policy; returns the decoded body."""
        state = _Attempt(url=url)
        while True:
            state.attempts += 1
            outcome = self._send_once(state, prefer, decode)
            if isinstance(outcome, Response):
                return outcome
            if outcome.throttled:
                self.stats.throttled += 1
            self._give_up_if_spent(state, outcome)
            self._record_retry(state, outcome)
            state.waited_s += outcome.wait_s
            self._sleep(outcome.wait_s)

    # ---- one attempt ---------------------------------------------------------------------

    def _send_once(
        self,
        state: _Attempt,
        prefer: Sequence[str],
        decode: Callable[[bytes], Any],
    ) -> Response | _Retry:
        """One attempt (plus one re-authentication on 401): the response, or how to retry.

        Failures that retrying cannot fix raise.
        """
        while True:
            try:
                token = self.tokens.get_token()  # MSAL cache hit almost always
                raw, content = self._exchange(state.url, _headers(token, prefer))
            except TransientError as exc:
                return self._retry_later(state, exc)
            if raw.status_code == 200:
                return self._decoded(state, content, decode)
            err = _error_from(raw, content, state.url)
            if err.code == _EXPIRED_VERSION_STAMP:
                raise _expired(err)
            if raw.status_code == 401 and not state.unauthorized_retried:
                self._renew_token(state)
                continue
            return self._retry_for(state, raw, err)

    def _exchange(self, url: str, headers: dict[str, str]) -> tuple[requests.Response, bytes]:
        """Send the GET, through the gate of a parallel read's budget if there is one."""
        if self.gate is None:
            return self._send(url, headers)
        with self.gate.request() as answered:
            raw, content = self._send(url, headers)
            answered(raw.status_code, raw.headers)
            return raw, content

    def _send(self, url: str, headers: dict[str, str]) -> tuple[requests.Response, bytes]:
        """Send the GET and read the whole body; a dropped connection is a TransientError."""
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
            return raw, _read_body(raw)
        except requests.exceptions.SSLError as exc:
            raise DynamicsError(
                f"TLS verification failed for {short_url(url)} ({connection_failure(exc)}): if the "
                "org uses a private CA, set DYNAMICS_CA_BUNDLE to a PEM file with that CA",
                url=short_url(url),
            ) from None
        except (
            requests.ConnectionError,
            requests.Timeout,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
            urllib3.exceptions.HTTPError,  # the body cut short, or the read timed out
        ) as exc:
            raise TransientError(f"connection failed: {connection_failure(exc)}") from None

    def _decoded(
        self, state: _Attempt, content: bytes, decode: Callable[[bytes], Any]
    ) -> Response | _Retry:
        try:
            body = decode(content)
        except MalformedBody:
            # Truncated or garbled in transit: worth another try.
            failure = TransientError(f"malformed JSON body ({len(content)} bytes)")
            return self._retry_later(state, failure)
        except TypeError:
            raise DynamicsError(
                f"{short_url(state.url)} returned JSON that is not an object: this client "
                "reads OData documents only (not e.g. /$count)",
                status=200,
                url=short_url(state.url),
            ) from None
        return Response(body=body, nbytes=len(content))

    def _renew_token(self, state: _Attempt) -> None:
        # Revoked, expired early, or clock skew: one fresh token, then give up.
        state.unauthorized_retried = True
        self.stats.unauthorized_retries += 1
        log.info("401 from %s: fetching a new access token and retrying once", short_url(state.url))
        self.tokens.invalidate()

    def _retry_for(self, state: _Attempt, raw: requests.Response, err: DynamicsError) -> _Retry:
        """How to retry an error status; raises the error when waiting cannot fix it."""
        status = raw.status_code
        if status == 401:
            raise self._token_refused(err)
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
            return _Retry(wait_s=min(wait, self._retry.max_backoff_s), error=err, throttled=False)
        if status == 500 and err.code == _UNEXPECTED_ERROR:
            state.unexpected_errors += 1
            if state.unexpected_errors < _MAX_UNEXPECTED_ERROR_ATTEMPTS:
                return self._retry_later(state, err)
        raise err

    def _token_refused(self, err: DynamicsError) -> DynamicsError:
        """A 401 even with a fresh token: the principal, not the token, is the problem."""
        who = "application user" if self._conn.flow == "client_credentials" else "sync user"
        return DynamicsError(
            f"Dynamics refused a fresh access token for {err.url} (HTTP 401"
            f"{': ' + err.message if err.message else ''}): check that the {who}"
            " exists in the org, is enabled and has a security role, and that "
            f"DYNAMICS_URL ({self._conn.url}) is the org the token is issued for",
            status=401,
            code=err.code,
            url=err.url,
        )

    # ---- waiting -------------------------------------------------------------------------

    def _retry_later(self, state: _Attempt, error: DynamicsError) -> _Retry:
        return _Retry(wait_s=self._backoff(state.attempts), error=error, throttled=False)

    def _backoff(self, attempt: int) -> float:
        """Capped exponential backoff with full jitter in its upper half."""
        cap = min(self._retry.max_backoff_s, self._retry.base_backoff_s * 2 ** (attempt - 1))
        return cap / 2 + random.uniform(0, cap / 2)

    def _give_up_if_spent(self, state: _Attempt, retry: _Retry) -> None:
        """Raise ThrottledError or TransientError once the policy's attempts or wait are spent."""
        policy = self._retry
        over_budget = state.waited_s + retry.wait_s > policy.max_total_wait_s
        if state.attempts < policy.max_attempts and not over_budget:
            return
        why = (
            f"{state.waited_s:.1f}s of waiting (the next {retry.wait_s:.1f}s would exceed the "
            f"{policy.max_total_wait_s:.0f}s budget)"
            if over_budget
            else f"{state.attempts} attempts"
        )
        kind = ThrottledError if retry.throttled else TransientError
        hint = (
            "the org's service protection limits are exceeded; run less often or "
            "raise RetryPolicy.max_total_wait_s"
            if retry.throttled
            else "Dynamics or the network is failing; retry the cycle later"
        )
        err = retry.error
        raise kind(
            f"gave up on {short_url(state.url)} after {why}: {err.message}; {hint}",
            status=err.status,
            code=err.code,
            url=short_url(state.url),
        ) from None

    def _record_retry(self, state: _Attempt, retry: _Retry) -> None:
        """Count the retry and its wait, and say in the log why it waits."""
        self.stats.retries += 1
        err, wait = retry.error, retry.wait_s
        if retry.throttled:
            self.stats.throttle_wait_s += wait
            log.warning(
                "throttled by Dynamics (%s) on %s: waiting %.2fs",
                err.code or err.status,
                short_url(state.url),
                wait,
            )
        else:
            self.stats.backoff_wait_s += wait
            log.warning(
                "transient failure on %s (%s): retry %d in %.2fs",
                short_url(state.url),
                err.message,
                state.attempts,
                wait,
            )


def _headers(token: str, prefer: Sequence[str]) -> dict[str, str]:
    headers = dict(_BASE_HEADERS)
    if prefer:
        headers["Prefer"] = ", ".join(prefer)
    headers["Authorization"] = f"Bearer {token}"
    return headers


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


def _retry_after(resp: requests.Response) -> float | None:
    value = resp.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP-date; Dataverse sends seconds, so fall back to backoff
    return seconds if seconds >= 0 else None


def _expired(err: DynamicsError) -> ExpiredDeltaToken:
    return ExpiredDeltaToken(
        f"the delta link has expired ({err.code}: {err.message}); do a full read "
        "of the table to get a new delta link",
        status=err.status,
        code=err.code,
        url=err.url,
    )


def _error_from(resp: requests.Response, content: bytes, url: str) -> DynamicsError:
    """A DynamicsError from a Dataverse error body `{"error": {"code", "message"}}`."""
    code, message = _error_body(content)
    if not message:
        message = resp.reason or "no error message"
    status = resp.status_code
    privilege = re.search(r"\bprv\w+", message) if status == 403 else None
    hint = _STATUS_HINTS.get(status, "")
    if privilege:  # Dataverse names the missing privilege: point at it, not at table access
        hint = (
            f"the sync user lacks the {privilege.group(0)} privilege: add it to its security role"
        )
    text = f"HTTP {status}{' ' + code if code else ''} from {short_url(url)}: {message}"
    return DynamicsError(
        text + (f"; {hint}" if hint else ""), status=status, code=code, url=short_url(url)
    )


def _error_body(content: bytes) -> tuple[str | None, str]:
    """The error's code and first message line (plus the inner message's, when it differs)."""
    try:
        body = orjson.loads(content) if content else None
    except orjson.JSONDecodeError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return None, ""
    code = str(error.get("code") or "") or None
    message = first_line(str(error.get("message") or ""))
    inner = error.get("innererror")
    inner_message = inner.get("message") if isinstance(inner, dict) else None
    if inner_message and first_line(str(inner_message)) != message:
        message += f" ({first_line(str(inner_message))})"
    return code, message


def short_url(url: str, limit: int = 300) -> str:
    """The URL for messages and logs: opaque paging/delta tokens shortened, length capped."""
    parts = urlsplit(url)
    query = re.sub(r"(\$(?:skiptoken|deltatoken)=)[^&]{12,}", r"\1…", parts.query)
    text = parts._replace(query=query).geturl()
    return text if len(text) <= limit else text[: limit - 1] + "…"
