"""Security: secrets and tokens stay out of everything, TLS is always verified, identifiers from
settings are validated before any SQL, values are data, the store is private, servers are local.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psutil
import pytest
import trustme

from dynsync_dagster.dynamics.errors import AuthError, DynamicsError
from dynsync_dagster.dynamics.fields import FieldSelectionError
from dynsync_dagster.settings import ConnectionSettings, SettingsError, SyncSettings
from dynsync_dagster.simulator import Simulator
from dynsync_dagster.sync.cycle import run_cycle
from dynsync_dagster.sync.local_edit import LocalEditError, set_account_field
from tests.support import (
    REPO,
    TINY,
    Zygote,
    activity_rows,
    bound_now,
    canonical,
    clean_env,
    connection,
    crash_job,
    cycle,
    fast_client,
    pick_sized,
    sync_settings,
)

HOSTILE_NAME = 'name"; DROP TABLE accounts; --'
WRONG_SECRET = "wrong-secret-value-7f3a9c"
WRONG_PASSWORD = "Wrong-Passw0rd-91d2!"


def _issued_tokens(sim: Simulator) -> list[str]:
    """Every access and refresh token the simulator handed out (its own bookkeeping)."""
    store = sim.tokens
    tokens = list(getattr(store, "_access", {})) + list(getattr(store, "_refresh", {}))
    assert tokens, "the simulator's token store moved: update this helper"
    return tokens


def _secrets(sim: Simulator) -> dict[str, str]:
    found = {f"token {i}": t for i, t in enumerate(_issued_tokens(sim))}
    found |= {
        "client secret": sim.client_secret,
        "password": sim.password,
        "wrong secret tried": WRONG_SECRET,
        "wrong password tried": WRONG_PASSWORD,
    }
    return found


def _leaks(haystacks: dict[str, str | bytes], secrets: dict[str, str]) -> list[str]:
    out = []
    for where, text in haystacks.items():
        for what, secret in secrets.items():
            needle: str | bytes = secret.encode() if isinstance(text, bytes) else secret
            if needle in text:  # type: ignore[operator]
                out.append(f"{what} found in {where}")
    return out


def _failure_text(exc: BaseException) -> str:
    return "\n".join(
        [str(exc), repr(exc), *traceback.format_exception(type(exc), exc, exc.__traceback__)]
    )


def _store_bytes(db: Path) -> dict[str, bytes]:
    return {
        str(p): p.read_bytes()
        for p in db.parent.iterdir()
        if p.is_file() and p.name.startswith(db.name)
    }


# ---- secrets and tokens --------------------------------------------------------------------


def test_no_secret_or_token_in_logs_errors_or_the_store(
    tiny: Simulator, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("dynsync", "msal", "urllib3", "requests"):
        caplog.set_level(logging.DEBUG, logger=name)
    failures: dict[str, str] = {}
    # Client credentials through a 401 (a token refresh) and throttling.
    tiny.faults.inject("401", times=1, path_contains="/accounts")
    tiny.faults.inject("429", times=1, path_contains="/contacts", retry_after=0)
    with fast_client(connection(tiny)) as client:
        cycle(tiny, store, client=client)
    # The password flow, with its refresh token, through expired access tokens.
    ropc = connection(tiny, flow="ropc")
    tiny.org.update_account(pick_sized(tiny, 9), name="Seen by the password flow")
    with fast_client(ropc) as client:
        run_cycle(ropc, sync_settings(), store, client=client)
        tiny.expire_access_tokens()
        run_cycle(ropc, sync_settings(), store, client=client)
    # Wrong secret, wrong password, and a 401 that never ends.
    wrong = [
        ConnectionSettings.from_env(tiny.env() | {"DYNAMICS_CLIENT_SECRET": WRONG_SECRET}),
        ConnectionSettings.from_env(tiny.env("ropc") | {"DYNAMICS_PASSWORD": WRONG_PASSWORD}),
    ]
    for i, conn in enumerate(wrong):
        with pytest.raises(AuthError) as err:
            run_cycle(conn, sync_settings(), store)
        failures[f"auth failure {i}"] = _failure_text(err.value)
    tiny.faults.inject("401", times=None)
    with pytest.raises(DynamicsError) as err:
        cycle(tiny, store)
    failures["401 always"] = _failure_text(err.value)
    tiny.faults.clear()

    haystacks: dict[str, str | bytes] = {"captured logs": caplog.text, **failures}
    haystacks["log record args"] = "\n".join(
        repr(r.args) + repr(getattr(r, "exc_text", "")) for r in caplog.records
    )
    haystacks |= _store_bytes(store)
    haystacks["repr of settings"] = repr(ropc) + repr(wrong)
    assert _leaks(haystacks, _secrets(tiny)) == []
    assert "7000215" in failures["auth failure 0"]  # the failures did say what went wrong
    assert "50126" in failures["auth failure 1"]


def test_no_secret_in_dagster_run_config_metadata_or_event_log(
    tiny: Simulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, definitions
) -> None:
    for key, value in tiny.env("ropc").items():
        monkeypatch.setenv(key, value)
    db = tmp_path / "dagster" / "dynsync.duckdb"
    monkeypatch.setenv("DYNSYNC_DUCKDB_PATH", str(db))
    monkeypatch.setenv("DYNSYNC_CONFIG", str(REPO / "dynsync.yaml"))
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    haystacks: dict[str, str | bytes] = {}
    with dg.instance_for_test() as instance:
        # Bound to the variables set now (a code location binds the ones set when it loads).
        job = bound_now(definitions).resolve_job_def("dynamics_sync_job")
        tiny.faults.inject("401", times=1, path_contains="/contacts")
        ok = job.execute_in_process(instance=instance, partition_key=today)
        assert ok.success
        monkeypatch.setenv("DYNAMICS_PASSWORD", WRONG_PASSWORD)
        failed = job.execute_in_process(
            instance=instance, partition_key=today, raise_on_error=False
        )
        assert not failed.success
        for result in (ok, failed):
            run = result.dagster_run
            haystacks[f"run config {run.run_id}"] = json.dumps(run.run_config, default=str)
            haystacks[f"run tags {run.run_id}"] = json.dumps(run.tags, default=str)
            records = instance.all_logs(run.run_id)
            assert records
            haystacks[f"event log {run.run_id}"] = "\n".join(dg.serialize_value(r) for r in records)
        mats = ok.asset_materializations_for_node("dynamics_sync")
        assert mats
        haystacks["materialization metadata"] = "\n".join(dg.serialize_value(m) for m in mats)
    haystacks |= _store_bytes(db)
    assert _leaks(haystacks, _secrets(tiny)) == []


# ---- TLS -----------------------------------------------------------------------------------


def _wrong_ca(tmp: Path) -> str:
    path = tmp / "another-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(path))
    return str(path)


def test_tls_is_always_verified(
    tiny: Simulator, store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = _wrong_ca(tmp_path)
    # The usual ways to switch verification off or swap the trust store do nothing.
    for name, value in {
        "REQUESTS_CA_BUNDLE": str(tiny.ca_pem_path),
        "CURL_CA_BUNDLE": str(tiny.ca_pem_path),
        "SSL_CERT_FILE": str(tiny.ca_pem_path),
        "PYTHONHTTPSVERIFY": "0",
        "DYNAMICS_VERIFY": "false",
        "DYNAMICS_TLS_VERIFY": "0",
        "DYNSYNC_INSECURE": "1",
    }.items():
        monkeypatch.setenv(name, value)
    for ca in (wrong, None):  # another CA; the system store (which lacks the simulator's CA)
        conn = ConnectionSettings.from_env(tiny.env() | {"DYNAMICS_CA_BUNDLE": ca or ""})
        with fast_client(conn, attempts=2) as client, pytest.raises(DynamicsError) as err:
            run_cycle(conn, sync_settings(), store, client=client)
        message = str(err.value)
        assert "TLS verification failed" in message and "DYNAMICS_CA_BUNDLE" in message
    assert not [r for r in tiny.requests if r.path.startswith("/api/")], "no request got through"


def test_there_is_no_switch_to_turn_tls_verification_off() -> None:
    fields = set(ConnectionSettings.__dataclass_fields__)
    assert not {f for f in fields if re.search(r"verify|insecure|ssl|tls", f, re.I)}
    pattern = re.compile(
        r"verify\s*=\s*False|CERT_NONE|check_hostname\s*=\s*False|disable_warnings|"
        r"InsecureRequestWarning"
    )
    product = [p for p in (REPO / "dynsync_dagster").rglob("*.py") if "simulator" not in p.parts]
    assert product
    offenders = [str(p) for p in product if pattern.search(p.read_text())]
    assert offenders == []


# ---- identifiers and values ----------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [HOSTILE_NAME, "name; DROP TABLE contacts", 'a"b', "name--", "x" * 101, "1name"],
)
def test_hostile_field_names_are_refused_by_the_settings(name: str) -> None:
    with pytest.raises(SettingsError, match="logical names"):
        SyncSettings.from_mapping({"account_fields": ["name", name]})
    with pytest.raises(SettingsError, match="logical names"):
        SyncSettings.from_mapping({"contact_fields": [name]})


def test_hostile_field_names_never_reach_sql(tiny: Simulator, store: Path) -> None:
    cycle(tiny, store)
    before = canonical(store)
    contact = tiny.org.contacts_of(pick_sized(tiny, 9))[0]
    # Settings built in code skip the YAML checks: the metadata check still stops them.
    for account_fields in ((HOSTILE_NAME,), ("name", "drop_table_accounts")):
        hostile = SyncSettings(account_fields, ("firstname",), 5000)
        with pytest.raises((FieldSelectionError, ValueError)):
            cycle(tiny, store, hostile)
    with pytest.raises(FieldSelectionError):
        cycle(tiny, store, SyncSettings(("name",), (HOSTILE_NAME,), 5000))
    with pytest.raises(LocalEditError, match="not a synced account field"):
        set_account_field(store, contact, HOSTILE_NAME, "x")
    with pytest.raises(LocalEditError, match="not a GUID"):
        set_account_field(store, f"{contact}'; DROP TABLE contacts; --", "name", "x")
    assert canonical(store) == before


def test_hostile_values_are_data(tiny: Simulator, store: Path) -> None:
    cycle(tiny, store)
    account = pick_sized(tiny, 9)
    contact = tiny.org.contacts_of(account)[0]
    values = [
        "'); DROP TABLE contacts; --",
        "quote \" and \\ backslash and 'single'",
        "$1 ? %s {name} :name /* comment */ -- end",
        "NULL",
        "🚀 Zürich\n\ttab",
    ]
    for value in values:
        set_account_field(store, contact, "name", value)
        rows = activity_rows(store)
        assert rows[-1][2:] == ("name", rows[-1][3], value, "Local update")
        snap = canonical(store)
        names = {r for r in snap["contacts"] if value in r}
        assert len(names) == 9, value  # every contact of the account, exactly this text
    tiny.org.update_account(account, name=values[0], description=values[1])
    cycle(tiny, store)
    tables = canonical(store)
    assert len(tables["contacts"]) == len(tiny.org.contact_ids())
    assert len(tables["accounts"]) == len(tiny.org.account_ids())


# ---- files and sockets --------------------------------------------------------------------------


def test_store_is_readable_by_its_owner_only(tiny: Simulator, tmp_path: Path) -> None:
    store = tmp_path / "private" / "dynsync.duckdb"
    old = os.umask(0)  # even with a permissive umask
    try:
        cycle(tiny, store)
        set_account_field(store, tiny.org.contacts_of(pick_sized(tiny, 9))[0], "name", "x")
    finally:
        os.umask(old)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in store.parent.iterdir()}
    assert modes[store.name] == "0o600", modes
    assert all(m == "0o600" for n, m in modes.items() if n.startswith(store.name)), modes


def test_a_kept_stage_file_is_readable_by_its_owner_only(tiny: Simulator, tmp_path: Path) -> None:
    store = tmp_path / "private" / "dynsync.duckdb"
    with Zygote(tmp_path) as zygote:
        outcome = zygote.run(crash_job(tiny, store, sync_settings()), "FETCH", 0.01, nth=3)
    assert outcome.killed
    kept = [p for p in store.parent.iterdir() if ".stage" in p.name]
    assert kept, "no stage file was left to check"
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in kept}
    assert set(modes.values()) == {"0o600"}, modes


def _listening(pid: int) -> list[tuple[str, int]]:
    proc = psutil.Process(pid)
    return [
        (c.laddr.ip, c.laddr.port)
        for c in proc.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]


def test_servers_listen_on_loopback_only(tmp_path: Path) -> None:
    with Simulator(TINY, state_dir=tmp_path / "in-process") as sim:
        mine = [a for a in _listening(os.getpid()) if a[1] == sim.port]
        assert mine == [("127.0.0.1", sim.port)]
    state = tmp_path / "separate"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dynsync_dagster.simulator", "--port", "0", "--accounts", "5",
         "--contacts", "20", "--state-dir", str(state)],
        cwd=REPO, env=clean_env(tmp_path), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (state / "simulator.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        info = json.loads((state / "simulator.json").read_text())
        addresses = _listening(proc.pid)
        assert addresses and {ip for ip, _ in addresses} == {"127.0.0.1"}, addresses
        assert info["org_url"].startswith("https://127.0.0.1:")
    finally:
        proc.send_signal(signal.SIGTERM)  # our own child, by its id
        proc.wait(timeout=30)
