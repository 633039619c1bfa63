"""Entity pages decoded straight to Arrow columns, and the fallbacks to the plain JSON decode."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from dynsync_dagster.dynamics.client import DynamicsClient
from dynsync_dagster.dynamics.errors import TransientError
from dynsync_dagster.dynamics.pages import ArrowDecoder, ArrowRows, MalformedBody
from dynsync_dagster.settings import ConnectionSettings

LOOKUP = "_parentcustomerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"
DECODER = ArrowDecoder(
    [
        ("contactid", pa.string()),
        ("firstname", pa.string()),
        ("versionnumber", pa.int64()),
        ("revenue", pa.float64()),
        ("donotemail", pa.bool_()),
        (LOOKUP, pa.string()),
    ]
)


def _body(rows: list[dict], **links: str) -> bytes:
    doc = {"@odata.context": "https://org/api/data/v9.2/$metadata#contacts/$delta", "value": rows}
    doc.update({f"@odata.{k}": v for k, v in links.items()})
    return json.dumps(doc, ensure_ascii=False).encode()


def test_rows_links_and_removed_records_come_as_typed_columns() -> None:
    body = _body(
        [
            {
                "@odata.etag": 'W/"7"',
                "contactid": "c1",
                "firstname": 'Zoë "the" \u2603 \\ quoted',
                "versionnumber": 7,
                "revenue": 922337203685477,
                "donotemail": True,
                LOOKUP: "account",
            },
            {"contactid": "c2", "firstname": None, "versionnumber": 8, "revenue": 0.1},
            {"@odata.context": "...#contacts/$deletedEntity", "id": "c3", "reason": "deleted"},
        ],
        deltaLink="https://org/api/data/v9.2/contacts?$deltatoken=9",
    )
    page = DECODER(body)
    assert isinstance(page, ArrowRows)
    assert page.next_link is None
    assert page.delta_link == "https://org/api/data/v9.2/contacts?$deltatoken=9"
    assert page.context.endswith("/$delta")
    rows = page.rows.to_pylist()
    assert [r["contactid"] for r in rows] == ["c1", "c2", None]
    assert rows[0]["firstname"] == 'Zoë "the" \u2603 \\ quoted'
    assert rows[0]["versionnumber"] == 7 and rows[0]["revenue"] == 922337203685477.0
    assert rows[0]["donotemail"] is True and rows[0][LOOKUP] == "account"
    assert rows[1]["firstname"] is None and rows[1][LOOKUP] is None and rows[1]["revenue"] == 0.1
    assert rows[2]["id"] == "c3" and rows[2]["reason"] == "deleted"
    assert page.rows.schema.field("versionnumber").type == pa.int64()


def test_a_value_of_another_type_falls_back_to_the_plain_decode() -> None:
    # Valid JSON that Arrow cannot hold as declared: the stage then names the bad value.
    body = _body([{"contactid": "c1", "versionnumber": "not a number"}])
    decoded = DECODER(body)
    assert isinstance(decoded, dict)
    assert decoded["value"][0]["versionnumber"] == "not a number"


def test_a_document_without_a_value_list_falls_back_and_garbage_is_malformed() -> None:
    assert DECODER(b'{"error": {"code": "0x0", "message": "no"}}') == {
        "error": {"code": "0x0", "message": "no"}
    }
    with pytest.raises(MalformedBody):
        DECODER(_body([{"contactid": "c1"}])[:-20])


def test_the_client_yields_arrow_pages_and_retries_a_garbled_one(local_server) -> None:
    api = f"{local_server.base_url}/api/data/v9.2/"
    served = {"n": 0}

    def handler(path: str, headers: dict[str, str]):
        served["n"] += 1
        if "skiptoken" not in path:
            body = _body(
                [{"contactid": "a", "versionnumber": 1}], nextLink=api + "contacts?$skiptoken=2"
            )
            return 200, {"Content-Type": "application/json"}, body
        if served["n"] == 2:  # the second page arrives garbled once
            return 200, {"Content-Type": "application/json"}, b'{"value": [{"contactid": "b"'
        return (
            200,
            {"Content-Type": "application/json"},
            _body([{"contactid": "b", "versionnumber": 2}]),
        )

    local_server.api = handler
    conn = ConnectionSettings.from_env(local_server.env())
    with DynamicsClient(conn, sleep=lambda s: None) as client:
        pages = list(client.iter_pages("contacts", select=["contactid"], arrow=DECODER))
        assert [len(p) for p in pages] == [1, 1]
        assert all(p.table is not None and p.rows == [] for p in pages)
        assert [p.table.column("contactid").to_pylist() for p in pages] == [["a"], ["b"]]
        assert client.stats.retries == 1 and client.stats.rows == 2
        # Without a decoder, the same pages come as dicts.
        served["n"] = 10
        plain = list(client.iter_pages("contacts", select=["contactid"]))
        assert [p.rows[0]["contactid"] for p in plain] == ["a", "b"] and plain[0].table is None


def test_a_garbled_page_every_time_is_a_transient_error(local_server) -> None:
    local_server.api = lambda path, headers: (200, {}, b'{"value": [')
    conn = ConnectionSettings.from_env(local_server.env())
    with (
        DynamicsClient(conn, sleep=lambda s: None) as client,
        pytest.raises(TransientError, match="malformed JSON body"),
    ):
        list(client.iter_pages("contacts", select=["contactid"], arrow=DECODER))
