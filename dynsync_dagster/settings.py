"""Settings from the environment (connection, secrets) and the settings YAML (field selection)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_DUCKDB_PATH = "data/dynsync.duckdb"
DEFAULT_CONFIG_PATH = "dynsync.yaml"
DEFAULT_ACTIVITY_LOG_CONTACT_LIMIT = 5000
# Marketo's custom sync filter: a Two Options column; No keeps a record out of the sync.
DEFAULT_SYNC_FILTER_FIELD = "new_synctomkto"
# Block Field Updates: what each account field may be protected from.
BLOCK_KINDS = ("local_update", "dynamics_sync")
SETTINGS_KEYS = (
    "account_fields",
    "contact_fields",
    "activity_log_contact_limit",
    "sync_filter_field",
    "block_field_updates",
    "activity_log_retention_days",
)
API_PATH = "/api/data/v9.2/"

# Dataverse logical names are lower-case ASCII identifiers; anything else cannot be a field.
_LOGICAL_NAME = re.compile(r"^[a-z][a-z0-9_]{0,99}$")


# Each connection setting (a field of ConnectionSettings) and the variable that sets it.
CONNECTION_VARIABLES = {
    "url": "DYNAMICS_URL",
    "tenant_id": "DYNAMICS_TENANT_ID",
    "client_id": "DYNAMICS_CLIENT_ID",
    "client_secret": "DYNAMICS_CLIENT_SECRET",
    "username": "DYNAMICS_USERNAME",
    "password": "DYNAMICS_PASSWORD",
    "authority_host": "DYNAMICS_AUTHORITY_HOST",
    "ca_bundle": "DYNAMICS_CA_BUNDLE",
}


class SettingsError(ValueError):
    """A setting is missing or malformed. The message names the setting and the fix."""


@dataclass(frozen=True)
class ConnectionSettings:
    """Where the Dynamics org is and how to sign in. Secrets are kept out of repr()."""

    url: str
    tenant_id: str
    client_id: str
    client_secret: str = field(repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    authority_host: str = DEFAULT_AUTHORITY_HOST
    ca_bundle: str | None = None

    @property
    def api_root(self) -> str:
        return self.url + API_PATH

    @property
    def scope(self) -> str:
        return self.url + "/.default"

    @property
    def authority(self) -> str:
        return f"{self.authority_host}/{self.tenant_id}"

    @property
    def flow(self) -> str:
        return "ropc" if self.username else "client_credentials"

    @property
    def secrets(self) -> tuple[str, ...]:
        """Values that must never appear in logs, metadata or the DuckDB file."""
        return tuple(s for s in (self.client_secret, self.password) if s)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ConnectionSettings:
        env = os.environ if env is None else env
        return cls.checked(**{f: env.get(name) for f, name in CONNECTION_VARIABLES.items()})

    @classmethod
    def checked(
        cls,
        *,
        url: str | None,
        tenant_id: str | None,
        client_id: str | None,
        client_secret: str | None,
        username: str | None = None,
        password: str | None = None,
        authority_host: str | None = None,
        ca_bundle: str | None = None,
    ) -> ConnectionSettings:
        """Validate and normalise the settings; an error names the variable to fix.
        An empty value counts as unset."""
        required = {
            "url": url,
            "tenant_id": tenant_id,
            "client_id": client_id,
            "client_secret": client_secret,
        }
        missing = [CONNECTION_VARIABLES[f] for f, value in required.items() if not value]
        if missing:
            raise SettingsError(
                f"missing environment variable(s) {', '.join(missing)}: set them to the org URL "
                "and the app registration's tenant id, client id and secret "
                "(or run `dynsync demo` to use the built-in simulator)"
            )
        if bool(username) != bool(password):
            raise SettingsError(
                "DYNAMICS_USERNAME and DYNAMICS_PASSWORD go together: set both for the "
                "username/password (ROPC) flow, or neither for client credentials"
            )
        if ca_bundle and not Path(ca_bundle).is_file():
            raise SettingsError(
                f"DYNAMICS_CA_BUNDLE points at {ca_bundle!r}, which is not a file: "
                "give the path of a PEM file with the CA certificate(s) to trust"
            )
        return cls(
            url=_https_base_url("DYNAMICS_URL", url),
            tenant_id=tenant_id.strip(),
            client_id=client_id.strip(),
            client_secret=client_secret,
            username=username or None,
            password=password or None,
            authority_host=_https_base_url(
                "DYNAMICS_AUTHORITY_HOST", authority_host or DEFAULT_AUTHORITY_HOST
            ),
            ca_bundle=ca_bundle or None,
        )


def _https_base_url(name: str, value: str) -> str:
    """Normalise a base URL: https only, no trailing slash, no path beyond the host."""
    value = value.strip().rstrip("/")
    if value.endswith(API_PATH.rstrip("/")):
        value = value[: -len(API_PATH.rstrip("/"))]
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.netloc:
        raise SettingsError(
            f"{name}={value!r} is not an https URL: use the form https://<host>[:port] "
            "(e.g. https://contoso.crm.dynamics.com)"
        )
    if parts.path not in ("", "/") or parts.query:
        raise SettingsError(
            f"{name}={value!r} has a path: give only the base URL, e.g. https://contoso.crm.dynamics.com"
        )
    return f"https://{parts.netloc}"


@dataclass(frozen=True)
class SyncSettings:
    """What to sync and how (the settings YAML): the field selection, the activity-log limit,
    the sync filter, blocked field updates and how long activity rows are kept."""

    account_fields: tuple[str, ...]
    contact_fields: tuple[str, ...]
    activity_log_contact_limit: int = DEFAULT_ACTIVITY_LOG_CONTACT_LIMIT
    source: str = "<defaults>"
    sync_filter_field: str = DEFAULT_SYNC_FILTER_FIELD
    # account field -> the update kinds blocked for it (a subset of BLOCK_KINDS)
    block_field_updates: Mapping[str, frozenset[str]] = field(default_factory=dict)
    activity_log_retention_days: int | None = None  # None: keep forever

    def blocked(self, account_field: str, kind: str) -> bool:
        return kind in self.block_field_updates.get(account_field, ())

    @classmethod
    def from_mapping(cls, data: object, source: str = "<mapping>") -> SyncSettings:
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise SettingsError(
                f"{source}: expected a mapping with keys account_fields, contact_fields"
            )
        unknown = sorted(set(data) - set(SETTINGS_KEYS))
        if unknown:
            raise SettingsError(
                f"{source}: unknown key(s) {', '.join(map(str, unknown))}; the keys are "
                + ", ".join(SETTINGS_KEYS)
            )
        account_fields = _field_list(source, "account_fields", data.get("account_fields"))
        retention = data.get("activity_log_retention_days")
        return cls(
            account_fields=account_fields,
            contact_fields=_field_list(source, "contact_fields", data.get("contact_fields")),
            activity_log_contact_limit=_whole_number(
                source,
                "activity_log_contact_limit",
                data.get("activity_log_contact_limit", DEFAULT_ACTIVITY_LOG_CONTACT_LIMIT),
                0,
            ),
            source=source,
            sync_filter_field=_filter_field(source, data.get("sync_filter_field")),
            block_field_updates=_blocks(source, data.get("block_field_updates"), account_fields),
            activity_log_retention_days=(
                None
                if retention is None
                else _whole_number(source, "activity_log_retention_days", retention, 1)
            ),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> SyncSettings:
        path = Path(path or os.environ.get("DYNSYNC_CONFIG") or DEFAULT_CONFIG_PATH)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SettingsError(
                f"settings file {str(path)!r} not found: create it (see dynsync.yaml in the "
                "repository) or point DYNSYNC_CONFIG at it"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise SettingsError(
                f"{path}: not valid YAML{where} ({problem}); fix the file (see dynsync.yaml in "
                "the repository for the format)"
            ) from None
        return cls.from_mapping(data, source=str(path))


def _whole_number(source: str, key: str, value: object, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise SettingsError(f"{source}: {key} must be a whole number >= {least}, got {value!r}")
    return value


def _filter_field(source: str, value: object) -> str:
    if value is None:
        return DEFAULT_SYNC_FILTER_FIELD
    if not isinstance(value, str) or not _LOGICAL_NAME.match(value.strip().lower()):
        raise SettingsError(
            f"{source}: sync_filter_field must be the logical name of a Two Options column "
            f"(default {DEFAULT_SYNC_FILTER_FIELD}), got {value!r}"
        )
    return value.strip().lower()


def _blocks(
    source: str, value: object, account_fields: tuple[str, ...]
) -> dict[str, frozenset[str]]:
    """`{<account field>: [local_update | dynamics_sync]}`, for selected account fields only."""
    if value is None:
        return {}
    usage = (
        "block_field_updates maps an account field to a list of local_update and/or "
        "dynamics_sync, e.g. {industrycode: [local_update]}"
    )
    if not isinstance(value, Mapping):
        raise SettingsError(f"{source}: {usage}")
    blocks: dict[str, frozenset[str]] = {}
    for name, kinds in value.items():
        field_name = str(name).strip().lower()
        if field_name not in account_fields:
            raise SettingsError(
                f"{source}: block_field_updates names {name!r}, which is not in account_fields; "
                "block only account fields that sync"
            )
        if isinstance(kinds, str):
            kinds = [kinds]
        if not isinstance(kinds, list) or not kinds or not set(kinds) <= set(BLOCK_KINDS):
            raise SettingsError(f"{source}: block_field_updates.{name}: {usage}")
        blocks[field_name] = frozenset(kinds)
    return blocks


def _field_list(source: str, key: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"{source}: {key} must be a list of field logical names")
    names = [v.strip().lower() for v in value]
    bad = [v for v in names if not _LOGICAL_NAME.match(v)]
    if bad:
        raise SettingsError(
            f"{source}: {key} has names that cannot be Dynamics logical names: {bad!r} "
            "(lower-case letters, digits and underscores)"
        )
    dupes = sorted({v for v in names if names.count(v) > 1})
    if dupes:
        raise SettingsError(f"{source}: {key} lists {', '.join(dupes)} more than once")
    return tuple(names)


def duckdb_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("DYNSYNC_DUCKDB_PATH") or DEFAULT_DUCKDB_PATH)
