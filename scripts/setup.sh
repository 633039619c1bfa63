#!/usr/bin/env bash
# Install everything dynsync needs from a clean clone: uv (from PyPI), then the locked
# dependencies into .venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
  # Debian's own Python refuses pip installs outside a virtualenv (PEP 668): pipx then.
  python3 -m pip install --quiet "uv>=0.5" 2>/dev/null \
    || { command -v pipx >/dev/null 2>&1 && pipx install --quiet "uv>=0.5"; } \
    || { echo "setup.sh: could not install uv: pip refused (an externally managed Python?)" \
              "and pipx is missing; run 'sudo apt-get install pipx && pipx install uv'," \
              "or see https://docs.astral.sh/uv/, then run this again" >&2; exit 1; }
  export PATH="$HOME/.local/bin:$PATH"  # where pip --user and pipx put it
fi
# Compile bytecode at install: PYTHONDONTWRITEBYTECODE may be set (it is on our CI machines),
# and then every process would recompile Dagster, pandas and friends from source.
UV_COMPILE_BYTECODE=1 uv sync --frozen --quiet
