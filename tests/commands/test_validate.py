"""`dynsync validate` agrees with `sync`: what a sync leaves out and goes on without is a
warning, what stops a sync is a failure, and every failure says what to check."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from dynsync_dagster.commands.validate import render, validate
from dynsync_dagster.simulator import Simulator
from tests.support import REPO, SMALL, clean_env, closed_port, run_cli

# Phrases of a sync's errors that mean nothing to a checklist that writes nothing.
SYNC_ONLY = ("nothing was written", "retry the cycle")


def _env(sim: Simulator, tmp_path: Path, flow: str = "ropc") -> dict[str, str]:
    env = clean_env(tmp_path) | sim.env(flow=flow)
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    env["DYNSYNC_CONFIG"] = str(REPO / "dynsync.yaml")
    return env


def _marks(out: str) -> dict[str, str]:
    """Each check's name -> its mark (ok, WARN, FAIL)."""
    marks = {}
    for line in out.splitlines():
        if line.startswith("["):
            mark, _, rest = line[1:].partition("] ")
            marks[rest.partition(":")[0]] = mark.strip()
    return marks


def test_the_shipped_settings_validate_green_on_the_simulator(
    sim: Simulator, tmp_path: Path
) -> None:
    result = run_cli(["validate"], _env(sim, tmp_path), REPO, timeout=120)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    marks = _marks(out)
    assert "FAIL" not in marks.values(), out
    # dynsync.yaml selects creditonhold, which the simulator's sync user may not read: a sync
    # leaves it out, so validate warns, with the fix.
    assert marks["selected fields readable"] == "WARN"
    readable = next(line for line in out.splitlines() if "selected fields readable" in line)
    assert "account.creditonhold" in readable
    assert "field security profile" in readable and "account_fields" in readable
    assert marks["selected fields exist"] == "ok"
    assert out.rstrip().endswith("all checks passed, with 1 warning(s) to look at")
    # The sync user by name, not only its GUID.
    signed_in = next(line for line in out.splitlines() if "credentials and URL" in line)
    assert "the sync user is Dynsync Sync User <" in signed_in, signed_in
    assert "user id " in signed_in
    # SMALL has no sync filter column: validate says every record syncs.
    filter_line = next(line for line in out.splitlines() if "sync filter" in line)
    assert "no new_synctomkto column" in filter_line and "every record syncs" in filter_line


def test_validate_names_the_sync_filter_where_the_org_has_it(tmp_path: Path) -> None:
    spec = replace(SMALL, sync_filter_no_share=0.1)
    with Simulator(spec, state_dir=tmp_path / "sim") as sim:
        result = run_cli(["validate"], _env(sim, tmp_path), REPO, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if "sync filter" in x)
    assert "account.new_synctomkto, contact.new_synctomkto decides per record" in line


def test_a_misspelt_field_fails_and_says_what_to_fix(sim: Simulator, tmp_path: Path) -> None:
    config = tmp_path / "dynsync.yaml"
    config.write_text("account_fields: [name, industrycod]\ncontact_fields: [firstname]\n")
    env = _env(sim, tmp_path) | {"DYNSYNC_CONFIG": str(config)}
    result = run_cli(["validate"], env, REPO, timeout=120)
    assert result.returncode == 1
    failed = next(line for line in result.stdout.splitlines() if line.startswith("[FAIL]"))
    assert failed.startswith("[FAIL] selected fields exist: ")
    assert "industrycod (did you mean industrycode?)" in failed
    assert str(config) in failed and "dynsync validate" in failed
    assert not any(p in result.stdout.lower() for p in SYNC_ONLY), result.stdout


def test_a_minimal_sync_role_warns_as_a_sync_does(tmp_path: Path) -> None:
    """No prvReadRole and no prvReadUser: a sync goes on without the secured fields, so
    validate passes with warnings, and shows the GUID where it cannot read the user's name."""
    with Simulator(
        SMALL,
        state_dir=tmp_path / "sim",
        sync_user_can_read_roles=False,
        sync_user_can_read_users=False,
    ) as sim:
        checks = validate(sim.env(flow="client_credentials"), str(REPO / "dynsync.yaml"))
        user_id = sim.org.app_user_id
    out = render(checks)
    assert all(c.ok for c in checks), out
    marks = _marks(out)
    assert marks["sync user's roles"] == "WARN" and "prvReadRole" in out
    assert marks["sync user's access"] == "WARN" and "prvReadUser" in out
    # Warned once, under the roles: not again among the access warnings of the field check.
    access = [c.detail for c in checks if c.name == "sync user's access"]
    assert access and not any("security roles" in d for d in access)
    assert f"the sync user is {user_id} (organisation" in out
    readable = next(c for c in checks if c.name == "selected fields readable")
    assert (
        readable.warning and "creditlimit" in readable.detail and "creditonhold" in readable.detail
    )


def test_an_unreachable_org_says_what_to_check(tmp_path: Path, sim: Simulator) -> None:
    env = sim.env(flow="client_credentials")
    closed = f"https://127.0.0.1:{closed_port()}"
    env |= {"DYNAMICS_URL": closed, "DYNAMICS_AUTHORITY_HOST": closed}
    checks = validate(env, str(REPO / "dynsync.yaml"))
    out = render(checks)
    failed = [c for c in checks if not c.ok]
    assert [c.name for c in failed] == ["credentials and URL"], out
    detail = failed[0].detail
    # What failed (the authority did not answer), what to check, and the next step.
    assert "cannot reach the authority" in detail and "DYNAMICS_AUTHORITY_HOST" in detail
    assert detail.endswith("then run `dynsync validate` again")
    assert not any(p in out.lower() for p in SYNC_ONLY), out
