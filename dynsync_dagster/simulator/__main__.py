"""`python -m dynsync_dagster.simulator`: run the simulator until Ctrl-C / SIGTERM."""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path

from .generator import DatasetSpec
from .simulator import ADMIN_KEY_FILE, Simulator


def _parser(prog: str = "python -m dynsync_dagster.simulator") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Serve a simulated Dynamics 365 org (Web API + Entra ID) over HTTPS.",
    )
    parser.add_argument("--port", type=int, default=8443, help="port on 127.0.0.1 (0: any free)")
    parser.add_argument("--accounts", type=int, default=50)
    parser.add_argument("--contacts", type=int, default=500)
    parser.add_argument(
        "--sized-accounts",
        default="",
        help='contact counts of the first accounts, e.g. "5000,5001"',
    )
    parser.add_argument("--orphan-contacts", type=int, default=0)
    parser.add_argument("--contact-parented-contacts", type=int, default=0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--history-days", type=int, default=30)
    parser.add_argument(
        "--sync-filter",
        type=float,
        metavar="SHARE",
        help="give accounts and contacts Marketo's sync filter column new_synctomkto, with "
        "this share of records set to No (e.g. 0.05), as many to Yes, the rest empty",
    )
    parser.add_argument("--state-dir", default=".dynsync-sim")
    parser.add_argument(
        "--trickle-per-minute",
        type=float,
        default=0,
        help="random account/contact updates per minute (for live demos)",
    )
    parser.add_argument("--token-lifetime", type=float, default=3599, help="seconds")
    parser.add_argument("--max-page-size", type=int, default=5000)
    parser.add_argument("--sync-user-is-admin", action="store_true")
    parser.add_argument(
        "--sync-user-cannot-read-roles",
        action="store_true",
        help="the sync user lacks prvReadRole: reading its security roles answers 403",
    )
    parser.add_argument(
        "--sync-user-cannot-read-users",
        action="store_true",
        help="the sync user lacks prvReadUser: its systemuser row and column privileges are 403",
    )
    parser.add_argument(
        "--realistic-limits",
        action="store_true",
        help="model a real org's service protection: each request costs server time by the "
        "rows and columns it returns (a 5,000-row page about 1-1.5 s) and is held that long; "
        "per user per 300 s: 6,000 requests, 1,200 s of execution time, 52 at once; beyond "
        "them 429 with the documented code and Retry-After (default: off, as fast as it can)",
    )
    parser.add_argument(
        "--clock-speed",
        type=_clock_speed,
        default=1.0,
        metavar="N",
        help="service protection's clock runs N times real time: at 20 a 1 s request holds "
        "0.05 s and the 300 s window passes in 15 s; Retry-After stays in real seconds "
        "(default 1)",
    )
    parser.add_argument(
        "--server-time-scale",
        type=_server_time_scale,
        default=1.0,
        metavar="F",
        help="with --realistic-limits: every request costs F times the default server time, "
        "an org with wide rows, plugins or a busy server (a scale model: at F=12 a copy of "
        "1M contacts costs several 300 s windows' budget; default 1)",
    )
    return parser


def _clock_speed(text: str) -> float:
    try:
        speed = float(text)
    except ValueError:
        speed = 0.0
    if not 0 < speed < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0 (1 is real time), got {text!r}")
    return speed


def _server_time_scale(text: str) -> float:
    try:
        scale = float(text)
    except ValueError:
        scale = 0.0
    if not 0 < scale < float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be a number above 0 (1 is the default cost), got {text!r}"
        )
    return scale


def _sized(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise SystemExit(
            f"--sized-accounts must be comma-separated integers, got {text!r}"
        ) from None


def write_state(sim: Simulator) -> tuple[Path, Path]:
    """env.sh (exports) and simulator.json (how other processes find this simulator)."""
    env_path = sim.state_dir / "env.sh"
    lines = [f"export {k}={shlex.quote(v)}" for k, v in sim.env("client_credentials").items()]
    lines += [
        f"# ROPC instead: export DYNAMICS_USERNAME={shlex.quote(sim.username)} "
        f"DYNAMICS_PASSWORD={shlex.quote(sim.password)}"
    ]
    env_path.write_text("\n".join(lines) + "\n")
    info = {
        "port": sim.port,
        "pid": os.getpid(),
        "org_url": sim.org_url,
        "authority_host": sim.authority_host,
        "admin_key_path": str((sim.state_dir / ADMIN_KEY_FILE).resolve()),
        "ca_pem_path": str(Path(sim.ca_pem_path).resolve()),
        "env": sim.env("ropc"),
    }
    json_path = sim.state_dir / "simulator.json"
    json_path.write_text(json.dumps(info, indent=2) + "\n")
    return env_path, json_path


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = _parser(prog) if prog else _parser()
    args = parser.parse_args(argv)
    spec = _spec(args)
    try:
        spec.validate()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.server_time_scale != 1.0 and not args.realistic_limits:
        print("error: --server-time-scale needs --realistic-limits", file=sys.stderr)
        return 2
    # This process is a server holding millions of long-lived rows: collect garbage cycles
    # rarely, since each pass walks every young container and page serving makes many.
    gc.set_threshold(50_000, 20, 20)
    started = time.monotonic()
    print(f"generating {spec.accounts:,} accounts and {spec.contacts:,} contacts…", flush=True)
    sim = Simulator(
        spec,
        # Absolute, so every path it prints (DYNAMICS_CA_BUNDLE, env.sh, the admin key) works
        # from any directory.
        state_dir=Path(args.state_dir).resolve(),
        port=args.port,
        token_lifetime_s=args.token_lifetime,
        max_page_size=args.max_page_size,
        sync_user_is_admin=args.sync_user_is_admin,
        sync_user_can_read_roles=not args.sync_user_cannot_read_roles,
        sync_user_can_read_users=not args.sync_user_cannot_read_users,
        trickle_per_minute=args.trickle_per_minute,
        realistic_limits=args.realistic_limits,
        clock_speed=args.clock_speed,
        server_time_scale=args.server_time_scale,
    )
    try:
        sim.start()
    except OSError as exc:
        print(
            f"error: cannot listen on 127.0.0.1:{args.port}: {exc}; try --port 0", file=sys.stderr
        )
        return 1
    env_path, json_path = write_state(sim)
    print(f"simulator ready in {time.monotonic() - started:.1f}s at {sim.org_url}", flush=True)
    _print_how_to_connect(sim, env_path, json_path)
    _serve_until_stopped(sim)
    return 0


def _spec(args: argparse.Namespace) -> DatasetSpec:
    return DatasetSpec(
        accounts=args.accounts,
        contacts=args.contacts,
        sized_accounts=_sized(args.sized_accounts),
        orphan_contacts=args.orphan_contacts,
        contact_parented_contacts=args.contact_parented_contacts,
        seed=args.seed,
        history_days=args.history_days,
        sync_filter_no_share=args.sync_filter,
    )


def _print_how_to_connect(sim: Simulator, env_path: Path, json_path: Path) -> None:
    for key, value in sim.env("client_credentials").items():
        print(f"export {key}={shlex.quote(value)}")
    print(
        f"# for the ROPC flow also: export DYNAMICS_USERNAME={shlex.quote(sim.username)} "
        f"DYNAMICS_PASSWORD={shlex.quote(sim.password)}"
    )
    print(f"# the same exports are in {env_path}; details in {json_path}")
    print(f"# admin API key: {sim.state_dir / ADMIN_KEY_FILE}; Ctrl-C stops", flush=True)


def _serve_until_stopped(sim: Simulator) -> None:
    """Serve until Ctrl-C or SIGTERM, then stop the simulator."""
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sim.stop()
        print("simulator stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
