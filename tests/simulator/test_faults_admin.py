"""Read-only guard, fault injection, service protection and the admin API."""

from __future__ import annotations

import socket
import ssl

import msal
import pytest
import requests

from dynsync_dagster.simulator import DatasetSpec, Simulator, SimulatorAdmin
from dynsync_dagster.simulator.admin import SimulatorAdminError

from .conftest import API, Api, make_session


@pytest.mark.parametrize("method", ["POST", "PATCH", "DELETE", "PUT"])
def test_writes_get_405_and_are_recorded(fresh_sim: Simulator, fresh_api: Api, method: str) -> None:
    response = fresh_api.session.request(
        method,
        f"{fresh_sim.org_url}{API}accounts",
        json={"name": "x"},
        headers={"Authorization": f"Bearer {fresh_api.token}"},
    )
    assert response.status_code == 405
    assert set(response.json()["error"]) == {"code", "message"}
    assert [(w.method, w.status) for w in fresh_sim.write_attempts] == [(method, 405)]


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("429", 429, "0x80072322"),
        ("500", 500, "0x80040216"),
        ("502", 502, ""),
        ("503", 503, ""),
        ("504", 504, ""),
        ("401", 401, ""),
    ],
)
def test_status_faults(
    fresh_sim: Simulator, fresh_api: Api, kind: str, status: int, code: str
) -> None:
    fresh_sim.faults.inject(kind, times=2, path_contains="contacts", after=1, retry_after=3)
    assert fresh_api.get("contacts?$select=fullname").status_code == 200  # skipped (after=1)
    assert fresh_api.get("accounts?$select=name").status_code == 200  # path does not match
    for _ in range(2):
        response = fresh_api.get("contacts?$select=fullname")
        assert response.status_code == status
        assert response.json()["error"]["code"] == code
    if kind == "429":
        assert response.headers["Retry-After"] == "3"
        assert response.json()["error"]["message"].startswith("Number of requests exceeded")
    assert fresh_api.get("contacts?$select=fullname").status_code == 200


def test_drop_fault_breaks_the_connection(fresh_sim: Simulator, fresh_api: Api) -> None:
    fresh_sim.faults.inject("drop")
    with pytest.raises(
        (requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)
    ):
        fresh_api.get("contacts?$select=fullname")
    assert fresh_api.get("contacts?$select=fullname").status_code == 200


def test_drop_fault_announces_full_length(fresh_sim: Simulator, fresh_api: Api) -> None:
    fresh_sim.faults.inject("drop")
    context = ssl.create_default_context(cafile=str(fresh_sim.ca_pem_path))
    with (
        socket.create_connection(("127.0.0.1", fresh_sim.port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(
            (
                f"GET {API}accounts HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                f"Authorization: Bearer {fresh_api.token}\r\n\r\n"
            ).encode()
        )
        data = b""
        try:
            while chunk := tls.recv(65536):
                data += chunk
        except (ssl.SSLError, ConnectionError):
            pass  # an abrupt close is the point
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":")[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )
    )
    assert 0 < len(body) < length


def test_malformed_fault_serves_truncated_json(fresh_sim: Simulator, fresh_api: Api) -> None:
    fresh_sim.faults.inject("malformed")
    response = fresh_api.get("accounts?$select=name")
    assert response.status_code == 200
    with pytest.raises(ValueError):
        response.json()


@pytest.mark.parametrize("kind", ["token_429", "token_503"])
def test_token_endpoint_faults(fresh_sim: Simulator, kind: str) -> None:
    fresh_sim.faults.inject(kind)
    response = make_session(fresh_sim).post(
        f"{fresh_sim.authority_host}/{fresh_sim.tenant_id}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": fresh_sim.client_id,
            "client_secret": fresh_sim.client_secret,
            "scope": f"{fresh_sim.org_url}/.default",
        },
    )
    assert response.status_code == int(kind[-3:])
    assert "Retry-After" in response.headers


def test_token_invalid_client_fault_via_msal(fresh_sim: Simulator) -> None:
    fresh_sim.faults.inject("token_invalid_client")
    app = msal.ConfidentialClientApplication(
        fresh_sim.client_id,
        client_credential=fresh_sim.client_secret,
        authority=f"{fresh_sim.authority_host}/{fresh_sim.tenant_id}",
        instance_discovery=False,
        http_client=make_session(fresh_sim),
    )
    result = app.acquire_token_for_client([f"{fresh_sim.org_url}/.default"])
    assert result["error"] == "invalid_client"


def test_unknown_fault_kind_rejected(sim: Simulator) -> None:
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.faults.inject("418")


def test_service_protection_request_limit(tmp_path) -> None:
    with Simulator(DatasetSpec(accounts=3, contacts=3), state_dir=tmp_path, request_limit=5) as sim:
        api = Api(sim)
        statuses = [api.get("accounts?$select=name").status_code for _ in range(6)]
        assert statuses == [200] * 5 + [429]
        throttled = api.get("accounts?$select=name")
        assert throttled.json()["error"] == {
            "code": "0x80072322",
            "message": "Number of requests exceeded the limit of 5 over time window of 300 "
            "seconds.",
        }
        assert int(throttled.headers["Retry-After"]) > 0


def test_admin_api(fresh_sim: Simulator) -> None:
    admin = SimulatorAdmin(fresh_sim.org_url, fresh_sim.admin_key, fresh_sim.ca_pem_path)
    assert (fresh_sim.state_dir / "admin-key").read_text().strip() == fresh_sim.admin_key
    aid = admin.call("account_ids")[0]
    version = admin.call("update_account", account_id=aid, name="Via Admin")
    assert fresh_sim.org.get_account(aid)["name"] == "Via Admin"
    assert fresh_sim.org.get_account(aid)["versionnumber"] == version
    assert admin.call("get_account", account_id=aid)["modifiedon"].endswith("Z")
    admin.call("faults.inject", kind="503", times=1)
    assert fresh_sim.faults.active()[0]["kind"] == "503"
    admin.call("faults.clear")
    assert admin.call("max_page_size", value=17) == 17 and fresh_sim.max_page_size == 17
    assert len(admin.call("random_changes", n=3, seed=1)) == 3
    with pytest.raises(SimulatorAdminError, match="not an admin method"):
        admin.call("__init__")
    with pytest.raises(SimulatorAdminError):
        SimulatorAdmin(fresh_sim.org_url, "wrong", fresh_sim.ca_pem_path).call("account_ids")
