"""Request routing for the whole simulator: authority, admin API and Web API /api/data/v9.2/."""

from __future__ import annotations

import re
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote, urlsplit

from .annotations import parse_prefer
from .auth import Authority, Principal, TokenStore
from .errors import ODataError, not_implemented
from .faults import FaultInjector
from .limits import ServiceProtection
from .metadata import MetadataService
from .org import Org
from .query import EntityQueries, QueryContext
from .record_counts import RecordCounts
from .responses import Response, json_response

API_ROOT = "/api/data/v9.2/"
# Read-only functions Dataverse has and the simulator does not serve: 501, not a 404.
_UNSERVED_FUNCTIONS = frozenset({"RetrieveMetadataChanges", "RetrieveAllEntities"})
_KEYED = re.compile(
    r"^(\w+)\(([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\)$"
)


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    status: int
    principal: str | None


@dataclass
class Request:
    method: str
    target: str  # path + query, as on the request line
    headers: dict[str, str]  # lower-cased names
    prefer: list[str]
    body: bytes = b""


@dataclass
class Outcome:
    """A response plus how to deliver it ("drop" and "malformed" faults break delivery)."""

    response: Response
    delivery: str = "normal"


@dataclass
class WebApiState:
    """Settings that tests flip at runtime."""

    page_cap: int = 5000
    requests: deque[RequestRecord] = field(default_factory=lambda: deque(maxlen=20000))
    write_attempts: list[RequestRecord] = field(default_factory=list)


class Application:
    """Turns one parsed HTTP request into an Outcome; thread-safe."""

    def __init__(
        self,
        org: Org,
        org_url: str,
        authority: Authority,
        tokens: TokenStore,
        faults: FaultInjector,
        limits: ServiceProtection,
        admin: Callable[[Request], Response],
        state: WebApiState,
    ) -> None:
        self.org = org
        self.org_url = org_url
        self.authority = authority
        self.tokens = tokens
        self.faults = faults
        self.limits = limits
        self.admin = admin
        self.state = state
        self.queries = EntityQueries(org)
        self.metadata = MetadataService(org)
        self._record_lock = threading.Lock()
        self.record_counts = RecordCounts(org)

    def handle(self, request: Request) -> Outcome:
        path = urlsplit(request.target).path
        principal: str | None = None
        try:
            if path.startswith("/_simulator/"):
                outcome = Outcome(self.admin(request))
            elif path.startswith("/api/data/"):
                outcome, principal = self._web_api(request, path)
            elif self.authority.handles(path):
                outcome = Outcome(
                    self.authority.handle(request.method, path, request.headers, request.body)
                )
            else:
                outcome = Outcome(_error(404, "0x80060888", f"Resource not found: '{path}'."))
        except ODataError as exc:
            outcome = Outcome(
                Response(
                    exc.status, exc.body(), "application/json; charset=utf-8", dict(exc.headers)
                )
            )
        outcome.response.headers.setdefault("x-ms-service-request-id", str(uuid.uuid4()))
        record = RequestRecord(request.method, request.target, outcome.response.status, principal)
        with self._record_lock:
            self.state.requests.append(record)
        return outcome

    # ---- Web API -----------------------------------------------------------------------

    def _authenticate(self, request: Request) -> Principal:
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        principal = self.tokens.resolve(token) if token else None
        if principal is None:
            raise self._unauthorized()
        return principal

    def _unauthorized(self) -> ODataError:
        tenant = self.authority.creds.tenant_id
        challenge = (
            f"Bearer authorization_uri={self.authority.host_url}/{tenant}/oauth2/"
            f"authorize, resource_id={self.org_url}/"
        )
        error = ODataError(401, "", "")
        error.headers = {"WWW-Authenticate": challenge}
        return error

    def _web_api(self, request: Request, path: str) -> tuple[Outcome, str | None]:
        if request.method not in ("GET", "HEAD"):
            with self._record_lock:
                self.state.write_attempts.append(
                    RequestRecord(request.method, request.target, 405, None)
                )
            return Outcome(
                _error(
                    405,
                    "0x80060888",
                    f"The requested resource does not support http method '{request.method}'. The "
                    "dynsync simulator is read-only: a sync client must never write to Dynamics.",
                    {"Allow": "GET"},
                )
            ), None
        principal = self._authenticate(request)
        fault = self.faults.take(False, request.target)
        if fault is not None and fault.kind not in ("drop", "malformed"):
            raise _fault_error(fault.kind, fault.retry_after, self._unauthorized)
        started = self.limits.enter(principal.user_id)
        response: Response | None = None
        try:
            response = self._route(request, path, principal)
        finally:  # charges the request's execution time (and holds it, in the realistic mode)
            self.limits.exit(principal.user_id, started, response)
        response.headers.update(self.limits.headers(principal.user_id))
        response.headers["OData-Version"] = "4.0"
        delivery = fault.kind if fault is not None else "normal"
        return Outcome(response, delivery), principal.user_id

    def _route(self, request: Request, path: str, principal: Principal) -> Response:
        if not path.startswith(API_ROOT):
            raise ODataError(
                404,
                "0x80060888",
                f"Resource not found for the segment "
                f"'{path.removeprefix('/api/data/').split('/')[0]}'.",
            )
        base = f"{self.org_url}{API_ROOT}"
        rest = unquote(path[len(API_ROOT) :]).strip("/")
        segments = rest.split("/") if rest else []
        query = urlsplit(request.target).query
        params = parse_qsl(query, keep_blank_values=True)
        plain = dict(params)
        if not segments:
            return self._service_document(base)
        head = segments[0]
        if head in ("WhoAmI", "WhoAmI()") and len(segments) == 1:
            return self.metadata.who_am_i(principal.user_id, base)
        if head.split("(")[0] == "RetrieveTotalRecordCount":
            return self.record_counts.answer(head, plain, base)
        if head.split("(")[0] in _UNSERVED_FUNCTIONS:
            raise not_implemented(f"The {head.split('(')[0]} function")
        if head.startswith("EntityDefinitions"):
            return self.metadata.handle(segments, plain, base)
        keyed = _KEYED.match(head)
        if keyed and keyed.group(1) == "systemusers":
            return self.metadata.system_user(
                keyed.group(2), segments[1:], plain, base, principal.user_id
            )
        sets = {t.entity.entity_set: t for t in self.org.tables.values()}
        ctx = QueryContext(
            base, principal.user_id, parse_prefer(request.prefer), self.state.page_cap, params
        )
        if head in sets:
            table = sets[head]
            if len(segments) == 1:
                return self.queries.collection(table, ctx)
            if segments[1:] == ["$count"]:
                return self.queries.count(table, ctx)
        elif keyed and keyed.group(1) in sets and len(segments) == 1:
            return self.queries.single(sets[keyed.group(1)], keyed.group(2), ctx)
        elif keyed and keyed.group(1) in sets and len(segments) == 2:
            related = self.queries.related(sets[keyed.group(1)], keyed.group(2), segments[1], ctx)
            if related is not None:
                return related
        raise ODataError(404, "0x80060888", f"Resource not found for the segment '{head}'.")

    def _service_document(self, base: str) -> Response:
        names = [t.entity.entity_set for t in self.org.tables.values()]
        names += ["EntityDefinitions", "systemusers"]
        return json_response(
            {
                "@odata.context": f"{base}$metadata",
                "value": [{"name": n, "kind": "EntitySet", "url": n} for n in names],
            }
        )


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    error = ODataError(status, code, message, headers)
    return Response(status, error.body(), "application/json; charset=utf-8", dict(error.headers))


def _fault_error(
    kind: str, retry_after: float, unauthorized: Callable[[], ODataError]
) -> ODataError:
    if kind == "429":
        return ODataError(
            429,
            "0x80072322",
            "Number of requests exceeded the limit of 6000 over time window of 300 seconds.",
            {"Retry-After": str(max(0, round(retry_after)))},
        )
    if kind == "500":
        return ODataError(500, "0x80040216", "An unexpected error occurred.")
    if kind == "401":
        return unauthorized()
    messages = {"502": "Bad Gateway", "503": "Service Unavailable", "504": "Gateway Timeout"}
    headers = {"Retry-After": str(max(0, round(retry_after)))} if kind == "503" else {}
    return ODataError(int(kind), "", messages[kind], headers)
