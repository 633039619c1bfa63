"""The Simulator: one HTTPS server playing both Dataverse (Web API) and Entra ID for an org."""

from __future__ import annotations

import gc
import random
import secrets
import tempfile
import threading
from collections import deque
from pathlib import Path
from types import TracebackType

from .admin import AdminEndpoint
from .auth import Authority, Credentials, Principal, TokenStore
from .clock import SimClock
from .faults import FaultInjector
from .generator import DatasetSpec, generate
from .limits import ServiceProtection
from .org import SYSTEM_ADMINISTRATOR, Org, SystemUser
from .realism import ServerTime
from .schema import metadata_id
from .server import ServerThread, SimulatorServer
from .tls import make_server_context
from .webapi import Application, RequestRecord, WebApiState

DEFAULT_TENANT_ID = "5f3c1e7a-2b4d-4c6e-8f10-9a2b3c4d5e6f"
DEFAULT_CLIENT_ID = "0d1e2f3a-4b5c-4d6e-8f70-819a2b3c4d5e"
# The simulator's own fake credentials: not secrets of any real system.
DEFAULT_CLIENT_SECRET = "dynsync-simulator-client-secret"
DEFAULT_USERNAME = "sync.user@dynsync-sim.onmicrosoft.com"
DEFAULT_PASSWORD = "Simulator-Passw0rd!"
ADMIN_KEY_FILE = "admin-key"
_FREEZE_THRESHOLD = 50_000


def _make_users(
    sync_user_is_admin: bool,
    username: str,
    can_read_roles: bool = True,
    can_read_users: bool = True,
) -> tuple[list[SystemUser], str, str]:
    sync_id = metadata_id("systemuser", "sync")
    app_id = metadata_id("systemuser", "application")
    extra = (SYSTEM_ADMINISTRATOR,) if sync_user_is_admin else ()
    users = [
        SystemUser(
            sync_id,
            "Dynsync Sync User",
            username,
            ("Salesperson", *extra),
            can_read_roles=can_read_roles,
            can_read_users=can_read_users,
        ),
        SystemUser(
            app_id,
            "# dynsync-app",
            "dynsync-app@dynsync-sim.onmicrosoft.com",
            ("Basic User", "Dynsync Reader", *extra),
            is_application_user=True,
            can_read_roles=can_read_roles,
            can_read_users=can_read_users,
        ),
        SystemUser(
            metadata_id("systemuser", "alex"),
            "Alex Meyer",
            "alex@dynsync-sim.onmicrosoft.com",
            ("Salesperson",),
        ),
        SystemUser(
            metadata_id("systemuser", "sam"),
            "Sam de Vries",
            "sam@dynsync-sim.onmicrosoft.com",
            ("Sales Manager",),
        ),
        SystemUser(
            metadata_id("systemuser", "robin"),
            "Robin Dubois",
            "robin@dynsync-sim.onmicrosoft.com",
            ("Salesperson",),
        ),
    ]
    return users, sync_id, app_id


class Simulator:
    """Generate an org from a DatasetSpec and serve it over HTTPS on 127.0.0.1."""

    def __init__(
        self,
        spec: DatasetSpec | None = None,
        state_dir: str | Path | None = None,
        port: int = 0,
        *,
        token_lifetime_s: float = 3599,
        delta_token_lifetime_s: float = 7 * 86400,
        max_page_size: int = 5000,
        tenant_id: str = DEFAULT_TENANT_ID,
        client_id: str = DEFAULT_CLIENT_ID,
        client_secret: str = DEFAULT_CLIENT_SECRET,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        sync_user_is_admin: bool = False,
        sync_user_can_read_roles: bool = True,
        sync_user_can_read_users: bool = True,
        request_limit: int = 6000,
        concurrency_limit: int = 52,
        trickle_per_minute: float = 0,
        execution_limit_s: float = 1200,
        realistic_limits: bool = False,
        clock_speed: float = 1.0,
        server_time_scale: float = 1.0,
    ) -> None:
        self.spec = spec or DatasetSpec()
        self.spec.validate()
        self.state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="dynsim-"))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._port = port
        self.token_lifetime_s = token_lifetime_s
        self.tenant_id, self.client_id, self.client_secret = tenant_id, client_id, client_secret
        self.username, self.password = username, password
        self.trickle_per_minute = trickle_per_minute
        # sync_user_can_read_roles / _users=False: both sync principals (ROPC user and
        # application user) lack prvReadRole / prvReadUser, as with a minimal custom role.
        users, sync_id, app_id = _make_users(
            sync_user_is_admin, username, sync_user_can_read_roles, sync_user_can_read_users
        )
        self.org = Org(
            users,
            sync_id,
            app_id,
            organization_id=metadata_id("organization", tenant_id),
            business_unit_id=metadata_id("businessunit", tenant_id),
            delta_token_lifetime_s=delta_token_lifetime_s,
        )
        owners = [u.systemuserid for u in users if not u.is_application_user]
        generate(self.spec, self.org, owners)
        if self.spec.accounts + self.spec.contacts >= _FREEZE_THRESHOLD:
            # Millions of long-lived row lists make every cyclic-GC pass crawl (serving pages
            # ran 5x slower); freezing moves them out of the collector's view for good.
            gc.collect()
            gc.freeze()
        self.faults = FaultInjector()
        self.tokens = TokenStore()
        # realistic_limits: each request costs modelled server time (limits.py, realism.py),
        # server_time_scale times the default (an expensive org: realism.ServerTime.scale);
        # clock_speed: service protection's clock runs that many times real time (clock.py).
        if server_time_scale != 1.0 and not realistic_limits:
            raise ValueError(
                "server_time_scale needs realistic_limits=True (the plain mode "
                "charges the time a request really takes)"
            )
        self.limits = ServiceProtection(
            request_limit,
            concurrency_limit,
            execution_limit_s * 1000,
            clock=SimClock(clock_speed),
            server_time=ServerTime(scale=server_time_scale) if realistic_limits else None,
        )
        self._state = WebApiState(page_cap=max_page_size)
        self.admin_key = secrets.token_urlsafe(24)
        self._server: ServerThread | None = None
        self._bound = False
        self._trickle_stop = threading.Event()
        self._trickle: threading.Thread | None = None
        self.ca_pem_path: Path = self.state_dir / "simulator-ca.pem"

    # ---- lifecycle -----------------------------------------------------------------------

    def start(self) -> Simulator:
        if self._server is not None:
            return self
        context, self.ca_pem_path = make_server_context(self.state_dir)
        server = SimulatorServer(self._port, None, context)  # type: ignore[arg-type]
        self._port = server.server_address[1]
        self._bound = True
        authority = Authority(
            host_url=self.authority_host,
            org_url=self.org_url,
            credentials=Credentials(
                self.tenant_id, self.client_id, self.client_secret, self.username, self.password
            ),
            app=Principal(self.org.app_user_id, "application"),
            user=Principal(self.org.sync_user_id, "user", self.username),
            tokens=self.tokens,
            faults=self.faults,
            token_lifetime_s=self.token_lifetime_s,
            user_display_name=self.org.users[self.org.sync_user_id].fullname,
        )
        server.app = Application(
            self.org,
            self.org_url,
            authority,
            self.tokens,
            self.faults,
            self.limits,
            AdminEndpoint(self, self.admin_key),
            self._state,
        )
        key_path = self.state_dir / ADMIN_KEY_FILE
        key_path.write_text(self.admin_key + "\n")
        key_path.chmod(0o600)
        self._server = ServerThread(server)
        self._server.start()
        if self.trickle_per_minute > 0:
            self._start_trickle()
        return self

    def stop(self) -> None:
        self._trickle_stop.set()
        if self._trickle is not None:
            self._trickle.join(timeout=5)
            self._trickle = None
        if self._server is not None:
            self._server.server.app.queries.prefetcher.stop()
            self._server.stop()
            self._server = None
            self._bound = False

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_trickle(self) -> None:
        interval = 60.0 / self.trickle_per_minute
        rng = random.Random(self.spec.seed + 1)

        def run() -> None:
            while not self._trickle_stop.wait(interval):
                self.org.random_changes(1, rng)

        self._trickle = threading.Thread(target=run, name="dynsync-simulator-trickle", daemon=True)
        self._trickle.start()

    # ---- addresses and settings --------------------------------------------------------

    @property
    def port(self) -> int:
        if not self._bound:
            raise RuntimeError("the simulator is not running; call start() first")
        return self._port

    @property
    def org_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def authority_host(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def max_page_size(self) -> int:
        return self._state.page_cap

    @max_page_size.setter
    def max_page_size(self, value: int) -> None:
        if value < 1:
            raise ValueError("max_page_size must be >= 1")
        self._state.page_cap = int(value)

    @property
    def requests(self) -> deque[RequestRecord]:
        return self._state.requests

    @property
    def write_attempts(self) -> list[RequestRecord]:
        return self._state.write_attempts

    def expire_access_tokens(self) -> None:
        """Every bearer token issued so far now gets 401 (as after expiry or revocation)."""
        self.tokens.expire_all()

    def env(self, flow: str = "client_credentials") -> dict[str, str]:
        """The DYNAMICS_* variables a client needs to talk to this simulator."""
        if flow not in ("client_credentials", "ropc"):
            raise ValueError("flow must be 'client_credentials' or 'ropc'")
        env = {
            "DYNAMICS_URL": self.org_url,
            "DYNAMICS_TENANT_ID": self.tenant_id,
            "DYNAMICS_CLIENT_ID": self.client_id,
            "DYNAMICS_CLIENT_SECRET": self.client_secret,
            "DYNAMICS_AUTHORITY_HOST": self.authority_host,
            "DYNAMICS_CA_BUNDLE": str(self.ca_pem_path),
        }
        if flow == "ropc":
            env["DYNAMICS_USERNAME"] = self.username
            env["DYNAMICS_PASSWORD"] = self.password
        return env
