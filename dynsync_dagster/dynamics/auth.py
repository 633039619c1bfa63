"""Entra ID access tokens for the Dynamics Web API (MSAL) and the TLS-pinned HTTP session."""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msal
import requests
from msal.exceptions import MsalServiceError
from requests.utils import get_environ_proxies

from dynsync_dagster.dynamics.errors import AuthError, DynamicsError, TransientError, first_line
from dynsync_dagster.settings import ConnectionSettings

log = logging.getLogger("dynsync.client")

# What the token endpoint's AADSTS codes usually mean, and where to look.
_AADSTS_HINTS: dict[int, str] = {
    7000215: "the client secret is wrong: check DYNAMICS_CLIENT_SECRET (use the secret's value, "
    "not its id)",
    7000222: "the client secret has expired: create a new secret and set DYNAMICS_CLIENT_SECRET",
    700016: "no app with this client id in the tenant: check DYNAMICS_CLIENT_ID and "
    "DYNAMICS_TENANT_ID",
    90002: "the tenant does not exist: check DYNAMICS_TENANT_ID",
    900023: "the tenant id is malformed: check DYNAMICS_TENANT_ID",
    50126: "wrong username or password: check DYNAMICS_USERNAME and DYNAMICS_PASSWORD",
    50034: "the user does not exist in this tenant: check DYNAMICS_USERNAME",
    50057: "the user account is disabled: enable the sync user",
    50055: "the user's password has expired: reset it and update DYNAMICS_PASSWORD",
    50076: "the user needs multi-factor authentication, which the username/password flow "
    "cannot do: exclude the sync user from MFA or use client credentials",
    50079: "the user must register for multi-factor authentication, which the "
    "username/password flow cannot do: use client credentials",
    500011: "the Dynamics org is not known in this tenant: check DYNAMICS_URL (the scope is "
    "<DYNAMICS_URL>/.default)",
    70011: "the scope is invalid: check DYNAMICS_URL",
    65001: "the app has no consent for Dynamics: grant admin consent to the app registration",
}

_GENERIC_HINT = (
    "check DYNAMICS_TENANT_ID, DYNAMICS_CLIENT_ID, DYNAMICS_CLIENT_SECRET"
    " (and DYNAMICS_USERNAME/DYNAMICS_PASSWORD for the username/password flow), and that the "
    "app (or sync user) exists as a user in the Dynamics org with a security role"
)


class DynamicsSession(requests.Session):
    """A requests session that always verifies TLS against one trust store.

    `trust_env` is off because requests would otherwise let REQUESTS_CA_BUNDLE /
    CURL_CA_BUNDLE silently replace the configured CA bundle. Proxies from the environment are
    still honoured, looked up per URL so that NO_PROXY keeps working.
    """

    def __init__(self, conn: ConnectionSettings) -> None:
        super().__init__()
        self.trust_env = False
        # certifi's default store unless the org (or simulator) uses its own CA.
        self.verify = conn.ca_bundle or True
        self._authority_prefix = conn.authority_host.lower() + "/"
        self._api_prefix = conn.api_root.lower()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        method_s = (method.decode() if isinstance(method, bytes) else method).upper()
        url_s = url.decode() if isinstance(url, bytes) else url
        # Second line of defence, after the client's GET-only transport: dynsync never writes
        # to Dynamics. The only non-GET this session may send is MSAL's token POST to the
        # authority host; never anything to the org's Web API.
        lowered = url_s.lower()
        if method_s != "GET" and (
            lowered.startswith(self._api_prefix) or not lowered.startswith(self._authority_prefix)
        ):
            raise DynamicsError(
                f"refusing to send {method_s} to {url_s.split('?', 1)[0]}: dynsync only reads "
                "from Dynamics (GET); records are created and changed in Dynamics itself",
                url=url_s.split("?", 1)[0],
            )
        # TLS is always verified: there is deliberately no way to turn it off.
        kwargs["verify"] = self.verify
        if kwargs.get("proxies") is None:
            kwargs["proxies"] = get_environ_proxies(url_s)
        return super().request(method, url, *args, **kwargs)


def build_session(conn: ConnectionSettings) -> requests.Session:
    """An HTTP session for both MSAL and the Web API, verifying TLS with `conn.ca_bundle`."""
    return DynamicsSession(conn)


class _MsalHttpClient:
    """What MSAL calls for HTTP (`get`/`post`): our session, plus two fixes.

    - MSAL builds the user-realm discovery URL (ROPC) from the authority's host without its
      port, so on a non-443 authority (the simulator's) it would call port 443: re-insert
      the configured port for that host.
    - requests has no session-wide timeout, so pass one on every call.
    """

    def __init__(self, session: requests.Session, authority_host: str, timeout_s: float) -> None:
        self._session = session
        self._timeout_s = timeout_s
        parts = urlsplit(authority_host)
        self._host = (parts.hostname or "").lower()
        self._port = parts.port  # None for the default 443: nothing to fix

    def _fix(self, url: str) -> str:
        parts = urlsplit(url)
        if (
            self._port is not None
            and parts.scheme == "https"
            and parts.port is None
            and (parts.hostname or "").lower() == self._host
        ):
            return urlunsplit(parts._replace(netloc=f"{parts.hostname}:{self._port}"))
        return url

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout_s)
        return self._session.get(self._fix(url), **kwargs)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self._timeout_s)
        return self._session.post(self._fix(url), **kwargs)

    def close(self) -> None:
        # The session belongs to whoever built it (usually DynamicsClient); it closes it.
        pass


class TokenProvider:
    """Access tokens for the org, from MSAL's in-memory cache when still valid.

    Client credentials when `conn.username` is unset, else username/password (ROPC) with a
    confidential client. Nothing touches the network until the first `get_token()`.
    """

    def __init__(
        self, conn: ConnectionSettings, session: requests.Session, *, timeout_s: float = 60
    ) -> None:
        self._conn = conn
        self._http = _MsalHttpClient(session, conn.authority_host, timeout_s)
        self._app: msal.ConfidentialClientApplication | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenProvider(flow={self._conn.flow!r}, authority={self._conn.authority!r})"

    def get_token(self) -> str:
        """A valid access token; raises AuthError (refused) or TransientError (retry later)."""
        with self._lock:
            app = self._application()
            scopes = [self._conn.scope]
            try:
                if self._conn.username:
                    result = self._ropc(app, scopes)
                else:
                    # Reads MSAL's cache first; only POSTs when no token with >5 min left.
                    result = app.acquire_token_for_client(scopes=scopes)
            except requests.exceptions.SSLError as exc:
                raise _tls_error(self._conn, exc) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise TransientError(
                    f"cannot reach the token endpoint at {self._conn.authority}: "
                    f"{connection_failure(exc)}; check DYNAMICS_AUTHORITY_HOST and the network",
                    url=self._conn.authority,
                ) from None
            except MsalServiceError as exc:
                # MSAL raises (rather than returns) on 5xx from the token endpoint.
                raise TransientError(
                    f"the token endpoint at {self._conn.authority} failed ({exc}); retry later",
                    url=self._conn.authority,
                ) from None
            if result and "access_token" in result:
                return str(result["access_token"])
            result = result or {}
            if result.get("error") in _TRANSIENT_ERRORS:
                # Throttled or briefly unavailable (e.g. a 429 with AADSTS90055): not a
                # refusal. MSAL itself replays such an answer until its Retry-After has
                # passed, so the caller's retry loop waiting and asking again is right.
                raise TransientError(
                    f"the token endpoint at {self._conn.authority} is temporarily unavailable "
                    f"({result.get('error')}: {first_line(str(result.get('error_description') or ''))}); "
                    "retrying later",
                    code=str(result.get("error")),
                    url=self._conn.authority,
                )
            raise self._auth_error(result)

    def invalidate(self) -> None:
        """Forget cached tokens so the next `get_token()` asks the token endpoint again."""
        with self._lock:
            app = self._app
            if app is None:
                return
            if self._conn.username:
                # Dropping the account removes its access and refresh tokens, so the next
                # get_token() re-runs the password grant instead of a silent refresh.
                for account in app.get_accounts(username=self._conn.username):
                    app.remove_account(account)
            else:
                app.remove_tokens_for_client()

    def _application(self) -> msal.ConfidentialClientApplication:
        if self._app is None:
            try:
                self._app = msal.ConfidentialClientApplication(
                    self._conn.client_id,
                    client_credential=self._conn.client_secret,
                    authority=self._conn.authority,
                    http_client=self._http,
                    # Never call login.microsoftonline.com for discovery: works for the real
                    # authority too, and any other authority (the simulator's) needs it.
                    instance_discovery=False,
                    token_cache=msal.TokenCache(),
                )
            except requests.exceptions.SSLError as exc:
                raise _tls_error(self._conn, exc) from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                raise TransientError(
                    f"cannot reach the authority {self._conn.authority}: "
                    f"{connection_failure(exc)}; "
                    "check DYNAMICS_AUTHORITY_HOST and the network",
                    url=self._conn.authority,
                ) from None
            except ValueError as exc:
                # MSAL: "Unable to get authority configuration" (OIDC discovery 4xx) and
                # malformed authority URLs.
                raise AuthError(
                    f"the authority {self._conn.authority} was refused ({first_line(str(exc))}): "
                    "check DYNAMICS_TENANT_ID and DYNAMICS_AUTHORITY_HOST",
                    url=self._conn.authority,
                ) from None
        return self._app

    def _ropc(self, app: msal.ConfidentialClientApplication, scopes: list[str]) -> dict[str, Any]:
        assert self._conn.username and self._conn.password
        for account in app.get_accounts(username=self._conn.username):
            # Cached access token, or a refresh-token grant: no password sent.
            result = app.acquire_token_silent(scopes, account=account)
            if result and "access_token" in result:
                return result
        # Always POSTs (MSAL never reads the cache for this call).
        return app.acquire_token_by_username_password(
            self._conn.username, self._conn.password, scopes=scopes
        )

    def _auth_error(self, result: dict[str, Any]) -> AuthError:
        error = str(result.get("error") or "unknown_error")
        description = first_line(str(result.get("error_description") or ""))
        codes = [c for c in result.get("error_codes") or [] if isinstance(c, int)]
        hint = next((_AADSTS_HINTS[c] for c in codes if c in _AADSTS_HINTS), None)
        if hint is None:
            hint = (
                "the client id or secret is wrong: check DYNAMICS_CLIENT_ID and "
                "DYNAMICS_CLIENT_SECRET"
                if error == "invalid_client"
                else _GENERIC_HINT
            )
        message = (
            f"Entra ID refused a token for {self._conn.flow} sign-in to {self._conn.url} "
            f"({error}: {description or 'no description'}); {hint}"
        )
        return AuthError(_redact(message, self._conn.secrets), code=error, url=self._conn.authority)


# OAuth errors that mean "try again later", not "your credentials are wrong".
_TRANSIENT_ERRORS = {"temporarily_unavailable", "server_error"}


def connection_failure(exc: BaseException) -> str:
    """What went wrong on the wire, in words a user can act on (not an exception class)."""
    import socket
    import ssl

    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 20:  # the cause chain, and the reasons urllib3 wraps in args
        e = todo.pop()
        seen.append(e)
        linked = (e.__cause__, e.__context__, getattr(e, "reason", None), *e.args)
        todo += [c for c in linked if isinstance(c, BaseException) and c not in seen]
    for words, kinds in (
        ("certificate not trusted", (ssl.SSLCertVerificationError,)),
        ("TLS handshake failed", (ssl.SSLError,)),
        ("name not resolved", (socket.gaierror,)),
        ("connection refused", (ConnectionRefusedError,)),
        ("connection reset", (ConnectionResetError,)),
        ("timed out", (TimeoutError, requests.Timeout)),
    ):
        if any(isinstance(e, kinds) for e in seen):
            return words
    if any("Name or service not known" in str(e) or "nodename" in str(e) for e in seen):
        return "name not resolved"
    return "the connection failed or was cut short"


def _tls_error(conn: ConnectionSettings, exc: Exception) -> DynamicsError:
    where = f"DYNAMICS_CA_BUNDLE={conn.ca_bundle}" if conn.ca_bundle else "the system CA store"
    return DynamicsError(
        f"TLS verification failed ({connection_failure(exc)}) using {where}: if the org or authority "
        "uses a private CA, set DYNAMICS_CA_BUNDLE to a PEM file with that CA",
        url=conn.authority,
    )


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
