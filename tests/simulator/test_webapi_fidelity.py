"""Where a real client (Microsoft's Python SDK) met the simulator: each behaves as Dataverse does."""

from __future__ import annotations

from urllib.parse import quote

import pytest

from dynsync_dagster.simulator import Simulator

from .conftest import SPEC, Api


def _error(api: Api, path: str, status: int, prefer: str | None = None) -> dict:
    response = api.get(path, prefer)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["message"]
    return error


# ---- Microsoft.Dynamics.CRM.In / NotIn / Between ----------------------------------------


def test_in_and_not_in_with_documented_double_quoted_array(api: Api) -> None:
    everyone = api.json("accounts?$select=statecode,industrycode")["value"]
    codes = sorted({r["industrycode"] for r in everyone if r["industrycode"] is not None})[:2]
    values = ",".join(f'"{c}"' for c in codes)
    fn = "Microsoft.Dynamics.CRM.{}(PropertyName='industrycode',PropertyValues=[{}])"
    inside = api.json(f"accounts?$select=industrycode&$filter={quote(fn.format('In', values))}")
    outside = api.json(f"accounts?$select=industrycode&$filter={quote(fn.format('NotIn', values))}")
    assert {r["industrycode"] for r in inside["value"]} == set(codes)
    assert inside["value"] and outside["value"]
    # SQL semantics: a null column is in neither list.
    with_value = [r for r in everyone if r["industrycode"] is not None]
    assert len(inside["value"]) + len(outside["value"]) == len(with_value)


def test_in_on_guids_and_between_on_integers(api: Api) -> None:
    rows = api.json("accounts?$select=numberofemployees")["value"]
    ids = [r["accountid"] for r in rows[:3]]
    guid_list = ",".join(f'"{i}"' for i in ids)
    by_id = api.json(
        "accounts?$select=name&$filter="
        + quote(f"Microsoft.Dynamics.CRM.In(PropertyName='accountid',PropertyValues=[{guid_list}])")
    )
    assert sorted(r["accountid"] for r in by_id["value"]) == sorted(ids)
    between = api.json(
        "accounts?$select=numberofemployees&$filter="
        + quote(
            "Microsoft.Dynamics.CRM.Between(PropertyName='numberofemployees',"
            'PropertyValues=["10","500"])'
        )
    )
    expected = [
        r
        for r in rows
        if r["numberofemployees"] is not None and 10 <= r["numberofemployees"] <= 500
    ]
    assert len(between["value"]) == len(expected)


def test_bad_in_value_and_unserved_function_are_errors(api: Api) -> None:
    bad = "Microsoft.Dynamics.CRM.In(PropertyName='industrycode',PropertyValues=[\"x\"])"
    assert _error(api, f"accounts?$filter={quote(bad)}", 400)["code"] == "0x80060888"
    other = "Microsoft.Dynamics.CRM.LastXHours(PropertyName='modifiedon',PropertyValue=2)"
    assert "not implemented" in _error(api, f"accounts?$filter={quote(other)}", 501)["message"]


# ---- queries the simulator does not run: never a 200 with every row ----------------------


@pytest.mark.parametrize(
    "query",
    [
        "fetchXml=" + quote('<fetch top="2"><entity name="account"><attribute name="name"/>'),
        "sql=" + quote("SELECT TOP 2 name FROM account"),
        "savedQuery=00000000-0000-0000-00aa-000010001001",
        "$apply=" + quote("aggregate($count as count)"),
    ],
)
def test_unserved_query_kinds_answer_501(api: Api, query: str) -> None:
    error = _error(api, f"accounts?{query}", 501)
    assert "not implemented by the dynsync simulator" in error["message"]
    _error(api, f"accounts/$count?{query}", 501)


def test_skip_stays_a_dataverse_400(api: Api) -> None:
    assert _error(api, "accounts?$skip=2", 400)["code"] == "0x80060888"


# ---- $top with odata.maxpagesize ----------------------------------------------------------


def test_top_is_ignored_when_maxpagesize_is_sent(api: Api, sim: Simulator) -> None:
    # Dataverse ignores $top when the Prefer: odata.maxpagesize header is sent too.
    rows, last = api.all_pages("accounts?$select=name&$top=3", "odata.maxpagesize=7")
    assert len(rows) == len(sim.org.tables["account"].rows)
    first = api.get("accounts?$select=name&$top=3", "odata.maxpagesize=7")
    assert first.headers["Preference-Applied"] == "odata.maxpagesize=7"
    assert len(first.json()["value"]) == 7
    # Without the header $top limits the rows and there is no next page.
    alone = api.json("accounts?$select=name&$top=3")
    assert len(alone["value"]) == 3 and "@odata.nextLink" not in alone
    assert "@odata.nextLink" not in last


# ---- EntityMetadata ------------------------------------------------------------------------


def test_entity_metadata_has_is_private_and_filters_on_it(api: Api) -> None:
    one = api.json("EntityDefinitions(LogicalName='account')")
    assert one["IsPrivate"] is False
    listed = api.json("EntityDefinitions?$select=LogicalName,IsPrivate&$filter=IsPrivate eq false")[
        "value"
    ]
    assert {e["LogicalName"] for e in listed} == {"account", "contact"}


def test_keys_and_relationships(api: Api, sim: Simulator) -> None:
    keys = api.json("EntityDefinitions(LogicalName='account')/Keys")
    assert keys["value"] == []
    one_to_many = api.json(
        "EntityDefinitions(LogicalName='account')/OneToManyRelationships"
        "?$select=SchemaName,ReferencingEntity,ReferencingAttribute,"
        "ReferencedEntityNavigationPropertyName"
    )
    assert one_to_many["@odata.context"].endswith(
        "EntityDefinitions('account')/OneToManyRelationships(SchemaName,ReferencingEntity,"
        "ReferencingAttribute,ReferencedEntityNavigationPropertyName)"
    )
    by_name = {r["SchemaName"]: r for r in one_to_many["value"]}
    assert by_name["contact_customer_accounts"]["ReferencingEntity"] == "contact"
    assert by_name["contact_customer_accounts"]["ReferencingAttribute"] == "parentcustomerid"
    many_to_one = api.json("EntityDefinitions(LogicalName='contact')/ManyToOneRelationships")
    assert "contact_customer_accounts" in {r["SchemaName"] for r in many_to_one["value"]}
    assert (
        api.json("EntityDefinitions(LogicalName='contact')/ManyToManyRelationships")["value"] == []
    )


def test_retrieve_metadata_changes_is_501_not_404(api: Api) -> None:
    error = _error(api, "RetrieveMetadataChanges(Query=@q)?@q=" + quote("{}"), 501)
    assert "RetrieveMetadataChanges" in error["message"]


# ---- $expand ---------------------------------------------------------------------------------


def test_expand_single_valued_parent_account(api: Api, sim: Simulator) -> None:
    page = api.json(
        "contacts?$select=fullname,_parentcustomerid_value"
        "&$expand=parentcustomerid_account($select=name)",
        'odata.include-annotations="*"',
    )
    assert page["@odata.context"].endswith(
        "#contacts(fullname,_parentcustomerid_value,parentcustomerid_account(name))"
    )
    accounts = sim.org.tables["account"].rows
    seen_account = seen_none = False
    for row in page["value"]:
        kind = row.get("_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname")
        expanded = row["parentcustomerid_account"]
        if kind == "account":
            seen_account = True
            assert expanded["accountid"] == row["_parentcustomerid_value"]
            assert row["_parentcustomerid_value"] in accounts
            assert "@odata.etag" not in expanded and "name" in expanded
        else:  # no parent, or a contact parent
            seen_none = True
            assert expanded is None
    assert seen_account and seen_none


def test_expand_collection_valued_contacts_of_account(api: Api, sim: Simulator) -> None:
    contacts = api.json("contacts?$select=_parentcustomerid_value", 'odata.include-annotations="*"')
    expected: dict[str, set[str]] = {}
    for c in contacts["value"]:
        kind = c.get("_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname")
        if kind == "account":
            expected.setdefault(c["_parentcustomerid_value"], set()).add(c["contactid"])
    rows, _ = api.all_pages(
        "accounts?$select=name&$expand=contact_customer_accounts($select=fullname)",
        "odata.maxpagesize=6",
    )
    assert len(rows) == len(sim.org.tables["account"].rows)
    for account in rows:
        related = account["contact_customer_accounts"]
        assert {c["contactid"] for c in related} == expected.get(account["accountid"], set())
        for c in related:
            assert set(c) == {"@odata.etag", "fullname", "_parentcustomerid_value", "contactid"}
        link = account["contact_customer_accounts@odata.nextLink"]
        assert link.endswith(
            f"accounts({account['accountid']})/contact_customer_accounts?$select=fullname"
        )
    big = max(expected, key=lambda k: len(expected[k]))
    via_link = api.json(f"accounts({big})/contact_customer_accounts?$select=fullname")
    assert {c["contactid"] for c in via_link["value"]} == expected[big]


def test_expand_on_single_record(api: Api) -> None:
    contact = next(
        c
        for c in api.json(
            "contacts?$select=_parentcustomerid_value", 'odata.include-annotations="*"'
        )["value"]
        if c.get("_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname") == "account"
    )
    one = api.json(
        f"contacts({contact['contactid']})?$select=fullname"
        "&$expand=parentcustomerid_account($select=name,accountnumber)"
    )
    assert one["@odata.context"].endswith(
        "#contacts(fullname,parentcustomerid_account(name,accountnumber))/$entity"
    )
    assert one["parentcustomerid_account"]["accountid"] == contact["_parentcustomerid_value"]


def test_expand_errors(api: Api) -> None:
    unknown = _error(api, "contacts?$expand=nosuchnav", 400)
    assert unknown["code"] == "0x80060888"
    assert "Could not find a property named 'nosuchnav'" in unknown["message"]
    lookup = _error(api, "contacts?$expand=_parentcustomerid_value", 400)
    assert lookup["code"] == "0x80060888"
    nested = _error(
        api,
        "accounts?$expand=contact_customer_accounts($filter=" + quote("fullname eq 'x'") + ")",
        501,
    )
    assert "$filter option inside $expand" in nested["message"]
    tracking = _error(api, "accounts?$expand=contact_customer_accounts", 400, "odata.track-changes")
    assert "isn't supported when Change Tracking is enabled" in tracking["message"]


# ---- RetrieveTotalRecordCount ------------------------------------------------------------


def test_retrieve_total_record_count_is_a_snapshot_up_to_a_day_old(fresh_api: Api) -> None:
    """Past $count's 5,000 cap, the one count Dataverse offers; it comes from a daily
    snapshot, so a record created after it is not counted until the snapshot ages out."""
    org = fresh_api.sim.org
    path = "RetrieveTotalRecordCount(EntityNames=@p1)?@p1=" + quote("['account','contact']")
    first = fresh_api.json(path)
    counts = first["EntityRecordCountCollection"]
    assert counts["Keys"] == ["account", "contact"] and counts["Count"] == 2
    assert counts["Values"] == [SPEC.accounts, len(org.contact_ids())]
    org.create_account(name="After the snapshot")
    inline = fresh_api.json("RetrieveTotalRecordCount(EntityNames=['account'])")
    assert inline["EntityRecordCountCollection"]["Values"] == [SPEC.accounts]
    org.advance_clock(24 * 3600)
    aged = fresh_api.json("RetrieveTotalRecordCount(EntityNames=['account'])")
    assert aged["EntityRecordCountCollection"]["Values"] == [SPEC.accounts + 1]


def test_retrieve_total_record_count_names_an_unknown_table(api: Api) -> None:
    error = _error(api, "RetrieveTotalRecordCount(EntityNames=['lead'])", 404)
    assert "'lead'" in error["message"]
    _error(api, "RetrieveTotalRecordCount(EntityNames=@p1)", 400)
