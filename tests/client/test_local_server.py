"""Client behaviour against a tiny scripted HTTPS server: cases the simulator cannot produce."""

from __future__ import annotations

import pytest

from dynsync_dagster.client import DynamicsClient
from dynsync_dagster.errors import DynamicsError, PagingLoopError
from dynsync_dagster.settings import ConnectionSettings


def test_repeated_next_link_raises_paging_loop_error(local_server) -> None:
    api = f"{local_server.base_url}/api/data/v9.2/"
    link_a = api + "accounts?$select=name&$skiptoken=A"
    link_b = api + "accounts?$select=name&$skiptoken=B"

    def handler(path: str, headers: dict[str, str]):
        # Page 1 -> A -> B -> A again: a server stuck in a loop.
        nxt = link_b if "skiptoken=A" in path else link_a
        return local_server.reply({"value": [{"accountid": path}], "@odata.nextLink": nxt})

    local_server.api = handler
    conn = ConnectionSettings.from_env(local_server.env())
    with DynamicsClient(conn) as client:
        pages = client.iter_pages("accounts", select=["name"])
        assert next(pages).next_link == link_a
        assert next(pages).next_link == link_b
        assert next(pages).next_link == link_a
        with pytest.raises(PagingLoopError, match="repeated a nextLink"):
            next(pages)
    # Every Web API request was a GET with the documented headers.
    web = [r for r in local_server.requests if r[1].startswith("/api/")]
    assert len(web) == 3
    for method, _path, headers in web:
        assert method == "GET"
        assert headers["Authorization"] == "Bearer local-at"
        assert headers["OData-MaxVersion"] == "4.0"
        assert headers["OData-Version"] == "4.0"
        assert headers["If-None-Match"] == "null"
        assert headers["Prefer"] == 'odata.maxpagesize=5000, odata.include-annotations="*"'


def test_next_link_to_another_host_is_refused(local_server) -> None:
    local_server.api = lambda path, headers: local_server.reply(
        {"value": [], "@odata.nextLink": "https://evil.example/api/data/v9.2/accounts?x=1"}
    )
    conn = ConnectionSettings.from_env(local_server.env())
    with DynamicsClient(conn) as client, pytest.raises(DynamicsError, match="outside the org"):
        list(client.iter_pages("accounts", select=["name"]))
    with DynamicsClient(conn) as client, pytest.raises(DynamicsError, match="outside the org"):
        client.get_json("https://evil.example/api/data/v9.2/WhoAmI")
