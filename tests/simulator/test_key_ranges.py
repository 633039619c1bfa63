"""Primary-key range filters: served from the key index, with exactly the rows a scan gives."""

from __future__ import annotations

import pytest

from dynsync_dagster.simulator import Simulator

from .conftest import Api

LOW, HIGH = "40000000-0000-0000-0000-400000000000", "c0000000-0000-0000-0000-c00000000000"


@pytest.mark.parametrize(
    ("where", "keep"),
    [
        (f"contactid ge {LOW} and contactid lt {HIGH}", lambda i: LOW <= i < HIGH),
        (f"contactid gt {LOW}", lambda i: i > LOW),
        (f"contactid le {HIGH}", lambda i: i <= HIGH),
        (f"contactid lt {LOW} and contactid ge {HIGH}", lambda i: False),
        # Not a key range: the scan, which must agree.
        (f"contactid ge {LOW} or contactid lt {LOW}", lambda i: True),
    ],
)
def test_key_range_filters_give_the_rows_a_scan_gives(
    sim: Simulator, api: Api, where: str, keep
) -> None:
    want = sorted(i for i in sim.org.contact_ids() if keep(i))
    rows, _ = api.all_pages(
        f"contacts?$select=contactid&$filter={where}", prefer="odata.maxpagesize=7"
    )
    assert [r["contactid"] for r in rows] == want


def test_a_key_range_sees_a_record_created_after_its_first_page(fresh_sim: Simulator) -> None:
    api = Api(fresh_sim)
    first = api.json(
        f"contacts?$select=contactid&$filter=contactid ge {LOW}", prefer="odata.maxpagesize=5"
    )
    created = fresh_sim.org.create_contact(None, None, lastname="Late")
    rest, _ = api.all_pages(first["@odata.nextLink"], prefer="odata.maxpagesize=5")
    seen = {r["contactid"] for r in first["value"] + rest}
    assert (created >= LOW) == (created in seen)
    assert seen == {i for i in fresh_sim.org.contact_ids() if i >= LOW}


@pytest.mark.parametrize("op", ["ge", "gt", "le", "lt"])
def test_a_bound_that_is_a_record_key(sim: Simulator, api: Api, op: str) -> None:
    ids = sorted(sim.org.contact_ids())
    bound = ids[len(ids) // 3]
    keep = {"ge": bound.__le__, "gt": bound.__lt__, "le": bound.__ge__, "lt": bound.__gt__}[op]
    rows, _ = api.all_pages(
        f"contacts?$select=contactid&$filter=contactid {op} {bound}", prefer="odata.maxpagesize=9"
    )
    assert [r["contactid"] for r in rows] == [i for i in ids if keep(i)]
