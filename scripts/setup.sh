#!/usr/bin/env bash
# Install everything dynsync needs from a clean clone: uv (from PyPI), then the locked
# dependencies into .venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet "uv>=0.5"
fi
# Compile bytecode at install: PYTHONDONTWRITEBYTECODE may be set (it is on our CI machines),
# and then every process would recompile Dagster, pandas and friends from source.
UV_COMPILE_BYTECODE=1 uv sync --frozen --quiet
