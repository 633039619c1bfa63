"""Metadata endpoints, WhoAmI, column security and privileges."""

from __future__ import annotations

from dynsync_dagster.simulator import DatasetSpec, Simulator

from .conftest import Api

NS = "Microsoft.Dynamics.CRM."


def test_entity_definition(api: Api, sim: Simulator) -> None:
    body = api.json(
        "EntityDefinitions(LogicalName='account')?$select=LogicalName,EntitySetName,"
        "PrimaryIdAttribute,PrimaryNameAttribute,ChangeTrackingEnabled"
    )
    assert body["@odata.context"].endswith(
        "$metadata#EntityDefinitions(LogicalName,EntitySetName,"
        "PrimaryIdAttribute,PrimaryNameAttribute,"
        "ChangeTrackingEnabled)/$entity"
    )
    assert body["EntitySetName"] == "accounts" and body["PrimaryIdAttribute"] == "accountid"
    assert body["ChangeTrackingEnabled"] is True and "MetadataId" in body
    assert api.get("EntityDefinitions(LogicalName='lead')").status_code == 404


def test_attributes_select_and_filters(api: Api) -> None:
    base = "EntityDefinitions(LogicalName='account')/Attributes"
    rows = api.json(
        f"{base}?$select=LogicalName,AttributeType,AttributeOf,IsValidForRead,IsSecured,MetadataId"
    )["value"]
    by_name = {r["LogicalName"]: r for r in rows}
    assert by_name["name"]["@odata.type"] == f"#{NS}StringAttributeMetadata"
    assert by_name["owneridname"]["AttributeOf"] == "ownerid"
    assert by_name["isprivate"]["IsValidForRead"] is False
    secured = api.json(f"{base}?$select=LogicalName&$filter=IsSecured eq true")["value"]
    assert {r["LogicalName"] for r in secured} == {"creditlimit", "creditonhold"}
    picklists = api.json(
        f"{base}?$select=LogicalName&$filter=AttributeType eq "
        f"{NS}AttributeTypeCode'Picklist' and IsValidForRead eq true"
    )["value"]
    assert {r["LogicalName"] for r in picklists} == {"industrycode", "customertypecode"}
    bad = api.get(f"{base}?$select=Targets")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "0x80060888"


def test_cast_segments(api: Api) -> None:
    base = "EntityDefinitions(LogicalName='account')/Attributes/"
    options = api.json(
        f"{base}{NS}PicklistAttributeMetadata?$select=LogicalName&$expand=OptionSet"
    )["value"]
    industry = next(r for r in options if r["LogicalName"] == "industrycode")
    labels = {
        o["Value"]: o["Label"]["UserLocalizedLabel"]["Label"]
        for o in industry["OptionSet"]["Options"]
    }
    assert len(labels) == 33 and labels[1] == "Accounting" and labels[33] == "Wholesale"
    dates = api.json(
        f"EntityDefinitions(LogicalName='contact')/Attributes/"
        f"{NS}DateTimeAttributeMetadata?$select=LogicalName,DateTimeBehavior"
    )
    behaviors = {r["LogicalName"]: r["DateTimeBehavior"]["Value"] for r in dates["value"]}
    assert behaviors == {
        "birthdate": "DateOnly",
        "createdon": "UserLocal",
        "modifiedon": "UserLocal",
    }
    money = api.json(f"{base}{NS}MoneyAttributeMetadata?$select=LogicalName,Precision")["value"]
    assert {r["LogicalName"]: r["Precision"] for r in money}["revenue"] == 2
    lookups = api.json(
        f"EntityDefinitions(LogicalName='contact')/Attributes/"
        f"{NS}LookupAttributeMetadata?$select=LogicalName,Targets"
    )["value"]
    assert {r["LogicalName"]: r["Targets"] for r in lookups}["parentcustomerid"] == [
        "account",
        "contact",
    ]


def test_column_security_nulls_and_privileges(api: Api, sim: Simulator) -> None:
    rows = api.json("accounts?$select=creditlimit,creditonhold", 'odata.include-annotations="*"')[
        "value"
    ]
    assert all(r["creditonhold"] is None for r in rows)
    assert all("creditonhold@OData.Community.Display.V1.FormattedValue" not in r for r in rows)
    assert any(r["creditlimit"] is not None for r in rows)
    contacts = api.json("contacts?$select=governmentid,annualincome")["value"]
    assert all(c["governmentid"] is None for c in contacts)
    user = api.json("WhoAmI")["UserId"]
    privileges = api.json(f"systemusers({user})/{NS}RetrievePrincipalAttributePrivileges()")
    ids = {
        a.metadata_id: a.logical_name
        for t in sim.org.tables.values()
        for a in t.entity.attributes.values()
    }
    readable = {ids[p["AttributeId"]]: p["CanRead"] for p in privileges["AttributePrivileges"]}
    assert readable == {"creditlimit": 4, "creditonhold": 0, "governmentid": 0, "annualincome": 4}
    assert set(privileges["AttributePrivileges"][0]) == {
        "AttributeId",
        "CanCreate",
        "CanRead",
        "CanUpdate",
        "CanReadUnMasked",
    }
    roles = api.json(
        f"systemusers({user})/systemuserroles_association?$select=name"
        "&$filter=name eq 'System Administrator'"
    )["value"]
    assert roles == []


def test_field_security_changes_and_admin_reads_all(tmp_path) -> None:
    with Simulator(
        DatasetSpec(accounts=5, contacts=10), state_dir=tmp_path / "a", sync_user_is_admin=True
    ) as sim:
        api = Api(sim)
        rows = api.json("contacts?$select=governmentid")["value"]
        assert all(r["governmentid"] for r in rows)
        user = api.json("WhoAmI")["UserId"]
        roles = api.json(f"systemusers({user})/systemuserroles_association?$select=name")
        assert "System Administrator" in {r["name"] for r in roles["value"]}
    with Simulator(DatasetSpec(accounts=5, contacts=10), state_dir=tmp_path / "b") as sim:
        api = Api(sim)
        sim.org.set_secured_readable("account", "creditonhold", True)
        assert any(
            r["creditonhold"] is not None
            for r in api.json("accounts?$select=creditonhold")["value"]
        )


def test_schema_drift(fresh_api: Api, fresh_sim: Simulator) -> None:
    org = fresh_sim.org
    org.add_attribute("account", "new_tier", "PicklistType", options=[(1, "Gold"), (2, "Silver")])
    aid = org.account_ids()[0]
    org.update_account(aid, new_tier=1)
    row = fresh_api.json(f"accounts({aid})?$select=new_tier", 'odata.include-annotations="*"')
    assert row["new_tier"] == 1
    assert row["new_tier@OData.Community.Display.V1.FormattedValue"] == "Gold"
    org.delete_attribute("account", "telephone1")
    assert fresh_api.get("accounts?$select=telephone1").status_code == 400
