#!/usr/bin/env bash
# Install Debian's PostgreSQL server binaries, for the tests and `dynsync dev --postgres`
# (both start a throwaway server of their own: dynsync_dagster/commands/postgres.py). Safe to
# run again: does nothing when initdb is already there. Needs root (CI runs as root) or sudo.
set -euo pipefail

have_initdb() {
  command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

if have_initdb; then
  echo "postgresql already installed: $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | head -1)"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-postgres.sh: apt-get not found; install PostgreSQL so that initdb exists" >&2
  exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo"
  else
    echo "install-postgres.sh: run as root (or install sudo) to apt-get install postgresql" >&2
    exit 1
  fi
fi

# Only the binaries: no system-wide cluster left running on port 5432.
$SUDO mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" | $SUDO tee /etc/postgresql-common/createcluster.d/dynsync.conf >/dev/null
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends postgresql

if ! have_initdb; then
  echo "install-postgres.sh: postgresql installed but initdb is missing" >&2
  exit 1
fi
echo "postgresql installed: $(ls -d /usr/lib/postgresql/*/bin | head -1)"
