"""Reader processes for test_readers.py, as analysts' tools open the published store.

python -m tests.store.readers hold PATH read_only|read_write
    opens PATH once and keeps it open; each `query` line on stdin prints what it sees (one
    JSON line), `exit` ends it: a notebook, the DuckDB CLI or a BI tool left open.
python -m tests.store.readers flicker PATH STOPFILE
    opens, queries and closes PATH every few milliseconds until STOPFILE exists, then
    prints one JSON summary: dashboards that reconnect for every query.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import duckdb

# Every contact of a live account carries that account's name (no local edits in these tests).
MISMATCHES = """
SELECT count(*) FROM contacts c JOIN accounts a ON a.accountid = c.accountid
WHERE NOT c.is_deleted AND NOT a.is_deleted AND c.account_name IS DISTINCT FROM a.name
"""
# One committed state: its generation and what it holds. Two samples of the same generation
# that differ here would be a half-applied cycle.
SIGNATURE = """
SELECT (SELECT max(generation) FROM store_version),
       (SELECT count(*) FROM activity_log),
       (SELECT string_agg(name, '|' ORDER BY accountid) FROM accounts),
       (SELECT count(*) FROM contacts)
"""


def hold(path: str, mode: str) -> int:
    con = duckdb.connect(path, read_only=mode == "read_only")
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        if line.strip() == "exit":
            break
        try:
            generation, activities, _names, contacts = con.execute(SIGNATURE).fetchone()
            print(
                json.dumps(
                    {"ok": True, "generation": generation, "activities": activities,
                     "contacts": contacts}
                ),
                flush=True,
            )  # fmt: skip
        except duckdb.Error as exc:
            print(json.dumps({"ok": False, "error": str(exc)}), flush=True)
    con.close()
    return 0


def flicker(path: str, stop_file: str) -> int:
    samples, errors, mismatched = 0, [], 0
    signatures: dict[str, set[str]] = {}
    while not Path(stop_file).exists():
        try:
            with duckdb.connect(path, read_only=True) as con:
                mismatched += con.execute(MISMATCHES).fetchone()[0]
                generation, *rest = con.execute(SIGNATURE).fetchone()
            signatures.setdefault(str(generation), set()).add(json.dumps(rest))
            samples += 1
        except duckdb.Error as exc:
            errors.append(str(exc))
        time.sleep(0.003)
    summary = {
        "samples": samples,
        "errors": errors[:5],
        "error_count": len(errors),
        "mismatched_contacts": mismatched,
        "signatures": {g: len(s) for g, s in signatures.items()},
    }
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    sys.exit(hold(*args) if command == "hold" else flicker(*args))
