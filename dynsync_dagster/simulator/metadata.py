"""EntityDefinitions and attribute metadata, WhoAmI and the systemuser security functions."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from .errors import ODataError, bad_query
from .odata_filter import Literal, compile_filter, parse_filter
from .org import Org
from .relationships import RELATIONSHIPS, relationship_record
from .responses import Response, json_response
from .schema import SYSTEM_COLUMNS, Attribute, Entity, metadata_id

NS = "Microsoft.Dynamics.CRM."
_BASE_PROPS = (
    "MetadataId", "LogicalName", "SchemaName", "EntityLogicalName", "AttributeType",
    "AttributeTypeName", "IsValidForRead", "IsValidForCreate", "IsValidForUpdate", "IsSecured",
    "AttributeOf", "IsLogical", "IsCustomAttribute", "IsPrimaryId", "IsPrimaryName",
    "RequiredLevel", "DisplayName", "IsValidODataAttribute", "IsFilterable", "IsRetrievable",
    "ColumnNumber", "IsManaged",
)  # fmt: skip
_CLASS_PROPS = {
    "StringAttributeMetadata": ("MaxLength", "Format", "DatabaseLength"),
    "MemoAttributeMetadata": ("MaxLength", "Format"),
    "MoneyAttributeMetadata": ("Precision", "PrecisionSource", "MinValue", "MaxValue"),
    "DecimalAttributeMetadata": ("Precision", "MinValue", "MaxValue"),
    "DoubleAttributeMetadata": ("Precision", "MinValue", "MaxValue"),
    "IntegerAttributeMetadata": ("MinValue", "MaxValue", "Format"),
    "BigIntAttributeMetadata": ("MinValue", "MaxValue"),
    "DateTimeAttributeMetadata": ("DateTimeBehavior", "Format", "CanChangeDateTimeBehavior"),
    "LookupAttributeMetadata": ("Targets", "Format"),
    "PicklistAttributeMetadata": ("DefaultFormValue",),
    "MultiSelectPicklistAttributeMetadata": ("DefaultFormValue",),
    "StateAttributeMetadata": ("DefaultFormValue",),
    "StatusAttributeMetadata": ("DefaultFormValue",),
    "BooleanAttributeMetadata": ("DefaultValue",),
}
_OPTION_CLASSES = {
    "PicklistAttributeMetadata", "MultiSelectPicklistAttributeMetadata",
    "StateAttributeMetadata", "StatusAttributeMetadata", "BooleanAttributeMetadata",
}  # fmt: skip
_ENTITY_PROPS = (
    "MetadataId", "LogicalName", "SchemaName", "EntitySetName", "LogicalCollectionName",
    "PrimaryIdAttribute", "PrimaryNameAttribute", "ObjectTypeCode", "ChangeTrackingEnabled",
    "CanChangeTrackingBeEnabled", "IsCustomEntity", "OwnershipType", "DisplayName",
    "IsValidForAdvancedFind", "IsManaged", "IsPrivate", "IsActivity", "IsIntersect",
    "IsLogicalEntity", "TableType", "Description",
)  # fmt: skip
PRIVILEGE_DENIED = "0x80040220"
_RELATIONSHIP_ROUTES = {
    "Keys": "EntityKeyMetadata",
    "OneToManyRelationships": "OneToManyRelationshipMetadata",
    "ManyToOneRelationships": "OneToManyRelationshipMetadata",
    "ManyToManyRelationships": "ManyToManyRelationshipMetadata",
}
_DESCRIPTIONS = {
    "account": "Business that represents a customer or potential customer.",
    "contact": "Person with whom a business unit has a relationship, such as customer, "
    "supplier, and colleague.",
}
SYSTEM_ADMIN_PROFILE = "572329c1-a042-4e22-be47-367c6374ea45"
_ENTITY_KEY = re.compile(
    r"^EntityDefinitions(?:\((?:LogicalName='([^']*)'|([0-9a-fA-F-]{36}))\))?$"
)
_ATTR_KEY = re.compile(r"^Attributes(?:\((?:LogicalName='([^']*)'|([0-9a-fA-F-]{36}))\))?$")


def label(text: str) -> dict[str, Any]:
    localized = {
        "Label": text,
        "LanguageCode": 1033,
        "IsManaged": True,
        "MetadataId": metadata_id("label", text),
        "HasChanged": None,
    }
    return {"LocalizedLabels": [localized], "UserLocalizedLabel": localized}


def _schema_name(logical: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in logical.split("_"))


def _display(logical: str) -> str:
    return " ".join(p.capitalize() for p in logical.replace("_", " ").split())


def _managed(value: Any, name: str) -> dict[str, Any]:
    return {"Value": value, "CanBeChanged": False, "ManagedPropertyLogicalName": name}


def attribute_record(entity: Entity, attr: Attribute, column: int) -> dict[str, Any]:
    """Every property of the attribute's metadata class (base + type-specific)."""
    readonly = attr.logical_name in SYSTEM_COLUMNS or attr.attribute_of is not None
    is_pk = attr.logical_name == entity.primary_id
    record: dict[str, Any] = {
        "MetadataId": attr.metadata_id,
        "LogicalName": attr.logical_name,
        "SchemaName": _schema_name(attr.logical_name),
        "EntityLogicalName": entity.logical_name,
        "AttributeType": attr.attribute_type,
        "AttributeTypeName": {"Value": attr.attribute_type_name},
        "IsValidForRead": attr.is_valid_for_read,
        "IsValidForCreate": not readonly,
        "IsValidForUpdate": not readonly and not is_pk,
        "IsSecured": attr.is_secured,
        "AttributeOf": attr.attribute_of,
        "IsLogical": attr.attribute_of is not None,
        "IsCustomAttribute": attr.is_custom,
        "IsPrimaryId": is_pk,
        "IsPrimaryName": attr.logical_name == entity.primary_name,
        "RequiredLevel": {
            "Value": attr.required_level,
            "CanBeChanged": True,
            "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
        },
        "DisplayName": label(_display(attr.logical_name)),
        "IsValidODataAttribute": attr.is_web_property,
        "IsFilterable": attr.is_web_property,
        "IsRetrievable": attr.is_valid_for_read,
        "ColumnNumber": column,
        "IsManaged": not attr.is_custom,
    }
    record.update(_type_properties(attr))
    return record


def _type_properties(attr: Attribute) -> dict[str, Any]:
    """The properties only the attribute's metadata class has (MaxLength, Precision, ...)."""
    kind = attr.attribute_type
    if kind in ("String", "Memo"):
        fmt = {
            "emailaddress1": "Email",
            "telephone1": "Phone",
            "mobilephone": "Phone",
            "websiteurl": "Url",
        }.get(attr.logical_name, "Text" if kind == "String" else "TextArea")
        length = attr.max_length or 100
        return {"MaxLength": length, "DatabaseLength": length * 2, "Format": fmt}
    if kind in ("Money", "Decimal", "Double"):
        numeric = {
            "Precision": attr.precision if attr.precision is not None else 2,
            "MinValue": 0 if kind == "Money" else -100_000_000_000.0,
            "MaxValue": 100_000_000_000_000 if kind == "Money" else 100_000_000_000.0,
        }
        return numeric | ({"PrecisionSource": 2} if kind == "Money" else {})
    if kind == "Integer":
        return {"MinValue": 0, "MaxValue": 1_000_000_000, "Format": "None"}
    if kind == "BigInt":
        return {"MinValue": -9223372036854775808, "MaxValue": 9223372036854775807}
    if kind == "DateTime":
        behavior = attr.datetime_behavior or "UserLocal"
        return {
            "DateTimeBehavior": {"Value": behavior},
            "Format": "DateOnly" if behavior == "DateOnly" else "DateAndTime",
            "CanChangeDateTimeBehavior": _managed(False, "canchangedatetimebehavior"),
        }
    if attr.is_lookup:
        return {"Targets": list(attr.targets), "Format": "None"}
    if attr.metadata_class in _OPTION_CLASSES:
        if kind == "Boolean":
            return {"DefaultValue": False}
        return {"DefaultFormValue": -1 if kind == "Picklist" else attr.options[0][0]}
    return {}


def option_set(entity: Entity, attr: Attribute) -> dict[str, Any]:
    base = {
        "MetadataId": metadata_id(entity.logical_name, attr.logical_name, "optionset"),
        "Name": f"{entity.logical_name}_{attr.logical_name}",
        "IsGlobal": False,
        "IsCustomOptionSet": attr.is_custom,
    }
    options = [
        {"Value": v, "Label": label(text), "Color": None, "IsManaged": True}
        for v, text in attr.options
    ]
    if attr.attribute_type == "Boolean":
        by_value = {o["Value"]: o for o in options}
        return {
            **base,
            "OptionSetType": "Boolean",
            "TrueOption": by_value.get(1),
            "FalseOption": by_value.get(0),
        }
    return {
        **base,
        "OptionSetType": attr.attribute_type
        if attr.attribute_type in ("State", "Status")
        else "Picklist",
        "Options": options,
    }


def entity_record(entity: Entity) -> dict[str, Any]:
    return {
        "MetadataId": entity.metadata_id,
        "LogicalName": entity.logical_name,
        "SchemaName": _schema_name(entity.logical_name),
        "EntitySetName": entity.entity_set,
        "LogicalCollectionName": entity.entity_set,
        "PrimaryIdAttribute": entity.primary_id,
        "PrimaryNameAttribute": entity.primary_name,
        "ObjectTypeCode": entity.object_type_code,
        "ChangeTrackingEnabled": entity.change_tracking,
        "CanChangeTrackingBeEnabled": _managed(True, "canchangetrackingbeenabled"),
        "IsCustomEntity": False,
        "OwnershipType": "UserOwned",
        "DisplayName": label(_display(entity.logical_name)),
        "IsValidForAdvancedFind": True,
        "IsManaged": True,
        "IsPrivate": False,  # clients list tables with IsPrivate eq false
        "IsActivity": False,
        "IsIntersect": False,
        "IsLogicalEntity": False,
        "TableType": "Standard",
        "Description": label(_DESCRIPTIONS.get(entity.logical_name, "")),
    }


def _select(record: dict[str, Any], names: list[str] | None, keep: tuple[str, ...]) -> dict:
    if names is None:
        return dict(record)
    return {k: record[k] for k in (*keep, *names) if k in record}


def _parse_select(text: str | None, allowed: tuple[str, ...], type_name: str) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        if name not in allowed:
            raise bad_query(f"Could not find a property named '{name}' on type '{NS}{type_name}'.")
    return names


def _dict_filter(
    text: str | None, allowed: tuple[str, ...], type_name: str
) -> Callable[[dict], bool]:
    if text is None:
        return lambda record: True

    def getter(prop: str) -> Callable[[dict], Any]:
        path = prop.split("/")
        if path[0] not in allowed:
            raise bad_query(
                f"Could not find a property named '{path[0]}' on type '{NS}{type_name}'."
            )

        def get(record: dict) -> Any:
            value: Any = record
            for step in path:
                value = value.get(step) if isinstance(value, dict) else None
            return value

        return get

    def check(prop: str, op: str, lit: Literal) -> Any:
        return lit.value

    return compile_filter(parse_filter(text), getter, check)


def _parse_expand(text: str | None) -> dict[str, str | None]:
    """`OptionSet,Attributes($select=a,b)` -> {"OptionSet": None, "Attributes": "a,b"}."""
    out: dict[str, str | None] = {}
    if not text:
        return out
    for m in re.finditer(r"\s*(\w+)(?:\(([^)]*)\))?\s*(?:,|$)", text):
        if not m.group(1):
            continue
        inner = m.group(2)
        select = None
        if inner:
            for part in inner.split(";"):
                key, _, value = part.partition("=")
                if key.strip() == "$select":
                    select = value
        out[m.group(1)] = select
    return out


class MetadataService:
    """Answers the metadata and identity routes of the Web API for one org."""

    def __init__(self, org: Org) -> None:
        self.org = org

    def _entity(self, logical: str | None, meta_id: str | None) -> Entity:
        for table in self.org.tables.values():
            entity = table.entity
            if entity.logical_name == logical or (
                meta_id and entity.metadata_id == meta_id.lower()
            ):
                return entity
        raise ODataError(
            404, "0x80040217", f"Could not find entity with logical name '{logical or meta_id}'."
        )

    def attributes(self, entity: Entity) -> list[tuple[Attribute, dict[str, Any]]]:
        return [
            (a, attribute_record(entity, a, n))
            for n, a in enumerate(entity.attributes.values(), start=1)
        ]

    def handle(self, segments: list[str], params: dict[str, str], base: str) -> Response:
        """`segments` are the path parts after the API root, starting with EntityDefinitions…"""
        m = _ENTITY_KEY.match(segments[0])
        if m is None:
            raise bad_query(f"Resource not found for the segment '{segments[0]}'.")
        with self.org.lock:
            if m.group(1) is None and m.group(2) is None:
                if len(segments) > 1:
                    raise bad_query("Bad Request - Error in query syntax.")
                return self._entities(params, base)
            entity = self._entity(m.group(1), m.group(2))
            key = f"'{entity.logical_name}'"
            if len(segments) == 1:
                names = _parse_select(params.get("$select"), _ENTITY_PROPS, "EntityMetadata")
                body = _select(entity_record(entity), names, ("MetadataId",))
                suffix = f"({','.join(names)})" if names else ""
                expand = _parse_expand(params.get("$expand"))
                if "Attributes" in expand:
                    body["Attributes"] = self._attribute_rows(
                        entity, expand["Attributes"], None, None
                    )
                ctx = f"{base}$metadata#EntityDefinitions{suffix}/$entity"
                return json_response({"@odata.context": ctx, **body})
            if segments[1] in _RELATIONSHIP_ROUTES:
                return self._relationships(entity, key, segments[1:], params, base)
            return self._attributes_route(entity, key, segments[1:], params, base)

    def _relationships(
        self, entity: Entity, key: str, rest: list[str], params: dict[str, str], base: str
    ) -> Response:
        """Keys (none: the standard tables define no alternate keys) and relationships."""
        if len(rest) > 1:
            raise bad_query(f"Resource not found for the segment '{rest[1]}'.")
        route = rest[0]
        records: list[dict[str, Any]] = []
        if route in ("OneToManyRelationships", "ManyToOneRelationships"):
            primary_ids = {t.name: t.entity.primary_id for t in self.org.tables.values()}
            side = "referenced" if route == "OneToManyRelationships" else "referencing"
            records = [
                relationship_record(rel, primary_ids)
                for rel in RELATIONSHIPS
                if getattr(rel, side) == entity.logical_name
            ]
        type_name = _RELATIONSHIP_ROUTES[route]
        allowed = tuple(k for k in (records[0] if records else {}) if not k.startswith("@"))
        allowed = allowed or ("MetadataId", "SchemaName", "LogicalName")
        names = _parse_select(params.get("$select"), allowed, type_name)
        keep = _dict_filter(params.get("$filter"), allowed, type_name)
        value = [
            {"@odata.type": r["@odata.type"], **_select(r, names, ("MetadataId",))}
            for r in records
            if keep(r)
        ]
        suffix = f"({','.join(names)})" if names else ""
        ctx = f"{base}$metadata#EntityDefinitions({key})/{route}{suffix}"
        return json_response({"@odata.context": ctx, "value": value})

    def _entities(self, params: dict[str, str], base: str) -> Response:
        names = _parse_select(params.get("$select"), _ENTITY_PROPS, "EntityMetadata")
        keep = _dict_filter(params.get("$filter"), _ENTITY_PROPS, "EntityMetadata")
        expand = _parse_expand(params.get("$expand"))
        rows = []
        for table in self.org.tables.values():
            record = entity_record(table.entity)
            if keep(record):
                row = _select(record, names, ("MetadataId",))
                if "Attributes" in expand:
                    row["Attributes"] = self._attribute_rows(
                        table.entity, expand["Attributes"], None, None
                    )
                rows.append(row)
        suffix = f"({','.join(names)})" if names else ""
        return json_response(
            {"@odata.context": f"{base}$metadata#EntityDefinitions{suffix}", "value": rows}
        )

    def _attributes_route(
        self, entity: Entity, key: str, rest: list[str], params: dict[str, str], base: str
    ) -> Response:
        m = _ATTR_KEY.match(rest[0])
        if m is None:
            raise bad_query(f"Resource not found for the segment '{rest[0]}'.")
        cast: str | None = None
        if len(rest) == 2:
            if not rest[1].startswith(NS) or rest[1][len(NS) :] not in _CLASS_PROPS:
                raise bad_query(f"Resource not found for the segment '{rest[1]}'.")
            cast = rest[1][len(NS) :]
        elif len(rest) > 2:
            raise bad_query(f"Resource not found for the segment '{rest[2]}'.")
        one = m.group(1) or m.group(2)
        type_name = cast or "AttributeMetadata"
        allowed = _BASE_PROPS + _CLASS_PROPS.get(cast or "", ())
        names = _parse_select(params.get("$select"), allowed, type_name)
        expand = _parse_expand(params.get("$expand"))
        for nav in expand:
            if nav not in ("OptionSet", "GlobalOptionSet") or cast not in _OPTION_CLASSES:
                raise bad_query(
                    f"Could not find a property named '{nav}' on type '{NS}{type_name}'."
                )
        keep = _dict_filter(params.get("$filter"), allowed, type_name)
        rows = self._attribute_rows(entity, params.get("$select"), cast, expand, keep, allowed)
        path = f"EntityDefinitions({key})/Attributes" + (f"/{NS}{cast}" if cast else "")
        suffix = f"({','.join(names)})" if names else ""
        if one is not None:
            for row in rows:
                if one in (row.get("LogicalName"), row.get("MetadataId")) or (
                    one == self._logical_of(entity, row.get("MetadataId"))
                ):
                    ctx = f"{base}$metadata#{path}{suffix}/$entity"
                    return json_response({"@odata.context": ctx, **row})
            raise ODataError(
                404,
                "0x80040217",
                f"Could not find attribute '{one}' on entity '{entity.logical_name}'.",
            )
        return json_response({"@odata.context": f"{base}$metadata#{path}{suffix}", "value": rows})

    @staticmethod
    def _logical_of(entity: Entity, meta_id: str | None) -> str | None:
        for attr in entity.attributes.values():
            if attr.metadata_id == meta_id:
                return attr.logical_name
        return None

    def _attribute_rows(
        self,
        entity: Entity,
        select: str | None,
        cast: str | None,
        expand: dict[str, str | None] | None,
        keep: Callable[[dict], bool] | None = None,
        allowed: tuple[str, ...] = _BASE_PROPS,
    ) -> list[dict[str, Any]]:
        names = _parse_select(select, allowed, cast or "AttributeMetadata")
        rows = []
        for attr, record in self.attributes(entity):
            if cast is not None and attr.metadata_class != cast:
                continue
            if keep is not None and not keep(record):
                continue
            row = {
                "@odata.type": f"#{NS}{attr.metadata_class}",
                **_select(record, names, ("MetadataId",)),
            }
            if expand and "OptionSet" in expand:
                row["OptionSet"] = option_set(entity, attr)
            if expand and "GlobalOptionSet" in expand:
                row["GlobalOptionSet"] = None
            rows.append(row)
        return rows

    # ---- identity ---------------------------------------------------------------------

    def who_am_i(self, user_id: str, base: str) -> Response:
        return json_response(
            {
                "@odata.context": f"{base}$metadata#{NS}WhoAmIResponse",
                "BusinessUnitId": self.org.business_unit_id,
                "UserId": user_id,
                "OrganizationId": self.org.organization_id,
            }
        )

    def _user(self, user_id: str):
        user = self.org.users.get(user_id.lower())
        if user is None:
            raise ODataError(404, "0x80040217", f"systemuser With Id = {user_id} Does Not Exist")
        return user

    def system_user(
        self,
        user_id: str,
        rest: list[str],
        params: dict[str, str],
        base: str,
        caller_id: str | None = None,
    ) -> Response:
        user = self._user(user_id)
        if not rest or rest == [f"{NS}RetrievePrincipalAttributePrivileges()"]:
            self._check_privilege(caller_id, "prvReadUser", 8, "systemuser")
        if not rest:
            record = {
                "systemuserid": user.systemuserid,
                "fullname": user.fullname,
                "domainname": user.domainname,
                "isdisabled": False,
                "applicationid": None,
                "_businessunitid_value": self.org.business_unit_id,
            }
            names = _parse_select(params.get("$select"), tuple(record), "systemuser")
            body = _select(record, names, ("systemuserid",))
            return json_response(
                {
                    "@odata.context": f"{base}$metadata#systemusers/$entity",
                    "@odata.etag": 'W/"1"',
                    **body,
                }
            )
        if rest == [f"{NS}RetrievePrincipalAttributePrivileges()"]:
            return self._attribute_privileges(user.systemuserid, base)
        if rest == ["systemuserroles_association"]:
            self._check_privilege(caller_id, "prvReadRole", 1036, "role")
            roles = [
                {
                    "roleid": metadata_id("role", r),
                    "name": r,
                    "_businessunitid_value": self.org.business_unit_id,
                }
                for r in user.roles
            ]
            allowed = ("roleid", "name", "_businessunitid_value")
            names = _parse_select(params.get("$select"), allowed, "role")
            keep = _dict_filter(params.get("$filter"), allowed, "role")
            value = [
                {"@odata.etag": 'W/"1"', **_select(r, names, ("roleid",))} for r in roles if keep(r)
            ]
            return json_response({"@odata.context": f"{base}$metadata#roles", "value": value})
        raise bad_query(f"Resource not found for the segment '{rest[0]}'.")

    def _check_privilege(
        self, caller_id: str | None, privilege: str, otc: int, entity: str
    ) -> None:
        """403 0x80040220, worded as Dataverse does, when the caller lacks `privilege`."""
        caller = self.org.users.get((caller_id or "").lower())
        granted = {"prvReadRole": "can_read_roles", "prvReadUser": "can_read_users"}[privilege]
        if caller is None or getattr(caller, granted):
            return
        raise ODataError(
            403,
            PRIVILEGE_DENIED,
            f"Principal user (Id={caller.systemuserid}, type=8, roleCount={len(caller.roles)}, "
            f"privilegeCount=0, accessMode=0), is missing {privilege} privilege "
            f"(Id={metadata_id('privilege', privilege)}) on OTC={otc} for entity '{entity}'. "
            f"context.Caller={caller.systemuserid}",
        )

    def _attribute_privileges(self, user_id: str, base: str) -> Response:
        privileges = []
        for table in self.org.tables.values():
            for attr in table.entity.attributes.values():
                if attr.is_secured:
                    readable = self.org.can_read(user_id, table.name, attr.logical_name)
                    privileges.append(
                        {
                            "AttributeId": attr.metadata_id,
                            "CanCreate": 4 if readable else 0,
                            "CanRead": 4 if readable else 0,
                            "CanUpdate": 4 if readable else 0,
                            "CanReadUnMasked": 0,
                        }
                    )
        return json_response(
            {
                "@odata.context": (
                    f"{base}$metadata#{NS}RetrievePrincipalAttributePrivilegesResponse"
                ),
                "AttributePrivileges": privileges,
            }
        )
