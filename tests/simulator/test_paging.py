"""Paging: cookies, server page caps, and stability while data changes between pages."""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from dynsync_dagster.simulator import Simulator

from .conftest import Api


def test_next_link_cookie_format(api: Api, sim: Simulator) -> None:
    page = api.json("contacts?$select=fullname", "odata.maxpagesize=10")
    link = page["@odata.nextLink"]
    assert link.startswith(f"{sim.org_url}/api/data/v9.2/contacts?$select=fullname&$skiptoken=")
    token = parse_qs(urlsplit(link).query)["$skiptoken"][0]
    assert token.startswith('<cookie pagenumber="2" pagingcookie="')
    assert 'istracking="False"' in token
    inner = unquote(token.split('pagingcookie="')[1].split('"')[0])
    last = page["value"][-1]["contactid"].upper()
    assert f'<contactid last="{{{last}}}"' in inner


def test_every_row_once_with_server_cap(fresh_sim: Simulator, fresh_api: Api) -> None:
    fresh_sim.max_page_size = 7
    response = fresh_api.get("contacts?$select=fullname", "odata.maxpagesize=25")
    assert response.headers["Preference-Applied"] == "odata.maxpagesize=7"
    rows, _ = fresh_api.all_pages("contacts?$select=fullname", "odata.maxpagesize=25")
    ids = [r["contactid"] for r in rows]
    assert len(ids) == len(set(ids)) == len(fresh_sim.org.contact_ids())


def test_pages_without_resent_prefer_keep_size(fresh_api: Api) -> None:
    first = fresh_api.json("accounts?$select=name", "odata.maxpagesize=6")
    second = fresh_api.json(first["@odata.nextLink"])  # no Prefer header this time
    assert len(second["value"]) == 6
    assert {r["accountid"] for r in first["value"]}.isdisjoint(
        r["accountid"] for r in second["value"]
    )


def test_stable_under_inserts_and_updates(fresh_sim: Simulator, fresh_api: Api) -> None:
    org = fresh_sim.org
    before = set(org.contact_ids())
    parent = org.account_ids()[5]

    def churn(n: int) -> None:
        org.create_contact(parent, "account", firstname="New", lastname=f"Row {n}")
        for cid in org.contact_ids()[n * 3 : n * 3 + 3]:
            org.update_contact(cid, jobtitle=f"Churn {n}")

    rows, _ = fresh_api.all_pages(
        "contacts?$select=fullname,jobtitle", "odata.maxpagesize=9", between=churn
    )
    ids = [r["contactid"] for r in rows]
    assert len(ids) == len(set(ids)), "no row twice"
    assert before <= set(ids), "no pre-existing row skipped"


def test_ordered_paging_resumes_after_last_ordering_key(
    fresh_sim: Simulator, fresh_api: Api
) -> None:
    org = fresh_sim.org
    query = "contacts?$select=lastname,firstname&$orderby=lastname desc,firstname asc"

    def churn(n: int) -> None:
        # Inserts land before and after the cursor; updates don't move ordering keys.
        org.create_contact(None, None, firstname="Aaa", lastname=f"Zz{n}")
        org.create_contact(None, None, firstname="Aaa", lastname=f"Aa{n}")
        org.update_contact(org.contact_ids()[n], jobtitle="moved")

    before = set(org.contact_ids())
    rows, _ = fresh_api.all_pages(query, "odata.maxpagesize=11", between=churn)
    ids = [r["contactid"] for r in rows]
    assert len(ids) == len(set(ids))
    assert before <= set(ids)
    keys = [(r["lastname"].casefold(), r["firstname"].casefold()) for r in rows]
    assert [k[0] for k in keys] == sorted((k[0] for k in keys), reverse=True)


def test_filtered_paging(fresh_api: Api, fresh_sim: Simulator) -> None:
    rows, _ = fresh_api.all_pages(
        "contacts?$select=fullname&$filter=statecode eq 0", "odata.maxpagesize=13"
    )
    assert len({r["contactid"] for r in rows}) == len(fresh_sim.org.contact_ids())
