"""$select/$filter/$orderby/$top/$count, row shape and annotations."""

from __future__ import annotations

import itertools
import re

import pytest

from dynsync_dagster.simulator import Simulator

from .conftest import Api

ALL = 'odata.include-annotations="*"'
FV = "@OData.Community.Display.V1.FormattedValue"


def test_select_shape_etag_nulls_and_primary_key(api: Api, sim: Simulator) -> None:
    page = api.json("accounts?$select=name,accountnumber,_parentaccountid_value,modifiedon")
    assert page["@odata.context"] == (
        f"{sim.org_url}/api/data/v9.2/$metadata#accounts(name,accountnumber,"
        "_parentaccountid_value,modifiedon)"
    )
    row = page["value"][0]
    assert set(row) == {
        "@odata.etag",
        "name",
        "accountnumber",
        "_parentaccountid_value",
        "modifiedon",
        "accountid",
    }
    stored = sim.org.get_account(row["accountid"])
    assert row["@odata.etag"] == f'W/"{stored["versionnumber"]}"'
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", row["modifiedon"])
    assert any(r["_parentaccountid_value"] is None for r in page["value"])


def test_money_brings_currency_and_dateonly_format(api: Api) -> None:
    account = api.json("accounts?$select=revenue&$top=1")["value"][0]
    assert isinstance(account["revenue"], float)
    assert "_transactioncurrencyid_value" in account
    contacts = api.json("contacts?$select=birthdate")["value"]
    assert any(re.fullmatch(r"\d{4}-\d\d-\d\d", c["birthdate"] or "") for c in contacts)


@pytest.mark.parametrize("select", ["foo", "parentcustomerid", "owneridname", "isprivate"])
def test_bad_select_is_0x80060888(api: Api, select: str) -> None:
    response = api.get(
        f"contacts?$select={select}" if select != "isprivate" else f"accounts?$select={select}"
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "0x80060888"
    assert f"Could not find a property named '{select}'" in error["message"]


def test_filters(api: Api, sim: Simulator) -> None:
    org = sim.org
    first = org.account_ids()[0]
    name = org.get_account(first)["name"]
    quoted = name.upper().replace("'", "''")
    hits = api.json(f"accounts?$select=name&$filter=name eq '{quoted}'")["value"]
    assert [h["accountid"] for h in hits] == [first]  # case-insensitive
    contacts = api.json(f"contacts?$select=fullname&$filter=_parentcustomerid_value eq {first}")
    assert {c["contactid"] for c in contacts["value"]} == set(org.contacts_of(first))
    orphans = api.json("contacts?$select=fullname&$filter=_parentcustomerid_value eq null")
    assert len(orphans["value"]) == 3
    mod = sorted(org.get_contact(c)["modifiedon"] for c in org.contact_ids())[60]
    stamp = mod.strftime("%Y-%m-%dT%H:%M:%SZ")
    later = api.json(
        f"contacts?$select=modifiedon&$filter=modifiedon ge {stamp} and "
        "(statecode eq 0 or statecode eq 1) and not (statecode eq 5)"
    )["value"]
    assert len(later) == sum(
        1 for c in org.contact_ids() if org.get_contact(c)["modifiedon"] >= mod
    )


@pytest.mark.parametrize(
    "query",
    [
        "accounts?$filter=modifiedon ge '2024-01-01T00:00:00Z'",
        "accounts?$filter=name eq",
        "accounts?$filter=nosuch eq 1",
        "accounts?$filter=(name eq 'a'",
        "accounts?$orderby=nosuch asc",
        "accounts?$orderby=name sideways",
        "accounts?$top=x",
        "accounts?$skip=10",
    ],
)
def test_bad_query_options(api: Api, query: str) -> None:
    response = api.get(query)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "0x80060888"


def test_orderby_multi_key_and_top(api: Api, sim: Simulator) -> None:
    rows = api.json(
        "contacts?$select=lastname,firstname&$orderby=lastname desc,firstname asc&$top=50"
    )["value"]
    assert len(rows) == 50
    keys = [(r["lastname"].casefold(), r["firstname"].casefold()) for r in rows]
    for a, b in itertools.pairwise(keys):
        assert a[0] > b[0] or (a[0] == b[0] and a[1] <= b[1])


def test_count_option_and_count_segment(api: Api, sim: Simulator) -> None:
    page = api.json("contacts?$select=fullname&$count=true")
    assert page["@odata.count"] == len(sim.org.contact_ids())
    response = api.get("contacts/$count")
    assert response.headers["Content-Type"].startswith("text/plain")
    assert int(response.text) == len(sim.org.contact_ids())


def test_formatted_values_and_lookup_annotations(api: Api, sim: Simulator) -> None:
    rows = api.json(
        "accounts?$select=industrycode,revenue,createdon,numberofemployees,_ownerid_value,merged",
        ALL,
    )["value"]
    row = rows[0]
    keys = list(row)
    assert keys.index(f"industrycode{FV}") < keys.index("industrycode")
    assert row[f"revenue{FV}"] == f"${row['revenue']:,.2f}"
    assert row[f"_ownerid_value{FV}"] in {u.fullname for u in sim.org.users.values()}
    assert row["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "systemuser"
    assert row[f"merged{FV}"] == "No"
    contacts = api.json("contacts?$select=_parentcustomerid_value", ALL)["value"]
    by_type = {
        c.get("_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname") for c in contacts
    }
    assert by_type == {"account", "contact", None}
    child = next(
        c
        for c in contacts
        if c.get("_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname") == "contact"
    )
    assert (
        child["_parentcustomerid_value@Microsoft.Dynamics.CRM.associatednavigationproperty"]
        == "parentcustomerid_contact"
    )
    orphan = next(c for c in contacts if c["_parentcustomerid_value"] is None)
    assert f"_parentcustomerid_value{FV}" not in orphan


def test_annotation_subset_and_headers(api: Api) -> None:
    response = api.get(
        "accounts?$select=industrycode,_ownerid_value",
        'odata.include-annotations="OData.Community.Display.V1.*"',
    )
    assert response.headers["OData-Version"] == "4.0"
    assert response.headers["Content-Type"].startswith("application/json; odata.metadata=minimal")
    assert "x-ms-service-request-id" in response.headers
    assert "x-ms-ratelimit-burst-remaining-xrm-requests" in response.headers
    assert "odata.include-annotations" in response.headers["Preference-Applied"]
    row = response.json()["value"][0]
    assert f"industrycode{FV}" in row
    assert "_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname" not in row


def test_single_record_and_missing(api: Api, sim: Simulator) -> None:
    aid = sim.org.account_ids()[3]
    row = api.json(f"accounts({aid})?$select=name")
    assert row["accountid"] == aid and row["@odata.context"].endswith("(name)/$entity")
    missing = api.get("accounts(00000000-0000-0000-0000-000000000001)")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "0x80040217"


def test_unknown_path_404(api: Api) -> None:
    response = api.get("leads")
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"code", "message"}
