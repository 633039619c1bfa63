"""Client behaviour against a tiny scripted HTTPS server: cases the simulator cannot produce."""

from __future__ import annotations

import pytest

from dynsync_dagster.dynamics.auth import build_session
from dynsync_dagster.dynamics.client import DynamicsClient, RetryPolicy
from dynsync_dagster.dynamics.errors import (
    DynamicsError,
    ExpiredDeltaToken,
    PagingLoopError,
    ThrottledError,
    TransientError,
)
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


def _client(local_server, **kwargs) -> tuple[DynamicsClient, list[float]]:
    slept: list[float] = []
    conn = ConnectionSettings.from_env(local_server.env())
    return DynamicsClient(conn, sleep=slept.append, **kwargs), slept


def test_persistent_429_gives_up_with_throttled_error(local_server) -> None:
    local_server.api = lambda path, headers: (
        429,
        {"Retry-After": "2", "Content-Type": "application/json"},
        b'{"error":{"code":"0x80072322","message":"Number of requests exceeded the limit"}}',
    )
    client, slept = _client(local_server, retry=RetryPolicy(max_attempts=4))
    with client, pytest.raises(ThrottledError, match="after 4 attempts") as info:
        client.whoami()
    assert slept == [2.0, 2.0, 2.0]
    assert info.value.code == "0x80072322"
    assert client.stats.throttled == 4 and client.stats.throttle_wait_s == 6.0


def test_wait_budget_caps_total_sleep(local_server) -> None:
    local_server.api = lambda path, headers: (429, {"Retry-After": "40"}, b"")
    client, slept = _client(local_server, retry=RetryPolicy(max_total_wait_s=100))
    with client, pytest.raises(ThrottledError, match="budget"):
        client.whoami()
    assert slept == [40.0, 40.0]


def test_generic_500_retried_a_few_times_other_errors_not_at_all(local_server) -> None:
    body = b'{"error":{"code":"0x80040216","message":"An unexpected error occurred.\\nmore"}}'
    local_server.api = lambda path, headers: (500, {}, body)
    client, slept = _client(local_server)
    with client, pytest.raises(DynamicsError, match=r"An unexpected error occurred\.$") as info:
        client.whoami()
    assert len(slept) == 2 and info.value.status == 500

    local_server.requests.clear()
    local_server.api = lambda path, headers: local_server.reply(
        {
            "error": {
                "code": "0x80060888",
                "message": "Could not find a property named 'nope'.\nline two",
                "innererror": {"message": "inner detail"},
            }
        },
        400,
    )
    client, slept = _client(local_server)
    with client, pytest.raises(DynamicsError) as info:
        list(client.iter_pages("accounts", select=["nope"]))
    assert slept == []
    assert info.value.status == 400 and info.value.code == "0x80060888"
    assert "Could not find a property named 'nope'. (inner detail)" in info.value.message
    assert "line two" not in info.value.message
    assert len([r for r in local_server.requests if r[1].startswith("/api/")]) == 1


def test_expired_version_stamp_is_its_own_error(local_server) -> None:
    local_server.api = lambda path, headers: local_server.reply(
        {"error": {"code": "0x80044352", "message": "Version stamp ... has expired."}}, 400
    )
    client, slept = _client(local_server)
    link = f"{local_server.base_url}/api/data/v9.2/accounts?$select=name&$deltatoken=1%2101"
    with client, pytest.raises(ExpiredDeltaToken, match="full read"):
        list(client.iter_link(link, track_changes=True))
    assert slept == []


def test_truncated_body_is_retried(local_server) -> None:
    calls = []

    def handler(path: str, headers: dict[str, str]):
        calls.append(path)
        if len(calls) == 1:
            return 200, {"Content-Type": "application/json"}, b'{"value": [{"accountid": "a"'
        return local_server.reply({"value": [{"accountid": "a"}]})

    local_server.api = handler
    client, slept = _client(local_server)
    with client:
        pages = list(client.iter_pages("accounts", select=["name"]))
    assert [p.rows for p in pages] == [[{"accountid": "a"}]]
    assert len(slept) == 1 and client.stats.retries == 1


def test_wrong_ca_bundle_fails_with_a_tls_hint(local_server, tmp_path) -> None:
    import trustme

    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    env = {**local_server.env(), "DYNAMICS_CA_BUNDLE": str(other)}
    client = DynamicsClient(ConnectionSettings.from_env(env))
    with client, pytest.raises(DynamicsError, match="DYNAMICS_CA_BUNDLE") as info:
        client.whoami()
    assert not isinstance(info.value, TransientError)


def test_no_write_method_and_session_refuses_non_get(local_server) -> None:
    conn = ConnectionSettings.from_env(local_server.env())
    with DynamicsClient(conn) as client:
        public = {n for n in dir(client) if not n.startswith("_")}
        assert not public & {"post", "patch", "put", "delete", "create", "update", "upsert"}
        session = build_session(conn)
        with pytest.raises(DynamicsError, match="only reads"):
            session.post(conn.api_root + "accounts", json={"name": "x"})
        with pytest.raises(DynamicsError, match="only reads"):
            session.request("DELETE", conn.api_root + "accounts(1)")
    assert all(method == "GET" for method, path, _ in local_server.requests if "/api/" in path)
