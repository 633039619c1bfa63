"""The Entra ID (v2.0) authority: OIDC discovery, user realm, and the token endpoint."""

from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, unquote

import orjson

from .faults import Fault, FaultInjector
from .responses import PLAIN_JSON, Response, json_response

_USER_SCOPES = frozenset({"offline_access", "openid", "profile"})


@dataclass(frozen=True)
class Principal:
    user_id: str  # the systemuserid the Web API acts as
    kind: str  # "application" or "user"
    upn: str | None = None


@dataclass(frozen=True)
class Credentials:
    tenant_id: str
    client_id: str
    client_secret: str
    username: str
    password: str


class TokenStore:
    """Opaque bearer tokens mapped to a principal and a wall-clock expiry."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._access: dict[str, tuple[Principal, float]] = {}
        self._refresh: dict[str, Principal] = {}

    def issue(self, principal: Principal, lifetime_s: float) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._access[token] = (principal, time.time() + lifetime_s)
        return token

    def issue_refresh(self, principal: Principal) -> str:
        token = secrets.token_urlsafe(48)
        with self._lock:
            self._refresh[token] = principal
        return token

    def redeem_refresh(self, token: str) -> Principal | None:
        with self._lock:
            return self._refresh.get(token)

    def resolve(self, token: str) -> Principal | None:
        with self._lock:
            entry = self._access.get(token)
        if entry is None or entry[1] <= time.time():
            return None
        return entry[0]

    def expire_all(self) -> None:
        """Make every issued access token expired (as after revocation or clock skew)."""
        with self._lock:
            self._access = {t: (p, 0.0) for t, (p, _) in self._access.items()}


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Authority:
    """Answers /{tenant}/..., /common/userrealm/... like login.microsoftonline.com."""

    def __init__(
        self,
        host_url: str,
        org_url: str,
        credentials: Credentials,
        app: Principal,
        user: Principal,
        tokens: TokenStore,
        faults: FaultInjector,
        token_lifetime_s: float,
        user_display_name: str,
    ) -> None:
        self.host_url = host_url
        self.org_url = org_url
        self.creds = credentials
        self.app = app
        self.user = user
        self.tokens = tokens
        self.faults = faults
        self.token_lifetime_s = token_lifetime_s
        self.user_display_name = user_display_name

    def issuer(self) -> str:
        return f"{self.host_url}/{self.creds.tenant_id}/v2.0"

    def handles(self, path: str) -> bool:
        parts = path.strip("/").split("/")
        return bool(parts) and (
            parts[0] == "common"
            or path.endswith("/oauth2/v2.0/token")
            or "/.well-known/openid-configuration" in path
            or path.endswith("/discovery/v2.0/keys")
        )

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Response:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        tenant = parts[0]
        if parts[:2] == ["common", "userrealm"] and len(parts) == 3 and method == "GET":
            return self._user_realm(parts[2])
        if method == "GET" and parts[1:] in (
            ["v2.0", ".well-known", "openid-configuration"],
            [".well-known", "openid-configuration"],
        ):
            if not self._known_tenant(tenant):
                return self._error(400, "invalid_tenant", 90002, self._tenant_msg(tenant), headers)
            return json_response(self._openid_configuration(), content_type=PLAIN_JSON)
        if method == "GET" and parts[1:] == ["discovery", "v2.0", "keys"]:
            return json_response({"keys": []}, content_type=PLAIN_JSON)
        if parts[1:] == ["oauth2", "v2.0", "token"]:
            if method != "POST":
                return self._error(
                    400,
                    "invalid_request",
                    900561,
                    "The endpoint only accepts POST requests.",
                    headers,
                )
            return self._token(tenant, headers, body)
        return self._error(
            404, "not_found", 90000, "The requested resource was not found.", headers
        )

    # ---- discovery ---------------------------------------------------------------------

    def _known_tenant(self, tenant: str) -> bool:
        return tenant.lower() in (self.creds.tenant_id.lower(), "organizations", "common")

    @staticmethod
    def _tenant_msg(tenant: str) -> str:
        return (
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID "
            "and are signing into the correct cloud."
        )

    def _openid_configuration(self) -> dict[str, object]:
        base = f"{self.host_url}/{self.creds.tenant_id}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": self.issuer(),
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self.host_url}/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nonce", "name", "tid", "oid"],
            "kerberos_endpoint": f"{base}/kerberos",
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
        }

    def _user_realm(self, upn: str) -> Response:
        domain = upn.partition("@")[2] or upn
        return json_response(
            {
                "ver": "1.0",
                "account_type": "Managed",
                "domain_name": domain,
                "cloud_instance_name": "microsoftonline.com",
                "cloud_audience_urn": "urn:federation:MicrosoftOnline",
            },
            content_type=PLAIN_JSON,
        )

    # ---- token endpoint ----------------------------------------------------------------

    def _error(
        self,
        status: int,
        error: str,
        code: int,
        message: str,
        headers: dict[str, str],
        extra: dict[str, str] | None = None,
    ) -> Response:
        now = datetime.now(UTC)
        trace = str(uuid.uuid4())
        correlation = headers.get("client-request-id") or str(uuid.uuid4())
        stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
        return json_response(
            {
                "error": error,
                "error_description": f"AADSTS{code}: {message} Trace ID: {trace} Correlation ID: "
                f"{correlation} Timestamp: {stamp}",
                "error_codes": [code],
                "timestamp": stamp,
                "trace_id": trace,
                "correlation_id": correlation,
                "error_uri": f"{self.host_url}/error?code={code}",
            },
            status=status,
            content_type=PLAIN_JSON,
            headers=extra,
        )

    def _client_auth(self, form: dict[str, str], headers: dict[str, str]) -> tuple[str, str]:
        auth = headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(auth[6:].strip()).decode()
            except (binascii.Error, UnicodeDecodeError):
                return "", ""
            client_id, _, secret = decoded.partition(":")
            return unquote(client_id), unquote(secret)
        return form.get("client_id", ""), form.get("client_secret", "")

    def _token(self, tenant: str, headers: dict[str, str], body: bytes) -> Response:
        """The token endpoint: an armed fault, else Entra ID's checks in its order, then the grant."""
        fault = self.faults.take(True, f"/{tenant}/oauth2/v2.0/token")
        if fault is not None:
            return self._token_fault(fault, headers)
        if tenant.lower() != self.creds.tenant_id.lower():
            return self._error(400, "invalid_request", 90002, self._tenant_msg(tenant), headers)
        form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        grant = form.get("grant_type", "")
        refusal = self._refuse_client(form, grant, headers)
        if refusal is not None:
            return refusal
        if grant == "client_credentials":
            return self._grant(self.app, user_flow=False)
        if grant == "password":
            return self._password_grant(form, headers)
        return self._refresh_grant(form, headers)

    def _token_fault(self, fault: Fault, headers: dict[str, str]) -> Response:
        retry = {"Retry-After": str(max(1, round(fault.retry_after)))}
        if fault.kind == "token_429":
            return self._error(
                429,
                "temporarily_unavailable",
                90055,
                "TenantThrottlingThreshold - The number of requests exceeded "
                "the throttling limits.",
                headers,
                retry,
            )
        if fault.kind == "token_503":
            return self._error(
                503,
                "temporarily_unavailable",
                90033,
                "A transient error has occurred. Please try again.",
                headers,
                retry,
            )
        return self._bad_secret(headers)

    def _refuse_client(
        self, form: dict[str, str], grant: str, headers: dict[str, str]
    ) -> Response | None:
        """The error for an unknown grant type, client, secret or scope; None when all are good."""
        if grant not in ("client_credentials", "password", "refresh_token"):
            return self._error(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant}'.",
                headers,
            )
        client_id, secret = self._client_auth(form, headers)
        if client_id.lower() != self.creds.client_id.lower():
            return self._error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the "
                f"directory '{self.creds.tenant_id}'. This can happen if the "
                "application has not been installed by the administrator of the "
                "tenant or consented to by any user in the tenant.",
                headers,
            )
        if not secret:
            return self._error(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: "
                "'client_assertion' or 'client_secret'.",
                headers,
            )
        if not secrets.compare_digest(secret, self.creds.client_secret):
            return self._bad_secret(headers)
        return self._check_scope(form.get("scope", ""), grant, headers)

    def _password_grant(self, form: dict[str, str], headers: dict[str, str]) -> Response:
        user_ok = form.get("username", "").lower() == self.creds.username.lower()
        if not user_ok or not secrets.compare_digest(form.get("password", ""), self.creds.password):
            return self._error(
                400,
                "invalid_grant",
                50126,
                "Error validating credentials due to invalid username or password.",
                headers,
            )
        return self._grant(self.user, user_flow=True)

    def _refresh_grant(self, form: dict[str, str], headers: dict[str, str]) -> Response:
        principal = self.tokens.redeem_refresh(form.get("refresh_token", ""))
        if principal is None:
            return self._error(
                400,
                "invalid_grant",
                9002313,
                "Invalid request. Request is malformed or invalid.",
                headers,
            )
        return self._grant(principal, user_flow=True)

    def _bad_secret(self, headers: dict[str, str]) -> Response:
        return self._error(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the "
            "request is the client secret value, not the client secret ID, for a "
            f"secret added to app '{self.creds.client_id}'.",
            headers,
        )

    def _check_scope(self, scope: str, grant: str, headers: dict[str, str]) -> Response | None:
        scopes = [s for s in scope.split() if s not in _USER_SCOPES]
        wanted = {f"{self.org_url}/.default", f"{self.org_url}//.default"}
        if not scopes:
            return self._error(
                400,
                "invalid_scope",
                70011,
                "The provided request must include a 'scope' input parameter.",
                headers,
            )
        if len(scopes) != 1 or scopes[0] not in wanted:
            return self._error(
                400,
                "invalid_scope",
                70011,
                f"The provided value for the input parameter 'scope' is not valid. "
                f"The scope {scope} is not valid. Use {self.org_url}/.default.",
                headers,
            )
        return None

    def _grant(self, principal: Principal, user_flow: bool) -> Response:
        lifetime = int(self.token_lifetime_s)
        body: dict[str, object] = {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": self.tokens.issue(principal, lifetime),
        }
        if user_flow:
            body.update(
                {
                    "scope": f"{self.org_url}/user_impersonation {self.org_url}/.default",
                    "refresh_token": self.tokens.issue_refresh(principal),
                    "id_token": self._id_token(principal),
                    "client_info": _b64url(
                        orjson.dumps({"uid": principal.user_id, "utid": self.creds.tenant_id})
                    ),
                }
            )
        return json_response(
            body,
            content_type=PLAIN_JSON,
            headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"},
        )

    def _id_token(self, principal: Principal) -> str:
        """Unsigned JWT: MSAL reads (not verifies) claims from the id_token it is handed."""
        now = int(time.time())
        claims = {
            "aud": self.creds.client_id,
            "iss": self.issuer(),
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "name": self.user_display_name,
            "oid": principal.user_id,
            "preferred_username": principal.upn,
            "sub": _b64url(principal.user_id.encode()),
            "tid": self.creds.tenant_id,
            "ver": "2.0",
        }
        header = _b64url(orjson.dumps({"alg": "none", "typ": "JWT"}))
        return f"{header}.{_b64url(orjson.dumps(claims))}."
