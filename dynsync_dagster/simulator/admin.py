"""Control a running simulator over HTTP: the /_simulator/call endpoint and its client."""

from __future__ import annotations

import hmac
import json
import random
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import requests

from .responses import PLAIN_JSON, Response, json_response

if TYPE_CHECKING:
    from .simulator import Simulator

ADMIN_PATH = "/_simulator/call"
KEY_HEADER = "X-Simulator-Key"
ORG_METHODS = frozenset({
    "account_ids", "contact_ids", "get_account", "get_contact", "contacts_of",
    "create_account", "update_account", "delete_account", "touch_account", "merge_accounts",
    "create_contact", "update_contact", "reparent_contact", "delete_contact",
    "set_secured_readable", "delete_attribute", "add_attribute", "set_change_tracking",
    "expire_delta_tokens", "advance_clock",
})  # fmt: skip


def _default(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


class AdminEndpoint:
    """Dispatches whitelisted calls; anything else is refused."""

    def __init__(self, sim: Simulator, key: str) -> None:
        self.sim = sim
        self.key = key

    def _methods(self) -> dict[str, Callable[..., Any]]:
        org = self.sim.org
        methods: dict[str, Callable[..., Any]] = {name: getattr(org, name) for name in ORG_METHODS}
        methods["random_changes"] = lambda n=1, seed=None: org.random_changes(
            int(n), random.Random(seed)
        )
        methods["faults.inject"] = self.sim.faults.inject
        methods["faults.clear"] = self.sim.faults.clear
        methods["faults.active"] = self.sim.faults.active
        methods["max_page_size"] = self._max_page_size
        methods["current_version"] = lambda: org.current_version
        methods["expire_access_tokens"] = self.sim.expire_access_tokens
        return methods

    def _max_page_size(self, value: int | None = None) -> int:
        if value is not None:
            self.sim.max_page_size = int(value)
        return self.sim.max_page_size

    def __call__(self, request: Any) -> Response:
        if request.method != "POST" or request.target.split("?")[0] != ADMIN_PATH:
            return _fail(404, "not_found", f"use POST {ADMIN_PATH}")
        key = request.headers.get(KEY_HEADER.lower(), "")
        if not hmac.compare_digest(key.encode(), self.key.encode()):
            return _fail(403, "forbidden", f"missing or wrong {KEY_HEADER} header")
        try:
            call = json.loads(request.body or b"{}")
            method, kwargs = call["method"], call.get("kwargs") or {}
        except (ValueError, KeyError, TypeError):
            return _fail(400, "bad_request", 'body must be {"method": "...", "kwargs": {...}}')
        target = self._methods().get(method)
        if target is None:
            return _fail(
                404,
                "unknown_method",
                f"{method!r} is not an admin method; known: {', '.join(sorted(self._methods()))}",
            )
        try:
            result = target(**kwargs)
        except (ValueError, KeyError, TypeError) as exc:
            return _fail(400, type(exc).__name__, str(exc))
        body = orjson.dumps({"result": result}, default=_default, option=orjson.OPT_UTC_Z)
        return Response(200, body, PLAIN_JSON)


def _fail(status: int, code: str, message: str) -> Response:
    return json_response(
        {"error": {"code": code, "message": message}}, status=status, content_type=PLAIN_JSON
    )


class SimulatorAdminError(RuntimeError):
    """The simulator refused or failed an admin call."""


class SimulatorAdmin:
    """Client for a simulator in another process (demo, benchmarks)."""

    def __init__(self, base_url: str, key: str, ca_pem_path: str | Path) -> None:
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.ca_pem_path = str(ca_pem_path)
        self._session = requests.Session()
        self._session.trust_env = False  # REQUESTS_CA_BUNDLE must not override our CA

    @classmethod
    def from_state_dir(cls, state_dir: str | Path) -> SimulatorAdmin:
        """Find a simulator started by `python -m dynsync_dagster.simulator` (simulator.json)."""
        info = json.loads((Path(state_dir) / "simulator.json").read_text())
        key = Path(info["admin_key_path"]).read_text().strip()
        return cls(info["org_url"], key, info["ca_pem_path"])

    def call(self, method: str, **kwargs: Any) -> Any:
        response = self._session.post(
            f"{self.base_url}{ADMIN_PATH}",
            json={"method": method, "kwargs": kwargs},
            headers={KEY_HEADER: self.key},
            verify=self.ca_pem_path,
            timeout=120,
        )
        data = response.json()
        if response.status_code != 200:
            error = data.get("error", {})
            raise SimulatorAdminError(f"{method}: {error.get('code')}: {error.get('message')}")
        return data["result"]

    def close(self) -> None:
        self._session.close()
