"""MSAL against the simulated authority; bearer checks on the Web API."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msal
import requests

from dynsync_dagster.simulator import Simulator

from .conftest import API, make_session


class _PortFixSession(requests.Session):
    """MSAL's user-realm GET drops a non-443 authority's port; put it back for our host."""

    def __init__(self, host: str, port: int, ca: str) -> None:
        super().__init__()
        self.trust_env = False
        self.verify = ca
        self._host, self._port = host, port

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:
        parts = urlsplit(url)
        if parts.hostname == self._host and parts.port is None:
            url = urlunsplit(parts._replace(netloc=f"{self._host}:{self._port}"))
        return super().request(method, url, *args, **kwargs)


def _app(
    sim: Simulator, secret: str | None = None, http: requests.Session | None = None
) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        sim.client_id,
        client_credential=secret or sim.client_secret,
        authority=f"{sim.authority_host}/{sim.tenant_id}",
        instance_discovery=False,
        http_client=http or make_session(sim),
    )


def test_client_credentials_token_works_on_web_api(sim: Simulator) -> None:
    result = _app(sim).acquire_token_for_client([f"{sim.org_url}/.default"])
    assert "access_token" in result, result
    assert result["token_type"] == "Bearer" and result["expires_in"] > 3000
    who = make_session(sim).get(
        f"{sim.org_url}{API}WhoAmI", headers={"Authorization": f"Bearer {result['access_token']}"}
    )
    assert who.status_code == 200
    assert who.json()["UserId"] == sim.org.app_user_id


def test_ropc_flow_with_port_fix_and_silent_refresh(sim: Simulator) -> None:
    http = _PortFixSession("127.0.0.1", sim.port, str(sim.ca_pem_path))
    app = _app(sim, http=http)
    scopes = [f"{sim.org_url}/.default"]
    result = app.acquire_token_by_username_password(sim.username, sim.password, scopes)
    assert "access_token" in result, result
    assert "refresh_token" in result
    accounts = app.get_accounts()
    assert accounts and accounts[0]["username"] == sim.username
    silent = app.acquire_token_silent(scopes, account=accounts[0])
    assert silent and "access_token" in silent
    who = make_session(sim).get(
        f"{sim.org_url}{API}WhoAmI()", headers={"Authorization": f"Bearer {result['access_token']}"}
    )
    assert who.json()["UserId"] == sim.org.sync_user_id
    realm = [r for r in sim.requests if "/common/userrealm/" in r.path]
    assert realm and realm[-1].status == 200


def test_wrong_secret_gives_invalid_client(sim: Simulator) -> None:
    result = _app(sim, secret="not-the-secret").acquire_token_for_client(
        [f"{sim.org_url}/.default"]
    )
    assert result["error"] == "invalid_client"
    assert "AADSTS7000215" in result["error_description"]


def test_wrong_password_gives_aadsts50126(sim: Simulator) -> None:
    http = _PortFixSession("127.0.0.1", sim.port, str(sim.ca_pem_path))
    result = _app(sim, http=http).acquire_token_by_username_password(
        sim.username, "wrong", [f"{sim.org_url}/.default"]
    )
    assert result["error"] == "invalid_grant"
    assert result["error_codes"] == [50126]


def test_bad_scope_tenant_and_grant(sim: Simulator) -> None:
    http = make_session(sim)
    form = {
        "grant_type": "client_credentials",
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
        "scope": "https://other.crm.dynamics.com/.default",
    }
    bad_scope = http.post(f"{sim.authority_host}/{sim.tenant_id}/oauth2/v2.0/token", data=form)
    assert bad_scope.status_code == 400 and bad_scope.json()["error"] == "invalid_scope"
    form["scope"] = f"{sim.org_url}/.default"
    wrong_tenant = http.post(f"{sim.authority_host}/contoso-tenant/oauth2/v2.0/token", data=form)
    assert wrong_tenant.status_code == 400
    assert "AADSTS90002" in wrong_tenant.json()["error_description"]
    basic = http.post(
        f"{sim.authority_host}/{sim.tenant_id}/oauth2/v2.0/token",
        data={"grant_type": "client_credentials", "scope": form["scope"]},
        auth=(sim.client_id, sim.client_secret),
    )
    assert basic.status_code == 200


def test_openid_configuration_is_https_on_same_host(sim: Simulator) -> None:
    config = (
        make_session(sim)
        .get(f"{sim.authority_host}/{sim.tenant_id}/v2.0/.well-known/openid-configuration")
        .json()
    )
    for key in (
        "token_endpoint",
        "authorization_endpoint",
        "device_authorization_endpoint",
        "jwks_uri",
        "issuer",
    ):
        assert config[key].startswith(f"{sim.authority_host}/{sim.tenant_id}/")


def test_missing_unknown_and_expired_tokens_get_401(tmp_path) -> None:
    from .conftest import SPEC, client_token

    with Simulator(SPEC, state_dir=tmp_path, token_lifetime_s=1) as sim:
        http = make_session(sim)
        url = f"{sim.org_url}{API}accounts?$select=name"
        missing = http.get(url)
        assert missing.status_code == 401
        challenge = missing.headers["WWW-Authenticate"]
        assert challenge.startswith(f"Bearer authorization_uri={sim.authority_host}/")
        assert f"resource_id={sim.org_url}/" in challenge
        assert http.get(url, headers={"Authorization": "Bearer nonsense"}).status_code == 401
        token = client_token(sim, http)
        assert http.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 200
        time.sleep(1.2)
        assert http.get(url, headers={"Authorization": f"Bearer {token}"}).status_code == 401
