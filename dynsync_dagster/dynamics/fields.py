"""Which fields sync: the selection intersected with the org's metadata and column security."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from dynsync_dagster.dynamics.errors import DynamicsError

T = TypeVar("T")

ENTITIES = ("account", "contact")
ENTITY_SET = {"account": "accounts", "contact": "contacts"}
PRIMARY_KEY = {"account": "accountid", "contact": "contactid"}

# Columns every cycle reads whatever the selection: keys, versions and membership.
SYSTEM_FIELDS = {
    "account": ("accountid", "modifiedon", "versionnumber"),
    "contact": ("contactid", "parentcustomerid", "accountid", "modifiedon", "versionnumber"),
}

_ALWAYS_SYNCED = "always synced: a key, version or membership column dynsync maintains itself"

SYSTEM_ADMINISTRATOR = "System Administrator"
# The start of the warning when the sync user may not read its own roles (prvReadRole).
ROLES_UNREADABLE = "could not read the sync user's security roles"
CAN_READ_ALLOWED = 4  # field_security_permission_type: 0 Not Allowed, 4 Allowed

# AttributeTypeName.Value -> DuckDB type. Money and decimals keep their scale as DECIMAL.
_DUCK_TYPES = {
    "StringType": "VARCHAR",
    "MemoType": "VARCHAR",
    "IntegerType": "INTEGER",
    "BigIntType": "BIGINT",
    "DoubleType": "DOUBLE",
    "BooleanType": "BOOLEAN",
    "PicklistType": "INTEGER",
    "StateType": "INTEGER",
    "StatusType": "INTEGER",
    "MultiSelectPicklistType": "VARCHAR",
    "UniqueidentifierType": "UUID",
    "LookupType": "UUID",
    "CustomerType": "UUID",
    "OwnerType": "UUID",
    "EntityNameType": "VARCHAR",
}
_LOOKUP_TYPES = {"LookupType", "CustomerType", "OwnerType"}
_CHOICE_TYPES = {"PicklistType", "StateType", "StatusType"}
_UNSUPPORTED = {
    "VirtualType",
    "ImageType",
    "FileType",
    "PartyListType",
    "CalendarRulesType",
    "ManagedPropertyType",
}


class FieldSelectionError(ValueError):
    """The selection names fields the org does not have. Raised before anything is written.

    `problem` says which names and the closest existing ones; the message adds what a sync
    does about it. `dynsync validate` says the problem with its own next step.
    """

    def __init__(self, problem: str) -> None:
        super().__init__(f"{problem}. Fix the names in the settings file; nothing was written.")
        self.problem = problem


class MetadataSource(Protocol):
    """What the field resolver needs from the Dynamics client (read-only metadata calls)."""

    def whoami(self) -> dict: ...
    def entity_definition(self, logical_name: str) -> dict: ...
    def attributes(self, logical_name: str) -> list[dict]: ...
    def typed_attributes(
        self,
        logical_name: str,
        metadata_type: str,
        select: Sequence[str],
        expand: str | None = None,
    ) -> list[dict]: ...
    def attribute_privileges(self, user_id: str) -> list[dict]: ...
    def role_names(self, user_id: str) -> list[str]: ...


@dataclass(frozen=True)
class FieldSpec:
    """One synced Dynamics attribute and where it lands in DuckDB."""

    entity: str
    name: str  # logical name, also the DuckDB column
    type_name: str  # AttributeTypeName.Value, e.g. "MoneyType"
    duck_type: str
    api_name: str  # the Web API property: lookups come as _<name>_value
    metadata_id: str | None = None
    options: tuple[tuple[int, str], ...] = ()  # choice codes and labels

    @property
    def is_choice(self) -> bool:
        return self.type_name in _CHOICE_TYPES

    @property
    def is_lookup(self) -> bool:
        return self.type_name in _LOOKUP_TYPES

    @property
    def label_column(self) -> str | None:
        """Choices also keep their label (from the FormattedValue annotation)."""
        return f"{self.name}_label" if self.is_choice else None

    @property
    def target_column(self) -> str | None:
        """Lookups also keep the table they point to (the lookuplogicalname annotation)."""
        return f"{self.name}_type" if self.is_lookup else None

    def columns(self) -> list[tuple[str, str]]:
        """(column, DuckDB type) pairs this field occupies."""
        cols = [(self.name, self.duck_type)]
        if self.label_column:
            cols.append((self.label_column, "VARCHAR"))
        if self.target_column:
            cols.append((self.target_column, "VARCHAR"))
        return cols


@dataclass(frozen=True)
class FieldDecision:
    """A row of `sync_fields`: one selected (or system) field and why it does or does not sync."""

    entity: str
    field: str
    selected: bool
    exists: bool
    readable: bool
    synced: bool
    reason: str
    attribute_type: str | None = None
    is_secured: bool = False


@dataclass
class FieldPlan:
    """The effective fields of a cycle, per entity, and the decision for each selected name."""

    fields: dict[str, list[FieldSpec]]
    decisions: list[FieldDecision]
    change_tracking: dict[str, bool]
    sync_user_id: str | None = None
    sync_user_is_admin: bool = False
    warnings: list[str] = field(default_factory=list)
    # entity -> the sync filter's Two Options column, where the org has one the user may read
    sync_filter: dict[str, str] = field(default_factory=dict)

    def synced(self, entity: str) -> list[FieldSpec]:
        return self.fields[entity]

    def select(self, entity: str) -> list[str]:
        """The $select list: system columns, the sync filter's column and the synced fields,
        as Web API properties."""
        props = [_api_name(entity, f) for f in SYSTEM_FIELDS[entity]]
        if entity in self.sync_filter:
            props.append(self.sync_filter[entity])
        props += [f.api_name for f in self.fields[entity] if f.api_name not in props]
        return props

    def excluded(self) -> list[FieldDecision]:
        return [d for d in self.decisions if d.selected and not d.synced]


def _api_name(entity: str, name: str) -> str:
    if entity == "contact" and name in ("parentcustomerid", "accountid"):
        return f"_{name}_value"
    return name


def resolve_fields(
    source: MetadataSource,
    account_fields: Sequence[str],
    contact_fields: Sequence[str],
    previously_synced: Iterable[tuple[str, str]] = (),
    sync_filter_field: str | None = None,
) -> FieldPlan:
    """Intersect the selection with metadata (exists, IsValidForRead) and column security.

    A selected name the org does not have is a configuration error (FieldSelectionError),
    unless it synced before: then it was deleted in Dynamics, and it stops syncing with a
    warning while the rest of the cycle goes on.
    """
    selection = {"account": list(account_fields), "contact": list(contact_fields)}
    before = set(previously_synced)
    warnings: list[str] = []
    user_id, is_admin, readable_secured = _sync_user_access(source, warnings)
    plan = FieldPlan(
        fields={},
        decisions=[],
        change_tracking={},
        sync_user_id=user_id,
        sync_user_is_admin=is_admin,
        warnings=warnings,
    )
    unknown: dict[str, list[str]] = {}
    known: dict[str, list[str]] = {}
    for entity in ENTITIES:
        missing, known[entity] = _resolve_entity(
            source, plan, entity, selection[entity], before, readable_secured
        )
        if sync_filter_field:
            _find_sync_filter(plan, entity, sync_filter_field)
        if missing:
            unknown[entity] = missing
    if unknown:
        raise FieldSelectionError(_unknown_message(unknown, known))
    return plan


def _resolve_entity(
    source: MetadataSource,
    plan: FieldPlan,
    entity: str,
    selected: Sequence[str],
    before: set[tuple[str, str]],
    readable_secured: set[str] | None,
) -> tuple[list[str], list[str]]:
    """Add one entity's change tracking, synced fields and decisions to `plan`.

    Returns the selected names the org does not have (and never synced), and the names it has.
    """
    definition = source.entity_definition(entity)
    plan.change_tracking[entity] = bool(definition.get("ChangeTrackingEnabled"))
    attrs = {a["LogicalName"]: a for a in source.attributes(entity)}
    extras = _type_details(source, entity, attrs, selected)
    specs: list[FieldSpec] = []
    unknown: list[str] = []
    for name in selected:
        attr = attrs.get(name)
        if attr is not None:
            decision, spec = _decide(
                entity, name, attr, extras.get(name, {}), plan.sync_user_is_admin, readable_secured
            )
            plan.decisions.append(decision)
            if spec is not None:
                specs.append(spec)
        elif (entity, name) in before:
            reason = "deleted in Dynamics: the attribute no longer exists in the org metadata"
            plan.warnings.append(f"{entity}.{name} was {reason}; it stops syncing")
            plan.decisions.append(FieldDecision(entity, name, True, False, False, False, reason))
        else:
            unknown.append(name)
    plan.fields[entity] = specs
    chosen = set(selected)
    plan.decisions += [
        _not_selected(entity, name, attr, plan.sync_user_is_admin, readable_secured)
        for name, attr in attrs.items()
        if name not in chosen
    ]
    return unknown, list(attrs)


def _find_sync_filter(plan: FieldPlan, entity: str, name: str) -> None:
    """Marketo's custom sync filter: a readable Two Options column decides per record. An org
    without it syncs every record; one the sync user cannot read is a warning, not a filter."""
    decision = next((d for d in plan.decisions if d.entity == entity and d.field == name), None)
    if decision is None or not decision.exists:
        return
    if decision.attribute_type != "BooleanType":
        plan.warnings.append(
            f"{entity}.{name} is a {decision.attribute_type}, not Two Options: it is not used as "
            "the sync filter (set sync_filter_field to a Two Options column)"
        )
    elif not decision.readable:
        plan.warnings.append(
            f"{entity}.{name} (the sync filter) cannot be read by the sync user: every "
            "record syncs until it can"
        )
    else:
        plan.sync_filter[entity] = name


def _not_selected(
    entity: str, name: str, attr: Mapping, is_admin: bool, readable_secured: set[str] | None
) -> FieldDecision:
    """The decision row of an attribute the settings do not select: only system fields sync."""
    readable = (
        bool(attr.get("IsValidForRead"))
        and not attr.get("AttributeOf")
        and (
            not attr.get("IsSecured")
            or is_admin
            or str(attr.get("MetadataId", "")).lower() in (readable_secured or ())
        )
    )
    is_system = name in SYSTEM_FIELDS[entity]
    return FieldDecision(
        entity,
        name,
        False,
        True,
        readable,
        is_system,
        _ALWAYS_SYNCED if is_system else "not selected in the settings file",
        (attr.get("AttributeTypeName") or {}).get("Value"),
        bool(attr.get("IsSecured")),
    )


def _sync_user_access(
    source: MetadataSource, warnings: list[str]
) -> tuple[str | None, bool, set[str] | None]:
    """Who the sync user is, whether it is a System Administrator, which secured columns it reads.

    WhoAmI is required. The two security look-ups are optional: a minimal custom sync role may
    lack the privilege to read its own roles (prvReadRole) or its own user row, and Dataverse
    then answers 403. Without the roles the user is treated as a non-admin and its column
    privileges decide; without those too, every secured column is left out. Each fallback
    adds a warning. Metadata reads (EntityDefinitions, Attributes, typed attributes) stay
    required: every user may read metadata, and they decide which columns exist and their types.
    """
    user_id = source.whoami().get("UserId")
    if not user_id:
        return None, False, set()
    roles = _optional(
        lambda: source.role_names(user_id),
        warnings,
        ROLES_UNREADABLE,
        "it is treated as not a System Administrator and its column privileges "
        "(RetrievePrincipalAttributePrivileges) decide which secured columns sync",
    )
    is_admin = roles is not None and SYSTEM_ADMINISTRATOR in roles
    if is_admin:
        return user_id, True, set()
    privileges = _optional(
        lambda: source.attribute_privileges(user_id),
        warnings,
        "could not read the sync user's column privileges",
        "every secured column is left out until the sync user may read its own systemuser row",
    )
    if privileges is None:
        return user_id, False, None
    readable = {
        str(p.get("AttributeId", "")).lower()
        for p in privileges
        if p.get("CanRead") == CAN_READ_ALLOWED
    }
    return user_id, False, readable


def _optional(call: Callable[[], T], warnings: list[str], what: str, fallback: str) -> T | None:
    """Run an optional metadata call; a 403 (missing privilege) becomes a warning and None."""
    try:
        return call()
    except DynamicsError as exc:
        if exc.status != 403:
            raise
        missing = re.search(r"\bprv\w+", exc.message)
        detail = f"HTTP 403{' ' + exc.code if exc.code else ''} on {exc.url}" + (
            f", missing {missing.group(0)}" if missing else ""
        )
        warnings.append(f"{what} ({detail}): {fallback}")
        return None


def _decide(
    entity: str,
    name: str,
    attr: Mapping,
    extra: Mapping,
    is_admin: bool,
    readable_secured: set[str] | None,
) -> tuple[FieldDecision, FieldSpec | None]:
    type_name = (attr.get("AttributeTypeName") or {}).get(
        "Value"
    ) or f"{attr.get('AttributeType')}Type"
    secured = bool(attr.get("IsSecured"))

    def no(reason: str, readable: bool = False) -> tuple[FieldDecision, None]:
        return FieldDecision(
            entity, name, True, True, readable, False, reason, type_name, secured
        ), None

    if name in SYSTEM_FIELDS[entity]:
        return no(_ALWAYS_SYNCED, True)
    if attr.get("AttributeOf"):
        return no(
            f"a name column of {attr['AttributeOf']} (not a Web API property); select "
            f"{attr['AttributeOf']} instead"
        )
    if not attr.get("IsValidForRead", False):
        return no("not valid for read in Dynamics (IsValidForRead = false)")
    if type_name in _UNSUPPORTED or (
        type_name not in _DUCK_TYPES
        and type_name not in ("MoneyType", "DecimalType", "DateTimeType")
    ):
        return no(f"type {type_name} is not synced (no value in the Web API row)", True)
    if secured and not is_admin and readable_secured is None:
        return no(
            "secured column: the sync user's column privileges could not be read "
            "(RetrievePrincipalAttributePrivileges was refused), so it is left out"
        )
    if secured and not is_admin and str(attr.get("MetadataId", "")).lower() not in readable_secured:
        return no(
            "secured column: the sync user has no read permission in a field security "
            f"profile (grant read in one, or remove it from {entity}_fields)"
        )
    duck_type = _duck_type(type_name, extra)
    spec = FieldSpec(
        entity=entity,
        name=name,
        type_name=type_name,
        duck_type=duck_type,
        api_name=f"_{name}_value" if type_name in _LOOKUP_TYPES else name,
        metadata_id=attr.get("MetadataId"),
        options=tuple(extra.get("options", ())),
    )
    reason = "synced" + (" (secured; the sync user may read it)" if secured else "")
    return FieldDecision(entity, name, True, True, True, True, reason, type_name, secured), spec


def _duck_type(type_name: str, extra: Mapping) -> str:
    if type_name == "DateTimeType":
        return "DATE" if extra.get("behavior") == "DateOnly" else "TIMESTAMPTZ"
    if type_name == "MoneyType":
        return (
            "DECIMAL(38,4)"  # Dataverse stores money with 4 decimals whatever its display precision
        )
    if type_name == "DecimalType":
        return f"DECIMAL(38,{min(max(int(extra.get('precision', 10)), 0), 10)})"
    return _DUCK_TYPES[type_name]


def _type_details(
    source: MetadataSource, entity: str, attrs: Mapping[str, Mapping], selected: Sequence[str]
) -> dict[str, dict]:
    """Type-specific metadata (date behaviour, decimal precision, option labels) for the selection."""
    wanted = {
        (attrs[n].get("AttributeTypeName") or {}).get("Value") for n in selected if n in attrs
    }
    out: dict[str, dict] = {}
    if "DateTimeType" in wanted:
        for row in source.typed_attributes(
            entity, "DateTimeAttributeMetadata", ["LogicalName", "DateTimeBehavior"]
        ):
            out.setdefault(row["LogicalName"], {})["behavior"] = (
                row.get("DateTimeBehavior") or {}
            ).get("Value")
    if "DecimalType" in wanted:
        for row in source.typed_attributes(
            entity, "DecimalAttributeMetadata", ["LogicalName", "Precision"]
        ):
            out.setdefault(row["LogicalName"], {})["precision"] = row.get("Precision", 10)
    for kind, meta in (
        ("PicklistType", "PicklistAttributeMetadata"),
        ("StateType", "StateAttributeMetadata"),
        ("StatusType", "StatusAttributeMetadata"),
    ):
        if kind in wanted:
            for row in source.typed_attributes(entity, meta, ["LogicalName"], expand="OptionSet"):
                out.setdefault(row["LogicalName"], {})["options"] = _options(row)
    return out


def _options(row: Mapping) -> list[tuple[int, str]]:
    options = []
    for opt in (row.get("OptionSet") or {}).get("Options") or []:
        label = ((opt.get("Label") or {}).get("UserLocalizedLabel") or {}).get("Label")
        options.append((int(opt["Value"]), label or str(opt["Value"])))
    return options


def _unknown_message(unknown: Mapping[str, list[str]], known: Mapping[str, list[str]]) -> str:
    parts = []
    for entity, names in unknown.items():
        described = []
        for n in names:
            close = difflib.get_close_matches(n, known[entity], n=1)
            described.append(f"{n} (did you mean {close[0]}?)" if close else n)
        parts.append(f"{entity}_fields: {', '.join(described)}")
    return "the selection names fields that do not exist in the Dynamics org: " + "; ".join(parts)
