"""A throwaway PostgreSQL server on a loopback port: for the tests and `dynsync dev --postgres`.

It runs Debian's PostgreSQL binaries (`scripts/install-postgres.sh` installs them) from a data
folder of its own, listens on 127.0.0.1 only, and requires a password (SCRAM), generated per
server and handed out only through the environment variables it returns, the way a team's
deployment would pass Dagster its DAGSTER_PG_* settings. PostgreSQL refuses to run as root:
as root it runs as the unprivileged `nobody`, which then owns the data folder.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

HOST = "127.0.0.1"
SUPERUSER = "dynsync"
DATABASE = "dagster"


class PostgresError(RuntimeError):
    """The server could not be set up or started; the message says what to install or check."""


def bin_dir() -> Path:
    """Where the server binaries are: Debian keeps them out of PATH, under a versioned folder."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), reverse=True)
    if versions:
        return versions[0].parent
    raise PostgresError(
        "PostgreSQL is not installed: run `bash scripts/install-postgres.sh` (Debian's "
        "postgresql package), or put pg_ctl and initdb on PATH"
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class ThrowawayPostgres:
    """`with ThrowawayPostgres() as pg: pg.env()`: a fresh server, stopped and removed on exit.

    Its folder is a new temporary one: as root the server runs as `nobody`, which must be able
    to reach it (a test's tmp_path sits under a folder only root may enter).
    """

    def __init__(self, port: int | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="dynsync-postgres-")).resolve()
        self.data = self.folder / "data"
        self.port = port or _free_port()
        self.password = secrets.token_urlsafe(24)
        self._bin = bin_dir()
        self._as_nobody = os.geteuid() == 0

    def env(self) -> dict[str, str]:
        """The DAGSTER_PG_* variables Dagster's PostgreSQL storage reads (README)."""
        return {
            "DAGSTER_PG_HOST": HOST,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USERNAME": SUPERUSER,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": DATABASE,
        }

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@{HOST}:{self.port}/{database}"

    def start(self) -> ThrowawayPostgres:
        self._init_cluster()
        self._run(
            "pg_ctl", "start", "--wait", "--timeout=60", "-D", str(self.data),
            "-l", str(self.folder / "server.log"),
            "-o", f"-c listen_addresses={HOST} -p {self.port} -k {self.folder} -c fsync=off",
        )  # fmt: skip
        self._run("createdb", "-h", HOST, "-p", str(self.port), "-U", SUPERUSER, DATABASE)
        return self

    def stop(self) -> None:
        """Stop the server (fast: open connections are cut) and remove its folder."""
        try:
            if (self.data / "postmaster.pid").exists():
                with contextlib.suppress(PostgresError):
                    self._run(
                        "pg_ctl", "stop", "--wait", "--timeout=30", "-m", "fast", "-D", str(self.data)
                    )  # fmt: skip
        finally:  # even when a second Ctrl-C cuts the wait short
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _init_cluster(self) -> None:
        secret = self.folder / "pwfile"
        secret.write_text(self.password + "\n")
        secret.chmod(0o600)
        if self._as_nobody:
            nobody = pwd.getpwnam("nobody")
            for path in (self.folder, secret):
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
        try:
            self._run(
                "initdb", "-D", str(self.data), "-U", SUPERUSER, f"--pwfile={secret}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8",
            )  # fmt: skip
        finally:
            secret.unlink()

    def _run(self, tool: str, *args: str) -> None:
        command: Sequence[str] = [str(self._bin / tool), *args]
        if self._as_nobody:
            command = ["runuser", "-u", "nobody", "--", *command]
        env = {**os.environ, "PGPASSWORD": self.password, "LC_ALL": "C.UTF-8"}
        # A session of its own, like the server's: a Ctrl-C at the terminal reaches the caller
        # (which then stops the server) and does not abort initdb or pg_ctl half way.
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            cwd=self.folder,
            start_new_session=True,
        )
        if done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise PostgresError(
                f"{tool} failed ({done.returncode}): {done.stderr.strip()[-800:]}\n{tail}"
            )
