"""Throughput probe (not a test): a bare requests loop paging contacts from a simulator
running in another process. Usage: uv run python tests/simulator/perf_probe.py --contacts 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import requests

SELECT = (
    "fullname,firstname,lastname,emailaddress1,jobtitle,telephone1,_parentcustomerid_value,"
    "_accountid_value,_ownerid_value,birthdate,modifiedon,versionnumber"
)


def _wait_for_state(state_dir: Path, proc: subprocess.Popen, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    path = state_dir / "simulator.json"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"simulator exited with {proc.returncode}")
        if path.exists():
            try:
                return json.loads(path.read_text())
            except ValueError:
                pass
        time.sleep(0.2)
    raise SystemExit("simulator did not start in time")


def _cpu_seconds(pid: int) -> float:
    """utime+stime of another process (Linux), to tell server cost from client cost."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=1_000_000)
    parser.add_argument("--accounts", type=int, default=20_000)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        state_dir = Path(tmp)
        started = time.monotonic()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dynsync_dagster.simulator",
                "--port",
                "0",
                "--accounts",
                str(args.accounts),
                "--contacts",
                str(args.contacts),
                "--state-dir",
                str(state_dir),
            ],
            stdout=subprocess.DEVNULL,
        )
        try:
            info = _wait_for_state(state_dir, proc, timeout=300)
            print(f"simulator up in {time.monotonic() - started:.1f}s (pid {info['pid']})")
            env = info["env"]
            session = requests.Session()
            session.trust_env = False
            session.verify = info["ca_pem_path"]
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
            for n in range(1, args.passes + 1):
                url: str | None = f"{env['DYNAMICS_URL']}/api/data/v9.2/contacts?$select={SELECT}"
                rows = 0
                t0 = time.perf_counter()
                client0, server0 = time.process_time(), _cpu_seconds(proc.pid)
                while url:
                    response = session.get(url)
                    response.raise_for_status()
                    page = orjson.loads(response.content)
                    rows += len(page["value"])
                    url = page.get("@odata.nextLink")
                elapsed = time.perf_counter() - t0
                client = (time.process_time() - client0) / rows * 1e6
                server = (_cpu_seconds(proc.pid) - server0) / rows * 1e6
                print(
                    f"pass {n}: {rows:,} rows in {elapsed:.2f}s = {rows / elapsed:,.0f} rows/s "
                    f"(CPU per row: client {client:.1f} us, server {server:.1f} us)"
                )
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
