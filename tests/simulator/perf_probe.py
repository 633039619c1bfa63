"""Throughput probe (not a test): a bare requests loop paging contacts from a simulator
running in another process. Usage: uv run python tests/simulator/perf_probe.py --contacts 1000000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson
import requests

from dynsync_dagster.simulator.process import SimulatorProcess

SELECT = (
    "fullname,firstname,lastname,emailaddress1,jobtitle,telephone1,_parentcustomerid_value,"
    "_accountid_value,_ownerid_value,birthdate,modifiedon,versionnumber"
)


def _cpu_seconds(pid: int) -> float:
    """utime+stime of another process (Linux), to tell server cost from client cost."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _signed_in_session(env: dict[str, str]) -> requests.Session:
    """A session with a client-credentials token and the Web API headers the sync sends."""
    session = requests.Session()
    session.trust_env = False
    session.verify = env["DYNAMICS_CA_BUNDLE"]
    token = session.post(
        f"{env['DYNAMICS_AUTHORITY_HOST']}/{env['DYNAMICS_TENANT_ID']}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": env["DYNAMICS_CLIENT_ID"],
            "client_secret": env["DYNAMICS_CLIENT_SECRET"],
            "scope": f"{env['DYNAMICS_URL']}/.default",
        },
    ).json()["access_token"]
    session.headers.update(
        {
            "Authorization": f"Bearer {token}",
            "Accept": "application/json",
            "OData-MaxVersion": "4.0",
            "OData-Version": "4.0",
            "Prefer": 'odata.maxpagesize=5000,odata.include-annotations="*"',
        }
    )
    return session


def _timed_pass(n: int, session: requests.Session, org_url: str, server_pid: int) -> None:
    """Page through every contact once and print rows/s and CPU per row on each side."""
    url: str | None = f"{org_url}/api/data/v9.2/contacts?$select={SELECT}"
    rows = 0
    t0 = time.perf_counter()
    client0, server0 = time.process_time(), _cpu_seconds(server_pid)
    while url:
        response = session.get(url)
        response.raise_for_status()
        page = orjson.loads(response.content)
        rows += len(page["value"])
        url = page.get("@odata.nextLink")
    elapsed = time.perf_counter() - t0
    client = (time.process_time() - client0) / rows * 1e6
    server = (_cpu_seconds(server_pid) - server0) / rows * 1e6
    print(
        f"pass {n}: {rows:,} rows in {elapsed:.2f}s = {rows / elapsed:,.0f} rows/s "
        f"(CPU per row: client {client:.1f} us, server {server:.1f} us)"
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sim = SimulatorProcess(
            Path(tmp) / "state",
            ["--accounts", str(args.accounts), "--contacts", str(args.contacts)],
            log_path=Path(tmp) / "simulator.log",
        )
        sim.start(timeout_s=300)
        try:
            assert sim.pid is not None
            print(f"simulator up in {sim.startup_s:.1f}s (pid {sim.pid})")
            session = _signed_in_session(sim.env)
            for n in range(1, args.passes + 1):
                _timed_pass(n, session, sim.env["DYNAMICS_URL"], sim.pid)
        finally:
            sim.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
