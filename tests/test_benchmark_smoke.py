"""benchmarks/run.py runs end to end at a tiny size and writes every section (no timings)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from tests.support import REPO

SCRIPT = REPO / "benchmarks" / "run.py"

# The headings benchmarks/run.py writes, in order.
SECTIONS = (
    "## Machine",
    "## Data",
    "## Figures",
    "## Ratios",
    "## Targets",
    "## Peer (dlt)",
    "## Runs",
)
FIGURES = (
    "Simulator bare loop (ceiling)",
    "First full sync",
    "Incremental cycle, 1,000 accounts changed",
    "Fan-out: big account x 5 fields, limit raised (logged)",
    "Fan-out: big account x 5 fields, default limit (suppressed)",
    "Fan-out: mid account x 10 fields",
    "Local edit on the big account",
    "No-change cycle through Dagster",
    "First full sync, store 10x smaller",
    "Incremental cycle, 1,000 accounts, store 10x smaller",
)


def test_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    # Without the bench group the script must notice that dlt is missing and skip the peer.
    has_dlt = importlib.util.find_spec("dlt") is not None
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--accounts",
        "200",
        "--contacts",
        "2000",
        "--repeat",
        "1",
        "--results",
        str(results),
        "--work-dir",
        str(tmp_path / "work"),
    ]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert results.is_file(), proc.stdout[-3000:]

    text = results.read_text()
    positions = [text.find(heading) for heading in SECTIONS]
    missing = [s for s in SECTIONS if s not in text]
    assert not missing, f"missing sections: {missing}"
    assert positions == sorted(positions)
    assert "FAILED" not in text, text
    for title in FIGURES:
        row = next((line for line in text.splitlines() if line.startswith(f"| {title} |")), None)
        assert row is not None, f"no figure row for {title!r}"
        assert "not run" not in row, row
    # Every run against the simulator says how busy the simulator was meanwhile.
    runs = text[text.index("## Runs") :]
    cycle_rows = [r for r in runs.splitlines() if r.startswith("| Incremental cycle")]
    assert cycle_rows and all('"sim_cpu_s"' in r for r in cycle_rows), cycle_rows
    peer = text[text.index("## Peer (dlt)") : text.index("## Runs")]
    if has_dlt:
        assert "rows/s" in peer, peer
    else:
        assert "Not measured: skipped: dlt is not importable" in peer, peer
    assert "dlt" in text[text.index("## Machine") : text.index("## Data")]
