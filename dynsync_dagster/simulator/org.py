"""The simulated organisation: records, versions, change log, field security and schema drift."""

from __future__ import annotations

import contextlib
import random
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from .schema import (
    SYSTEM_COLUMNS,
    TYPE_NAMES,
    Attribute,
    Entity,
    account_entity,
    contact_entity,
)
from .table import Table

SYSTEM_ADMINISTRATOR = "System Administrator"
USD_CURRENCY_ID = "8d3c5e1a-0b2f-4e8a-9d6b-1f0e2a3b4c5d"
_DELTA_STAMP = "%m/%d/%Y %H:%M:%S"


@dataclass(frozen=True)
class SystemUser:
    systemuserid: str
    fullname: str
    domainname: str
    roles: tuple[str, ...]
    is_application_user: bool = False
    # False models a minimal custom role without prvReadRole: reading its roles is a 403.
    can_read_roles: bool = True
    # False: no prvReadUser, so its own systemuser row and the functions bound to it are 403.
    can_read_users: bool = True

    @property
    def is_admin(self) -> bool:
        return SYSTEM_ADMINISTRATOR in self.roles


class DeltaTokenError(Exception):
    """A $deltatoken that is malformed (expired=False) or too old / invalidated (expired=True)."""

    def __init__(self, expired: bool) -> None:
        super().__init__("expired" if expired else "malformed")
        self.expired = expired


# AttributeTypeName -> AttributeType of the columns add_attribute can create. A multi-select
# choice is stored as a Virtual column whose type name stays MultiSelectPicklistType.
_ADDABLE_TYPES = {
    TYPE_NAMES[code]: code
    for code in (
        "String", "Memo", "Integer", "BigInt", "Decimal", "Double", "Money", "Boolean",
        "DateTime", "Picklist", "Lookup",
    )
} | {"MultiSelectPicklistType": "Virtual"}  # fmt: skip


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _coerce(attr: Attribute, value: Any) -> Any:
    """Normalise a caller-supplied value to the stored representation of the attribute's type."""
    if value is None:
        return None
    kind = attr.attribute_type
    if kind == "DateTime":
        if attr.datetime_behavior == "DateOnly":
            if isinstance(value, datetime):
                return value.date()
            return value if isinstance(value, date) else date.fromisoformat(str(value))
        if isinstance(value, str):
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if value.tzinfo is None:
            raise ValueError(f"{attr.logical_name}: datetime must be timezone-aware")
        return value.astimezone(UTC).replace(microsecond=0)
    if kind in ("Money", "Decimal", "Double"):
        return round(float(value), attr.precision if attr.precision is not None else 4)
    if kind in ("Integer", "BigInt", "Picklist", "State", "Status"):
        return int(value)
    if kind == "Boolean":
        if not isinstance(value, bool):
            raise ValueError(f"{attr.logical_name}: expected a bool, got {value!r}")
        return value
    if kind in ("Lookup", "Customer", "Owner", "Uniqueidentifier"):
        return str(uuid.UUID(str(value)))
    if attr.options and attr.type_name == "MultiSelectPicklistType":
        return str(value)
    return str(value)


class Org:
    """All data and every mutation of the simulated org; every method is thread-safe."""

    def __init__(
        self,
        users: Iterable[SystemUser],
        sync_user_id: str,
        app_user_id: str,
        organization_id: str,
        business_unit_id: str,
        start_version: int = 1_000_000,
        delta_token_lifetime_s: float = 7 * 86400,
    ) -> None:
        self.lock = threading.RLock()
        self.tables: dict[str, Table] = {
            "account": Table(account_entity()),
            "contact": Table(contact_entity()),
        }
        self.users: dict[str, SystemUser] = {u.systemuserid: u for u in users}
        self.sync_user_id = sync_user_id
        self.app_user_id = app_user_id
        self.organization_id = organization_id
        self.business_unit_id = business_unit_id
        self.delta_token_lifetime_s = delta_token_lifetime_s
        self.clock: Callable[[], datetime] = _utc_now
        self._clock_offset = timedelta(0)
        self._backdate = timedelta(0)
        self._version = start_version
        # Secured columns the (non-admin) sync/app user may read through its field profile.
        self._readable_secured: dict[str, set[str]] = {
            "account": {"creditlimit"},
            "contact": {"annualincome"},
        }
        self.security_version = 0
        # id -> version at which its primary name last changed (for formatted-value caches).
        self.name_versions: dict[str, int] = {}
        self._children: dict[str, set[str]] = {}
        # Deleted contacts as they were, for restore_contact (Dataverse's recycle bin).
        self._recycle_bin: dict[str, list[Any]] = {}
        self._issued_tokens: dict[tuple[str, str], bool] = {}  # (entity, token) -> expired
        self.metadata_version = 0

    # ---- clock and versions -------------------------------------------------------------

    def now(self) -> datetime:
        """Org time, second precision UTC (what modifiedon gets)."""
        return (self.clock() + self._clock_offset).astimezone(UTC).replace(microsecond=0)

    @contextlib.contextmanager
    def backdated(self, seconds: float) -> Iterator[None]:
        """Writes inside get a modifiedon `seconds` in the past but a current versionnumber:
        a long transaction that commits (becomes visible) after later-stamped rows."""
        with self.lock:
            previous = self._backdate
            self._backdate = timedelta(seconds=seconds)
            try:
                yield
            finally:
                self._backdate = previous

    def advance_clock(self, seconds: float) -> None:
        with self.lock:
            self._clock_offset += timedelta(seconds=seconds)

    @property
    def current_version(self) -> int:
        return self._version

    def _next_version(self) -> int:
        self._version += 1
        return self._version

    def table(self, entity: str) -> Table:
        try:
            return self.tables[entity]
        except KeyError:
            raise ValueError(f"unknown entity {entity!r}; use 'account' or 'contact'") from None

    def entity(self, entity: str) -> Entity:
        return self.table(entity).entity

    # ---- bulk load (generator) ----------------------------------------------------------

    def load(self, entity: str, rows: dict[str, list[Any]], last_version: int) -> None:
        with self.lock:
            table = self.table(entity)
            table.bulk_load(rows)
            self._version = max(self._version, last_version)
            table.data_version = self._version
            if entity == "contact":
                slot = table.slot("parentcustomerid")
                for cid, row in rows.items():
                    if row[slot] is not None:
                        self._children.setdefault(row[slot], set()).add(cid)

    # ---- reads -------------------------------------------------------------------------

    def account_ids(self) -> list[str]:
        with self.lock:
            return list(self.tables["account"].sorted_ids)

    def contact_ids(self) -> list[str]:
        with self.lock:
            return list(self.tables["contact"].sorted_ids)

    def get_account(self, account_id: str) -> dict[str, Any]:
        return self._get("account", account_id)

    def get_contact(self, contact_id: str) -> dict[str, Any]:
        return self._get("contact", contact_id)

    def _get(self, entity: str, record_id: str) -> dict[str, Any]:
        with self.lock:
            table = self.table(entity)
            row = self._row(table, record_id)
            out: dict[str, Any] = {}
            for name, attr in table.entity.attributes.items():
                if attr.attribute_of is None or name.endswith("type"):
                    out[name] = row[table.slots[name]]
            for name, attr in table.entity.attributes.items():
                if attr.is_lookup and len(attr.targets) == 1 and out.get(name) is not None:
                    out[f"{name}type"] = attr.targets[0]
            return out

    def contacts_of(self, account_id: str) -> list[str]:
        """Contacts whose parent customer is this account (sorted)."""
        with self.lock:
            contacts = self.tables["contact"]
            slot = contacts.slot("parentcustomeridtype")
            return sorted(
                c for c in self._children.get(account_id, ()) if contacts.rows[c][slot] == "account"
            )

    def primary_name(self, target_type: str | None, record_id: str) -> str | None:
        """The formatted value of a lookup: the target record's primary name."""
        if target_type in self.tables:
            table = self.tables[target_type]
            row = table.rows.get(record_id)
            return None if row is None else row[table.slots[table.entity.primary_name]]
        if target_type == "systemuser":
            user = self.users.get(record_id)
            return user.fullname if user else None
        if target_type == "transactioncurrency":
            return "US Dollar"
        return None

    # ---- field security ----------------------------------------------------------------

    def set_secured_readable(self, entity: str, field: str, readable: bool) -> None:
        with self.lock:
            attr = self.entity(entity).attributes.get(field)
            if attr is None or not attr.is_secured:
                raise ValueError(f"{entity}.{field} is not a secured column")
            target = self._readable_secured.setdefault(entity, set())
            if readable:
                target.add(field)
            else:
                target.discard(field)
            self.security_version += 1

    def set_user_admin(self, user_id: str, admin: bool) -> None:
        with self.lock:
            user = self.users[user_id]
            roles = tuple(r for r in user.roles if r != SYSTEM_ADMINISTRATOR)
            if admin:
                roles = (*roles, SYSTEM_ADMINISTRATOR)
            self.users[user_id] = SystemUser(
                user.systemuserid, user.fullname, user.domainname, roles, user.is_application_user
            )
            self.security_version += 1

    def can_read(self, user_id: str, entity: str, field: str) -> bool:
        user = self.users.get(user_id)
        if user is not None and user.is_admin:
            return True
        return field in self._readable_secured.get(entity, set())

    def masked_columns(self, user_id: str, entity: str) -> frozenset[str]:
        """Secured columns this user cannot read: they are served as null."""
        with self.lock:
            return frozenset(
                a.logical_name
                for a in self.entity(entity).attributes.values()
                if a.is_secured and not self.can_read(user_id, entity, a.logical_name)
            )

    # ---- schema drift / change tracking settings ----------------------------------------

    def delete_attribute(self, entity: str, field: str) -> None:
        with self.lock:
            table = self.table(entity)
            attr = table.entity.attributes.get(field)
            if attr is None or attr.attribute_of is not None:
                raise ValueError(f"{entity} has no attribute {field!r}")
            if field == table.entity.primary_id or field in SYSTEM_COLUMNS:
                raise ValueError(f"{entity}.{field} is a system column and cannot be deleted")
            for child in [a for a in table.entity.attributes.values() if a.attribute_of == field]:
                table.drop_column(child.logical_name)
            table.drop_column(field)
            table.schema_version += 1
            self.metadata_version += 1

    def add_attribute(
        self,
        entity: str,
        logical_name: str,
        attribute_type_name: str,
        *,
        is_secured: bool = False,
        is_valid_for_read: bool = True,
        options: list[tuple[int, str]] | None = None,
        targets: list[str] | None = None,
        precision: int | None = None,
        max_length: int | None = None,
        datetime_behavior: str | None = None,
    ) -> None:
        """Add a column; `attribute_type_name` is an AttributeTypeName like 'StringType'."""
        type_code = _ADDABLE_TYPES.get(attribute_type_name)
        if type_code is None:
            raise ValueError(f"unsupported attribute type {attribute_type_name!r}")
        if type_code == "Lookup" and not targets:
            raise ValueError("a LookupType attribute needs targets")
        with self.lock:
            table = self.table(entity)
            if logical_name in table.entity.attributes:
                raise ValueError(f"{entity}.{logical_name} already exists")
            if type_code == "Boolean" and not options:
                options = [(0, "No"), (1, "Yes")]
            attr = Attribute(
                entity=entity,
                logical_name=logical_name.lower(),
                attribute_type=type_code,
                is_secured=is_secured,
                is_valid_for_read=is_valid_for_read,
                options=tuple((int(v), str(label)) for v, label in (options or [])),
                targets=tuple(targets or ()),
                precision=precision
                if precision is not None
                else (2 if type_code == "Money" else None),
                max_length=max_length,
                datetime_behavior=datetime_behavior
                or ("UserLocal" if type_code == "DateTime" else None),
                is_custom=True,
                type_name=attribute_type_name,
            )
            table.add_column(attr)
            if type_code == "Lookup":
                table.add_column(
                    Attribute(entity, f"{logical_name}name", "String", attribute_of=logical_name)
                )
            table.schema_version += 1
            self.metadata_version += 1

    def set_change_tracking(self, entity: str, enabled: bool) -> None:
        with self.lock:
            self.entity(entity).change_tracking = enabled
            self.metadata_version += 1

    # ---- delta tokens ------------------------------------------------------------------

    def issue_delta_token(self, entity: str, version: int) -> str:
        with self.lock:
            token = f"{version}!{self.now().strftime(_DELTA_STAMP)}"
            self._issued_tokens.setdefault((entity, token), False)
            return token

    def check_delta_token(self, entity: str, token: str) -> int:
        """Version the token stands for, or DeltaTokenError (malformed or expired)."""
        version_text, sep, stamp_text = token.partition("!")
        try:
            if not sep or not version_text.isdigit():
                raise ValueError(token)
            version = int(version_text)
            stamp = datetime.strptime(stamp_text, _DELTA_STAMP).replace(tzinfo=UTC)
        except ValueError:
            raise DeltaTokenError(expired=False) from None
        with self.lock:
            expired = self._issued_tokens.get((entity, token))
            # A well-formed token this org never issued (e.g. from before a restart) is stale.
            if expired is None or expired or version > self._version:
                raise DeltaTokenError(expired=True)
            if (self.now() - stamp).total_seconds() > self.delta_token_lifetime_s:
                raise DeltaTokenError(expired=True)
            return version

    def expire_delta_tokens(self, entity: str | None = None) -> None:
        """Every delta token issued so far (for one entity or all) now fails with 0x80044352."""
        with self.lock:
            for key in self._issued_tokens:
                if entity is None or key[0] == entity:
                    self._issued_tokens[key] = True

    # ---- mutations ---------------------------------------------------------------------

    def _row(self, table: Table, record_id: str) -> list[Any]:
        try:
            return table.rows[str(record_id).lower()]
        except KeyError:
            raise KeyError(f"{table.name} {record_id} does not exist") from None

    def _apply_fields(self, table: Table, row: list[Any], fields: dict[str, Any]) -> None:
        attrs = table.entity.attributes
        for name, value in fields.items():
            attr = attrs.get(name)
            if attr is not None and attr.attribute_type == "EntityName" and attr.attribute_of:
                # The target type of a polymorphic lookup (e.g. parentcustomeridtype).
                if value not in attrs[attr.attribute_of].targets:
                    raise ValueError(f"{table.name}.{name} must be one of the lookup's targets")
                row[table.slots[name]] = value
                continue
            if attr is None or attr.attribute_of is not None:
                raise ValueError(f"{table.name} has no settable attribute {name!r}")
            if name in SYSTEM_COLUMNS or name == table.entity.primary_id:
                raise ValueError(f"{table.name}.{name} is maintained by the platform")
            row[table.slots[name]] = _coerce(attr, value)
            if attr.is_lookup and len(attr.targets) > 1:
                type_slot = table.slots.get(f"{name}type")
                if type_slot is not None:
                    default = "systemuser" if attr.attribute_type == "Owner" else attr.targets[0]
                    row[type_slot] = None if value is None else (row[type_slot] or default)
            if attr.attribute_type == "Money" and value is not None:
                cur = table.slots.get("transactioncurrencyid")
                if cur is not None and row[cur] is None:
                    row[cur] = USD_CURRENCY_ID

    def _derive(self, table: Table, row: list[Any]) -> None:
        """Platform-computed columns: contact fullname and the read-only accountid lookup."""
        if table.name != "contact":
            return
        s = table.slots
        parts = [p for p in (row[s["firstname"]], row[s["lastname"]]) if p]
        row[s["fullname"]] = " ".join(parts) or None
        is_account = row[s["parentcustomeridtype"]] == "account"
        row[s["accountid"]] = row[s["parentcustomerid"]] if is_account else None

    def _stamp(self, table: Table, record_id: str, row: list[Any], old_name: Any) -> int:
        version = self._next_version()
        row[table.slots["modifiedon"]] = self.now() - self._backdate
        row[table.slots["versionnumber"]] = version
        table.record_change(version, record_id, deleted=False)
        if row[table.slots[table.entity.primary_name]] != old_name:
            self.name_versions[record_id] = version
        return version

    def _create(self, entity: str, fields: dict[str, Any]) -> str:
        with self.lock:
            table = self.table(entity)
            record_id = str(uuid.uuid4())
            row = table.new_row()
            s = table.slots
            row[s[table.entity.primary_id]] = record_id
            row[s["statecode"]] = 0
            row[s["statuscode"]] = 1
            row[s["ownerid"]] = self.sync_user_id
            row[s["owneridtype"]] = "systemuser"
            self._apply_fields(table, row, fields)
            self._derive(table, row)
            row[s["createdon"]] = self.now()
            table.insert(record_id, row)
            self._stamp(table, record_id, row, old_name=object())
            self._link_child(table, record_id, row)
            return record_id

    def _update(self, entity: str, record_id: str, fields: dict[str, Any]) -> int:
        with self.lock:
            table = self.table(entity)
            row = self._row(table, record_id)
            old_name = row[table.slots[table.entity.primary_name]]
            self._unlink_child(table, record_id, row)
            self._apply_fields(table, row, fields)
            self._derive(table, row)
            self._link_child(table, record_id, row)
            return self._stamp(table, row[table.slots[table.entity.primary_id]], row, old_name)

    def _link_child(self, table: Table, record_id: str, row: list[Any]) -> None:
        if table.name == "contact":
            parent = row[table.slots["parentcustomerid"]]
            if parent is not None:
                self._children.setdefault(parent, set()).add(record_id)

    def _unlink_child(self, table: Table, record_id: str, row: list[Any]) -> None:
        if table.name == "contact":
            parent = row[table.slots["parentcustomerid"]]
            if parent is not None:
                self._children.get(parent, set()).discard(record_id)

    def _delete(self, entity: str, record_id: str) -> None:
        with self.lock:
            table = self.table(entity)
            record_id = str(record_id).lower()
            row = self._row(table, record_id)
            # Parental relationship: deleting a parent customer deletes its contacts first.
            for child in sorted(self._children.pop(record_id, set())):
                if child in self.tables["contact"].rows:
                    self._delete("contact", child)
            row = table.rows.get(record_id)
            if row is None:
                return
            self._unlink_child(table, record_id, row)
            table.remove(record_id)
            if entity == "contact":
                self._recycle_bin[record_id] = row
            version = self._next_version()
            table.record_change(version, record_id, deleted=True)
            self.name_versions[record_id] = version
            self._remove_links_to(entity, record_id)

    def _remove_links_to(self, entity: str, record_id: str) -> None:
        """Referential (RemoveLink) lookups to a deleted record are cleared, which is an update."""
        accounts = self.tables["account"]
        lookups = {"account": ("parentaccountid", "masterid"), "contact": ("primarycontactid",)}
        for field in lookups.get(entity, ()):
            slot = accounts.slots[field]
            for aid in [a for a, r in accounts.rows.items() if r[slot] == record_id]:
                self._update("account", aid, {field: None})

    def create_account(self, **fields: Any) -> str:
        return self._create("account", fields)

    def update_account(self, account_id: str, **fields: Any) -> int:
        return self._update("account", account_id, fields)

    def touch_account(self, account_id: str) -> int:
        """An update that changes no value: new versionnumber and modifiedon only."""
        return self._update("account", account_id, {})

    def delete_account(self, account_id: str) -> None:
        self._delete("account", account_id)

    def create_contact(
        self, parent_id: str | None = None, parent_type: str | None = "account", **fields: Any
    ) -> str:
        with self.lock:
            self._check_parent(parent_id, parent_type)
            cid = self._create("contact", {**fields, **self._parent_fields(parent_id, parent_type)})
            return cid

    def update_contact(self, contact_id: str, **fields: Any) -> int:
        return self._update("contact", contact_id, fields)

    def reparent_contact(
        self, contact_id: str, parent_id: str | None, parent_type: str | None = "account"
    ) -> int:
        with self.lock:
            self._check_parent(parent_id, parent_type)
            if parent_id is not None and str(parent_id).lower() == str(contact_id).lower():
                raise ValueError("a contact cannot be its own parent customer")
            return self._update("contact", contact_id, self._parent_fields(parent_id, parent_type))

    def delete_contact(self, contact_id: str) -> None:
        self._delete("contact", contact_id)

    def restore_contact(self, contact_id: str) -> int:
        """Dataverse's restore of a deleted record: the same id and values, a new version.

        Change tracking reports it as a new or updated record. Its parent must still exist.
        """
        with self.lock:
            table = self.tables["contact"]
            record_id = str(contact_id).lower()
            if record_id not in self._recycle_bin:
                raise KeyError(f"contact {contact_id} is not in the recycle bin")
            row = self._recycle_bin[record_id]
            parent = row[table.slots["parentcustomerid"]]
            parent_type = row[table.slots["parentcustomeridtype"]]
            self._check_parent(parent, parent_type)
            del self._recycle_bin[record_id]
            table.insert(record_id, row)
            self._link_child(table, record_id, row)
            return self._stamp(table, record_id, row, old_name=object())

    def _check_parent(self, parent_id: str | None, parent_type: str | None) -> None:
        if parent_id is None:
            return
        if parent_type not in ("account", "contact"):
            raise ValueError("parent_type must be 'account' or 'contact'")
        if str(parent_id).lower() not in self.tables[parent_type].rows:
            raise KeyError(f"{parent_type} {parent_id} does not exist")

    def _parent_fields(self, parent_id: str | None, parent_type: str | None) -> dict[str, Any]:
        return {"parentcustomerid": None if parent_id is None else str(parent_id).lower()} | (
            {"parentcustomeridtype": parent_type} if parent_id is not None else {}
        )

    def merge_accounts(self, target_id: str, subordinate_id: str) -> None:
        """Dynamics Merge: contacts move to the target, the subordinate is deactivated."""
        with self.lock:
            target_id, subordinate_id = str(target_id).lower(), str(subordinate_id).lower()
            if target_id == subordinate_id:
                raise ValueError("cannot merge an account into itself")
            self._row(self.tables["account"], target_id)
            self._row(self.tables["account"], subordinate_id)
            for cid in self.contacts_of(subordinate_id):
                self.reparent_contact(cid, target_id, "account")
            self._update(
                "account",
                subordinate_id,
                {"statecode": 1, "statuscode": 2, "merged": True, "masterid": target_id},
            )

    def random_changes(self, n: int, rng: random.Random | None = None) -> list[str]:
        """Make n realistic random changes (mostly updates); returns what was done."""
        from .activity import random_change  # local: keeps the demo-only module off the core path

        rng = rng or random.Random()
        return [random_change(self, rng) for _ in range(n)]
