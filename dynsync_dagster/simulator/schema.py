"""Attribute and entity definitions of the simulated org (the standard account/contact schema)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

# Lookup-like types are exposed on the Web API as `_<name>_value`.
LOOKUP_TYPES = frozenset({"Lookup", "Customer", "Owner"})

# AttributeType -> AttributeTypeName (the type names the metadata reports).
TYPE_NAMES = {
    "Uniqueidentifier": "UniqueidentifierType",
    "String": "StringType",
    "Memo": "MemoType",
    "Integer": "IntegerType",
    "BigInt": "BigIntType",
    "Decimal": "DecimalType",
    "Double": "DoubleType",
    "Money": "MoneyType",
    "Boolean": "BooleanType",
    "DateTime": "DateTimeType",
    "Picklist": "PicklistType",
    "State": "StateType",
    "Status": "StatusType",
    "Lookup": "LookupType",
    "Customer": "CustomerType",
    "Owner": "OwnerType",
    "EntityName": "EntityNameType",
    "Virtual": "VirtualType",
}

# The metadata classes a row's "@odata.type" names (the Attributes collection is polymorphic).
_METADATA_CLASS = {
    "Uniqueidentifier": "UniqueIdentifierAttributeMetadata",
    "String": "StringAttributeMetadata",
    "Memo": "MemoAttributeMetadata",
    "Integer": "IntegerAttributeMetadata",
    "BigInt": "BigIntAttributeMetadata",
    "Decimal": "DecimalAttributeMetadata",
    "Double": "DoubleAttributeMetadata",
    "Money": "MoneyAttributeMetadata",
    "Boolean": "BooleanAttributeMetadata",
    "DateTime": "DateTimeAttributeMetadata",
    "Picklist": "PicklistAttributeMetadata",
    "State": "StateAttributeMetadata",
    "Status": "StatusAttributeMetadata",
    "Lookup": "LookupAttributeMetadata",
    "Customer": "LookupAttributeMetadata",
    "Owner": "LookupAttributeMetadata",
    "EntityName": "EntityNameAttributeMetadata",
    "Virtual": "AttributeMetadata",
}

INDUSTRY_OPTIONS: tuple[tuple[int, str], ...] = tuple(
    enumerate(
        (
            "Accounting",
            "Agriculture and Non-petrol Natural Resource Extraction",
            "Broadcasting Printing and Publishing",
            "Brokers",
            "Building Supply Retail",
            "Business Services",
            "Consulting",
            "Consumer Services",
            "Design, Direction and Creative Management",
            "Distributors, Dispatchers and Processors",
            "Doctor's Offices and Clinics",
            "Durable Manufacturing",
            "Eating and Drinking Places",
            "Entertainment Retail",
            "Equipment Rental and Leasing",
            "Financial",
            "Food and Tobacco Processing",
            "Inbound Capital Intensive Processing",
            "Inbound Repair and Services",
            "Insurance",
            "Legal Services",
            "Non-Durable Merchandise Retail",
            "Outbound Consumer Service",
            "Petrochemical Extraction and Distribution",
            "Service Retail",
            "SIG Affiliations",
            "Social Services",
            "Special Outbound Trade Contractors",
            "Specialty Realty",
            "Transportation",
            "Utility Creation and Distribution",
            "Vehicle Retail",
            "Wholesale",
        ),
        start=1,
    )
)
CUSTOMER_TYPE_OPTIONS: tuple[tuple[int, str], ...] = (
    (1, "Competitor"),
    (2, "Consultant"),
    (3, "Customer"),
    (4, "Investor"),
    (5, "Partner"),
    (6, "Influencer"),
    (7, "Press"),
    (8, "Prospect"),
    (9, "Reseller"),
    (10, "Supplier"),
    (11, "Vendor"),
    (12, "Other"),
)
STATE_OPTIONS: tuple[tuple[int, str], ...] = ((0, "Active"), (1, "Inactive"))
STATUS_OPTIONS: tuple[tuple[int, str], ...] = ((1, "Active"), (2, "Inactive"))

_METADATA_NAMESPACE = uuid.UUID("0f6d8a52-3c1e-4c55-9a57-5e0bd1c0a001")


def metadata_id(*parts: str) -> str:
    """Deterministic MetadataId so clients may cache ids across simulator restarts."""
    return str(uuid.uuid5(_METADATA_NAMESPACE, "/".join(parts)))


@dataclass(frozen=True)
class Attribute:
    """One column's metadata, as EntityDefinitions(...)/Attributes describes it."""

    entity: str
    logical_name: str
    attribute_type: str
    is_valid_for_read: bool = True
    is_secured: bool = False
    attribute_of: str | None = None
    targets: tuple[str, ...] = ()
    options: tuple[tuple[int, str], ...] = ()
    datetime_behavior: str | None = None
    precision: int | None = None
    max_length: int | None = None
    required_level: str = "None"
    is_custom: bool = False
    type_name: str | None = None

    @property
    def metadata_id(self) -> str:
        return metadata_id(self.entity, self.logical_name)

    @property
    def attribute_type_name(self) -> str:
        return self.type_name or TYPE_NAMES.get(self.attribute_type, "StringType")

    @property
    def is_lookup(self) -> bool:
        return self.attribute_type in LOOKUP_TYPES

    @property
    def web_name(self) -> str:
        """Property name on the Web API (lookups are `_x_value`)."""
        return f"_{self.logical_name}_value" if self.is_lookup else self.logical_name

    @property
    def is_web_property(self) -> bool:
        """Selectable/filterable: readable and not a child (name/type) attribute."""
        return self.is_valid_for_read and self.attribute_of is None

    @property
    def metadata_class(self) -> str:
        if self.type_name == "MultiSelectPicklistType":
            return "MultiSelectPicklistAttributeMetadata"
        return _METADATA_CLASS.get(self.attribute_type, "AttributeMetadata")

    @property
    def option_label(self) -> dict[int, str]:
        return dict(self.options)


@dataclass
class Entity:
    """An entity (table) definition; `attributes` is mutable to allow schema drift."""

    logical_name: str
    entity_set: str
    primary_id: str
    primary_name: str
    object_type_code: int
    change_tracking: bool = True
    attributes: dict[str, Attribute] = field(default_factory=dict)

    @property
    def metadata_id(self) -> str:
        return metadata_id(self.logical_name)

    def add(self, attribute: Attribute) -> None:
        self.attributes[attribute.logical_name] = attribute

    def web_properties(self) -> dict[str, Attribute]:
        """Web API property name -> attribute, for every readable property."""
        return {a.web_name: a for a in self.attributes.values() if a.is_web_property}


def _std(entity: str, specs: list[tuple]) -> dict[str, Attribute]:
    out: dict[str, Attribute] = {}
    for name, atype, *rest in specs:
        kwargs = rest[0] if rest else {}
        out[name] = Attribute(entity=entity, logical_name=name, attribute_type=atype, **kwargs)
    return out


def _lookup_children(entity: str, name: str, polymorphic: bool) -> list[tuple]:
    """Child attributes Dataverse adds to a lookup: `<x>name`, and `<x>type` if polymorphic."""
    children: list[tuple] = [(f"{name}name", "String", {"attribute_of": name, "max_length": 160})]
    if polymorphic:
        children.append((f"{name}type", "EntityName", {"attribute_of": name}))
    return children


def account_entity() -> Entity:
    dt_user = {"datetime_behavior": "UserLocal"}
    specs: list[tuple] = [
        ("accountid", "Uniqueidentifier"),
        ("name", "String", {"max_length": 160, "required_level": "ApplicationRequired"}),
        ("accountnumber", "String", {"max_length": 20}),
        ("industrycode", "Picklist", {"options": INDUSTRY_OPTIONS}),
        ("revenue", "Money", {"precision": 2}),
        ("transactioncurrencyid", "Lookup", {"targets": ("transactioncurrency",)}),
        *_lookup_children("account", "transactioncurrencyid", False),
        ("numberofemployees", "Integer"),
        ("address1_city", "String", {"max_length": 80}),
        ("address1_country", "String", {"max_length": 80}),
        ("telephone1", "String", {"max_length": 50}),
        ("websiteurl", "String", {"max_length": 200}),
        ("emailaddress1", "String", {"max_length": 100}),
        ("description", "Memo", {"max_length": 2000}),
        ("creditlimit", "Money", {"precision": 2, "is_secured": True}),
        ("creditonhold", "Boolean", {"is_secured": True, "options": ((0, "No"), (1, "Yes"))}),
        ("customertypecode", "Picklist", {"options": CUSTOMER_TYPE_OPTIONS}),
        ("ownerid", "Owner", {"targets": ("systemuser", "team")}),
        *_lookup_children("account", "ownerid", True),
        ("parentaccountid", "Lookup", {"targets": ("account",)}),
        *_lookup_children("account", "parentaccountid", False),
        ("primarycontactid", "Lookup", {"targets": ("contact",)}),
        *_lookup_children("account", "primarycontactid", False),
        ("statecode", "State", {"options": STATE_OPTIONS}),
        ("statuscode", "Status", {"options": STATUS_OPTIONS}),
        ("merged", "Boolean", {"options": ((0, "No"), (1, "Yes"))}),
        ("masterid", "Lookup", {"targets": ("account",)}),
        *_lookup_children("account", "masterid", False),
        ("isprivate", "Boolean", {"is_valid_for_read": False}),
        ("createdon", "DateTime", dt_user),
        ("modifiedon", "DateTime", dt_user),
        ("versionnumber", "BigInt"),
    ]
    entity = Entity("account", "accounts", "accountid", "name", 1)
    entity.attributes = _std("account", specs)
    return entity


def contact_entity() -> Entity:
    dt_user = {"datetime_behavior": "UserLocal"}
    specs: list[tuple] = [
        ("contactid", "Uniqueidentifier"),
        ("firstname", "String", {"max_length": 50}),
        ("lastname", "String", {"max_length": 50, "required_level": "ApplicationRequired"}),
        ("fullname", "String", {"max_length": 160}),
        ("emailaddress1", "String", {"max_length": 100}),
        ("jobtitle", "String", {"max_length": 100}),
        ("telephone1", "String", {"max_length": 50}),
        ("mobilephone", "String", {"max_length": 50}),
        ("birthdate", "DateTime", {"datetime_behavior": "DateOnly"}),
        ("parentcustomerid", "Customer", {"targets": ("account", "contact")}),
        *_lookup_children("contact", "parentcustomerid", True),
        ("accountid", "Lookup", {"targets": ("account",)}),
        *_lookup_children("contact", "accountid", False),
        ("ownerid", "Owner", {"targets": ("systemuser", "team")}),
        *_lookup_children("contact", "ownerid", True),
        ("governmentid", "String", {"max_length": 50, "is_secured": True}),
        ("annualincome", "Money", {"precision": 2, "is_secured": True}),
        ("transactioncurrencyid", "Lookup", {"targets": ("transactioncurrency",)}),
        *_lookup_children("contact", "transactioncurrencyid", False),
        ("statecode", "State", {"options": STATE_OPTIONS}),
        ("statuscode", "Status", {"options": STATUS_OPTIONS}),
        ("createdon", "DateTime", dt_user),
        ("modifiedon", "DateTime", dt_user),
        ("versionnumber", "BigInt"),
    ]
    entity = Entity("contact", "contacts", "contactid", "fullname", 2)
    entity.attributes = _std("contact", specs)
    return entity


# Columns the platform maintains; create/update callers may not set them.
SYSTEM_COLUMNS = frozenset({"createdon", "modifiedon", "versionnumber", "fullname", "accountid"})
