"""The client against the built-in simulator: real HTTPS, real MSAL, nothing mocked."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trustme

from dynsync_dagster.dynamics.client import (
    ClientStats,
    DynamicsClient,
    RetryPolicy,
)
from dynsync_dagster.dynamics.errors import (
    AuthError,
    DynamicsError,
    ExpiredDeltaToken,
    TransientError,
)
from dynsync_dagster.dynamics.pages import is_deleted_row
from dynsync_dagster.settings import ConnectionSettings
from dynsync_dagster.simulator import DatasetSpec, Simulator

ACCOUNT_SELECT = ["name", "accountnumber", "industrycode", "modifiedon", "versionnumber"]
CONTACT_SELECT = ["fullname", "emailaddress1", "_parentcustomerid_value", "versionnumber"]


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    with Simulator(DatasetSpec(accounts=20, contacts=120, seed=3), state_dir=tmp_path) as sim:
        yield sim


def _conn(sim: Simulator, flow: str = "client_credentials", **overrides: str) -> ConnectionSettings:
    return ConnectionSettings.from_env({**sim.env(flow=flow), **overrides})


def _client(
    sim: Simulator, flow: str = "client_credentials", **kwargs
) -> tuple[DynamicsClient, list[float]]:
    """A client whose sleeps are recorded (and skipped) so retry tests run instantly."""
    slept: list[float] = []
    return DynamicsClient(_conn(sim, flow), sleep=slept.append, **kwargs), slept


def _token_posts(sim: Simulator) -> int:
    return sum(1 for r in sim.requests if r.method == "POST" and r.path.endswith("/token"))


def _all_rows(client: DynamicsClient, entity_set: str, select: list[str]) -> list[dict]:
    return [row for page in client.iter_pages(entity_set, select=select) for row in page.rows]


@pytest.mark.parametrize("flow", ["client_credentials", "ropc"])
def test_both_flows_sign_in_on_a_non_443_port(sim: Simulator, flow: str) -> None:
    conn = _conn(sim, flow)
    assert conn.flow == flow
    assert urlsplit(conn.authority_host).port not in (None, 443)  # MSAL's user realm drops it
    with DynamicsClient(conn) as client:
        me = client.whoami()
        assert me["UserId"]
        definition = client.entity_definition("account")
        assert definition["EntitySetName"] == "accounts"
        assert definition["PrimaryIdAttribute"] == "accountid"
        client.whoami()
    # Token from MSAL's cache after the first request: 3 Web API GETs, 1 sign-in.
    assert client.stats.requests == 3
    assert _token_posts(sim) == 1
    if flow == "ropc":
        # User-realm discovery reached the simulator's port, not 443.
        realm = [r for r in sim.requests if r.path.startswith("/common/userrealm/")]
        assert realm and realm[0].status == 200


@pytest.mark.parametrize(
    ("flow", "override", "aadsts"),
    [
        ("client_credentials", {"DYNAMICS_CLIENT_SECRET": "not-the-secret"}, "AADSTS7000215"),
        ("ropc", {"DYNAMICS_PASSWORD": "not-the-password"}, "AADSTS50126"),
    ],
)
def test_refused_sign_in_names_the_aadsts_code(
    sim: Simulator, flow: str, override: dict[str, str], aadsts: str
) -> None:
    with (
        DynamicsClient(_conn(sim, flow, **override)) as client,
        pytest.raises(AuthError) as info,
    ):
        client.whoami()
    message = str(info.value)
    assert aadsts in message
    assert "check DYNAMICS_" in message
    for secret in override.values():
        assert secret not in message and secret not in repr(info.value)


def test_token_endpoint_invalid_client_fault(sim: Simulator) -> None:
    sim.faults.inject("token_invalid_client")
    with DynamicsClient(_conn(sim)) as client, pytest.raises(AuthError, match="AADSTS"):
        client.whoami()


def test_ca_bundle_env_vars_cannot_override_the_configured_bundle(
    sim: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A CA that did not sign the simulator's certificate: if requests used it, TLS would fail.
    bogus = tmp_path / "bogus-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bogus))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bogus))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(bogus))
    for flow in ("client_credentials", "ropc"):
        with DynamicsClient(_conn(sim, flow)) as client:
            assert client.whoami()["UserId"]


def test_every_row_exactly_once_when_server_pages_are_smaller(sim: Simulator) -> None:
    sim.max_page_size = 7  # the server caps pages below what the client asks for
    client, _ = _client(sim, page_size=50)
    with client:
        pages = list(client.iter_pages("contacts", select=CONTACT_SELECT))
        accounts = _all_rows(client, "accounts", ACCOUNT_SELECT)
    contact_ids = [row["contactid"] for page in pages for row in page.rows]
    assert len(pages) == -(-len(sim.org.contact_ids()) // 7)
    assert all(len(page.rows) <= 7 for page in pages)
    assert sorted(contact_ids) == sorted(sim.org.contact_ids())
    assert len(set(contact_ids)) == len(contact_ids)
    assert sorted(r["accountid"] for r in accounts) == sorted(sim.org.account_ids())
    assert pages[-1].next_link is None and all(p.next_link for p in pages[:-1])
    assert client.stats.rows == len(contact_ids) + len(accounts)
    # Rows come back as sent, with the annotations asked for.
    assert all("@odata.etag" in row for row in accounts)


def test_delta_link_returns_changes_and_deletions(sim: Simulator) -> None:
    client, _ = _client(sim, page_size=9)
    with client:
        first = list(client.iter_pages("accounts", select=ACCOUNT_SELECT, track_changes=True))
        assert first[-1].delta_link and all(p.delta_link is None for p in first[:-1])
        assert not any(p.is_delta for p in first)

        ids = sim.org.account_ids()
        sim.org.update_account(ids[0], name="Renamed Ltd")
        sim.org.delete_account(ids[1])
        created = sim.org.create_account(name="Brand New plc")

        delta = list(client.iter_link(first[-1].delta_link, track_changes=True))
        rows = [row for page in delta for row in page.rows]
        assert delta[-1].delta_link and delta[-1].delta_link != first[-1].delta_link
        assert all(p.is_delta for p in delta)
        upserts = {r["accountid"]: r for r in rows if not is_deleted_row(r)}
        deleted = [r["id"] for r in rows if is_deleted_row(r)]
        assert upserts[ids[0]]["name"] == "Renamed Ltd"
        assert created in upserts
        assert ids[1] in deleted

        # Nothing changed since: an empty delta and a fresh link.
        again = list(client.iter_link(delta[-1].delta_link, track_changes=True))
        assert [r for p in again for r in p.rows] == []
        assert again[-1].delta_link


def test_expired_delta_link_raises_expired_delta_token(sim: Simulator) -> None:
    client, _ = _client(sim)
    with client:
        pages = list(client.iter_pages("contacts", select=CONTACT_SELECT, track_changes=True))
        sim.org.expire_delta_tokens()
        with pytest.raises(ExpiredDeltaToken, match="0x80044352"):
            list(client.iter_link(pages[-1].delta_link, track_changes=True))


@pytest.mark.parametrize("flow", ["client_credentials", "ropc"])
def test_401_once_is_retried_with_a_fresh_token(sim: Simulator, flow: str) -> None:
    client, slept = _client(sim, flow)
    with client:
        client.whoami()  # warm the token cache
        sim.faults.inject("401", path_contains="/api/data/")
        assert client.whoami()["UserId"]
        assert client.stats.unauthorized_retries == 1
        assert _token_posts(sim) == 2  # the cached token was dropped, a new one fetched
        # A token revoked server-side while MSAL still trusts it: same recovery.
        sim.expire_access_tokens()
        assert client.whoami()["UserId"]
    assert client.stats.unauthorized_retries == 2
    assert _token_posts(sim) == 3
    assert slept == []


def test_second_401_is_fatal_and_names_the_causes(sim: Simulator) -> None:
    client, _ = _client(sim)
    sim.faults.inject("401", times=2, path_contains="/api/data/")
    with client, pytest.raises(DynamicsError, match="security role") as info:
        client.whoami()
    assert info.value.status == 401
    assert client.stats.unauthorized_retries == 1


def test_429_sleeps_exactly_retry_after(sim: Simulator) -> None:
    client, slept = _client(sim, page_size=10)
    # Whole seconds, as Dataverse sends (the simulator rounds); the recorded sleep costs nothing.
    sim.faults.inject("429", path_contains="contacts", after=1, retry_after=3)
    with client:
        rows = _all_rows(client, "contacts", CONTACT_SELECT)
    assert len(rows) == len(sim.org.contact_ids())
    assert slept == [3.0]
    assert client.stats.throttled == 1
    assert client.stats.throttle_wait_s == 3.0
    assert client.stats.backoff_wait_s == 0


@pytest.mark.parametrize("kind", ["503", "502", "504", "500", "drop", "malformed"])
def test_transient_failures_are_retried_on_the_same_url(sim: Simulator, kind: str) -> None:
    client, slept = _client(sim, page_size=10, retry=RetryPolicy(base_backoff_s=0.01))
    sim.faults.inject(kind, times=2, path_contains="contacts", after=1)
    with client:
        rows = _all_rows(client, "contacts", CONTACT_SELECT)
    assert sorted(r["contactid"] for r in rows) == sorted(sim.org.contact_ids())
    assert len(slept) == 2 and client.stats.retries == 2
    assert client.stats.throttled == 0


def test_metadata_and_security_calls(sim: Simulator) -> None:
    client, _ = _client(sim)
    with client:
        attrs = {a["LogicalName"]: a for a in client.attributes("account")}
        assert attrs["name"]["AttributeType"] == "String"
        assert {"IsValidForRead", "IsSecured", "AttributeOf", "MetadataId"} <= attrs["name"].keys()
        picklists = client.typed_attributes(
            "account", "PicklistAttributeMetadata", ["LogicalName"], "OptionSet"
        )
        industry = next(p for p in picklists if p["LogicalName"] == "industrycode")
        assert industry["OptionSet"]["Options"]
        dates = client.typed_attributes(
            "contact", "DateTimeAttributeMetadata", ["LogicalName", "DateTimeBehavior"]
        )
        assert any(d["DateTimeBehavior"]["Value"] == "DateOnly" for d in dates)
        user_id = client.whoami()["UserId"]
        assert isinstance(client.attribute_privileges(user_id), list)
        assert isinstance(client.role_names(user_id), list)


def test_a_full_run_never_sends_anything_but_get(sim: Simulator) -> None:
    client, _ = _client(sim, page_size=25)
    with client:
        client.whoami()
        client.attributes("contact")
        pages = list(client.iter_pages("accounts", select=ACCOUNT_SELECT, track_changes=True))
        sim.org.update_account(sim.org.account_ids()[0], name="x")
        list(client.iter_link(pages[-1].delta_link, track_changes=True))
        _all_rows(client, "contacts", CONTACT_SELECT)
    assert sim.write_attempts == []
    assert isinstance(client.stats, ClientStats) and client.stats.requests >= 5


def test_persistent_503_gives_up_with_transient_error(sim: Simulator) -> None:
    client, slept = _client(sim, retry=RetryPolicy(max_attempts=3, base_backoff_s=0.01))
    sim.faults.inject("503", times=None, path_contains="WhoAmI", retry_after=0)
    with client, pytest.raises(TransientError, match="after 3 attempts") as info:
        client.whoami()
    assert info.value.status == 503 and len(slept) == 2


def test_tokens_and_secrets_never_reach_logs_or_errors(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    conn = _conn(sim, "ropc")
    caplog.set_level(logging.DEBUG)
    client = DynamicsClient(conn, sleep=lambda s: None, retry=RetryPolicy(max_attempts=2))
    with client:
        client.whoami()
        sim.faults.inject("401", path_contains="WhoAmI")
        sim.faults.inject("503", times=None, path_contains="WhoAmI", retry_after=0)
        with pytest.raises(TransientError) as info:
            client.whoami()
        token = client._transport.tokens.get_token()
    for text in (caplog.text, str(info.value), repr(info.value), repr(client), repr(conn)):
        assert token not in text
        for secret in conn.secrets:
            assert secret not in text
