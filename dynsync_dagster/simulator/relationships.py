"""The 1:N relationships between account and contact: navigation properties and their metadata."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .schema import metadata_id


@dataclass(frozen=True)
class Relationship:
    """One 1:N relationship: `referencing.<attribute>` points at a `referenced` row."""

    schema_name: str
    referenced: str  # the "one" side, e.g. account
    referencing: str  # the "many" side, e.g. contact
    attribute: str  # the lookup on the referencing entity, e.g. parentcustomerid
    collection_nav: str  # collection-valued navigation property on the referenced entity
    single_nav: str  # single-valued navigation property on the referencing entity

    @property
    def polymorphic(self) -> bool:
        """Customer lookups name the target table in the navigation property."""
        return self.single_nav != self.attribute


# The standard relationships among the simulator's two tables (names as in Dataverse).
RELATIONSHIPS: tuple[Relationship, ...] = (
    Relationship(
        "contact_customer_accounts",
        "account",
        "contact",
        "parentcustomerid",
        "contact_customer_accounts",
        "parentcustomerid_account",
    ),
    Relationship(
        "contact_customer_contacts",
        "contact",
        "contact",
        "parentcustomerid",
        "contact_customer_contacts",
        "parentcustomerid_contact",
    ),
    Relationship(
        "account_parent_account",
        "account",
        "account",
        "parentaccountid",
        "account_parent_account",
        "parentaccountid",
    ),
    Relationship(
        "account_master_account",
        "account",
        "account",
        "masterid",
        "account_master_account",
        "masterid",
    ),
    Relationship(
        "account_primary_contact",
        "contact",
        "account",
        "primarycontactid",
        "account_primary_contact",
        "primarycontactid",
    ),
)


def navigation(entity: str, name: str) -> tuple[Relationship, bool] | None:
    """The relationship behind `entity.<name>` and whether it is collection-valued."""
    for rel in RELATIONSHIPS:
        if rel.referencing == entity and rel.single_nav == name:
            return rel, False
        if rel.referenced == entity and rel.collection_nav == name:
            return rel, True
    return None


def relationship_record(rel: Relationship, primary_ids: dict[str, str]) -> dict[str, Any]:
    """OneToManyRelationshipMetadata (also what ManyToOneRelationships lists)."""
    return {
        "@odata.type": "#Microsoft.Dynamics.CRM.OneToManyRelationshipMetadata",
        "MetadataId": metadata_id("relationship", rel.schema_name),
        "SchemaName": rel.schema_name,
        "RelationshipType": "OneToManyRelationship",
        "ReferencedEntity": rel.referenced,
        "ReferencedAttribute": primary_ids[rel.referenced],
        "ReferencingEntity": rel.referencing,
        "ReferencingAttribute": rel.attribute,
        "ReferencedEntityNavigationPropertyName": rel.collection_nav,
        "ReferencingEntityNavigationPropertyName": rel.single_nav,
        "IsCustomRelationship": False,
        "IsManaged": True,
        "IsValidForAdvancedFind": True,
        "IsHierarchical": rel.referenced == rel.referencing == "account",
        "SecurityTypes": "Append",
    }
