#!/usr/bin/env bash
# Install everything dynsync needs from a clean clone: uv (from PyPI), then the locked
# dependencies into .venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install --quiet "uv>=0.5"
fi
uv sync --frozen --quiet
