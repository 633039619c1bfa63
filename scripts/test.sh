#!/usr/bin/env bash
# The test command: set up from a clean clone, lint, run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install-browser.sh   # Debian's Chromium for the one real-browser test
bash scripts/install-postgres.sh  # Debian's PostgreSQL for the tests of a team's setup
uv run --frozen ruff check .
uv run --frozen pytest -q "$@"
