"""Fixtures: a small simulator over real HTTPS and a requests session that trusts its CA."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from dynsync_dagster.simulator import DatasetSpec, Simulator

SPEC = DatasetSpec(
    accounts=20,
    contacts=120,
    sized_accounts=(15, 7),
    orphan_contacts=3,
    contact_parented_contacts=4,
    seed=3,
)
API = "/api/data/v9.2/"


def make_session(sim: Simulator) -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # the machine's REQUESTS_CA_BUNDLE would override verify
    session.verify = str(sim.ca_pem_path)
    return session


def client_token(sim: Simulator, session: requests.Session) -> str:
    response = session.post(
        f"{sim.authority_host}/{sim.tenant_id}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": sim.client_id,
            "client_secret": sim.client_secret,
            "scope": f"{sim.org_url}/.default",
        },
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


class Api:
    """GET helper against the Web API with a valid bearer token."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.session = make_session(sim)
        self.token = client_token(sim, self.session)

    def get(self, path: str, prefer: str | None = None, **headers: str) -> requests.Response:
        url = path if path.startswith("https://") else f"{self.sim.org_url}{API}{path}"
        hdrs = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "OData-Version": "4.0",
            "OData-MaxVersion": "4.0",
            **headers,
        }
        if prefer:
            hdrs["Prefer"] = prefer
        return self.session.get(url, headers=hdrs)

    def json(self, path: str, prefer: str | None = None) -> Any:
        response = self.get(path, prefer)
        assert response.status_code == 200, response.text
        return response.json()

    def all_pages(
        self, path: str, prefer: str | None = None, between: Callable[[int], None] | None = None
    ) -> tuple[list[dict], dict]:
        """Follow nextLinks; returns the rows and the last page."""
        rows: list[dict] = []
        page = self.json(path, prefer)
        n = 0
        while True:
            rows += page["value"]
            link = page.get("@odata.nextLink")
            if not link:
                return rows, page
            n += 1
            if between:
                between(n)
            page = self.json(link, prefer)


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulator]:
    state: Path = tmp_path_factory.mktemp("sim")
    with Simulator(SPEC, state_dir=state) as simulator:
        yield simulator


@pytest.fixture
def fresh_sim(tmp_path: Path) -> Iterator[Simulator]:
    """A simulator a test may mutate freely."""
    with Simulator(SPEC, state_dir=tmp_path) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def api(sim: Simulator) -> Api:
    return Api(sim)


@pytest.fixture
def fresh_api(fresh_sim: Simulator) -> Api:
    return Api(fresh_sim)
