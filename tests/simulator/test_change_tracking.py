"""Change tracking: delta links, change feeds, expiry and restrictions."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from dynsync_dagster.simulator import Simulator

from .conftest import Api

TRACK = "odata.track-changes,odata.maxpagesize=40"


def _initial(api: Api, entity: str = "accounts", select: str = "name,revenue") -> tuple[list, str]:
    rows, last = api.all_pages(f"{entity}?$select={select}", TRACK)
    return rows, last["@odata.deltaLink"]


def test_initial_read_ends_with_delta_link(fresh_api: Api, fresh_sim: Simulator) -> None:
    response = fresh_api.get("contacts?$select=fullname", TRACK)
    assert "odata.track-changes" in response.headers["Preference-Applied"]
    assert (
        'istracking="True"'
        in parse_qs(urlsplit(response.json()["@odata.nextLink"]).query)["$skiptoken"][0]
    )
    rows, link = _initial(fresh_api, "contacts", "fullname")
    assert len(rows) == len(fresh_sim.org.contact_ids())
    token = parse_qs(urlsplit(link).query)["$deltatoken"][0]
    version, _, stamp = token.partition("!")
    assert int(version) == fresh_sim.org.current_version
    assert len(stamp) == 19 and stamp[2] == "/" and stamp[10] == " "


def test_delta_reports_upserts_then_deletes(fresh_api: Api, fresh_sim: Simulator) -> None:
    org = fresh_sim.org
    _, link = _initial(fresh_api)
    updated, deleted = org.account_ids()[:2]
    org.update_account(updated, name="Renamed Ltd")
    new = org.create_account(name="Brand New BV", revenue=12.5)
    org.delete_account(deleted)
    delta = fresh_api.json(link)
    assert delta["@odata.context"].endswith("/$metadata#accounts(name,revenue)/$delta")
    values = delta["value"]
    upserts = [v for v in values if "accountid" in v]
    removals = [v for v in values if v.get("reason") == "deleted"]
    assert [u["accountid"] for u in upserts] == [updated, new]
    assert upserts[0]["name"] == "Renamed Ltd" and "revenue" in upserts[0]
    assert values[-len(removals) :] == removals
    assert {"@odata.context", "id", "reason"} == set(removals[0])
    assert removals[0]["@odata.context"].endswith("$metadata#accounts/$deletedEntity")
    assert deleted in {r["id"] for r in removals}
    again = fresh_api.json(delta["@odata.deltaLink"])
    assert again["value"] == [] and "@odata.deltaLink" in again


def test_changes_during_initial_read_are_redelivered(fresh_api: Api, fresh_sim: Simulator) -> None:
    org = fresh_sim.org
    touched = org.account_ids()[-1]
    _, last = fresh_api.all_pages(
        "accounts?$select=name",
        "odata.track-changes,odata.maxpagesize=5",
        between=lambda n: org.touch_account(touched) if n == 1 else None,
    )
    delta = fresh_api.json(last["@odata.deltaLink"])
    assert touched in [v.get("accountid") for v in delta["value"]]


def test_large_delta_pages(fresh_api: Api, fresh_sim: Simulator) -> None:
    org = fresh_sim.org
    _, link = _initial(fresh_api, "contacts", "fullname")
    for cid in org.contact_ids():
        org.update_contact(cid, jobtitle="Bulk")
    rows, last = fresh_api.all_pages(link, "odata.maxpagesize=50")
    assert len(rows) == len(org.contact_ids())
    assert "@odata.deltaLink" in last


@pytest.mark.parametrize("option", ["$filter=statecode eq 0", "$orderby=name", "$top=5"])
def test_query_options_rejected_with_tracking(api: Api, option: str) -> None:
    response = api.get(f"accounts?$select=name&{option}", "odata.track-changes")
    assert response.status_code == 400
    name = option.split("=")[0]
    assert response.json()["error"]["message"] == (
        f'The "{name}" query parameter isn\'t supported when Change Tracking is enabled.'
    )


def test_expired_and_malformed_tokens(fresh_api: Api, fresh_sim: Simulator) -> None:
    _, link = _initial(fresh_api)
    fresh_sim.org.advance_clock(7 * 86400 + 5)
    expired = fresh_api.get(link)
    assert expired.status_code == 400
    assert expired.json() == {
        "error": {
            "code": "0x80044352",
            "message": (
                "Version stamp associated with the client has expired. Please perform a full sync."
            ),
        }
    }
    _, link = _initial(fresh_api)
    assert fresh_api.get(link).status_code == 200
    fresh_sim.org.expire_delta_tokens("account")
    assert fresh_api.get(link).json()["error"]["code"] == "0x80044352"
    bad = fresh_api.get("accounts?$select=name&$deltatoken=garbage")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "0x80060888"


def test_change_tracking_off_means_no_delta_link(fresh_api: Api, fresh_sim: Simulator) -> None:
    fresh_sim.org.set_change_tracking("account", False)
    response = fresh_api.get("accounts?$select=name", "odata.track-changes")
    assert "Preference-Applied" not in response.headers
    assert "@odata.deltaLink" not in response.json()


def test_count_pending_changes(fresh_api: Api, fresh_sim: Simulator) -> None:
    _, link = _initial(fresh_api)
    token = parse_qs(urlsplit(link).query)["$deltatoken"][0]
    fresh_sim.org.touch_account(fresh_sim.org.account_ids()[0])
    from urllib.parse import quote

    assert fresh_api.get(f"accounts/$count?$deltatoken={quote(token, safe='')}").text == "1"
