"""benchmarks/first_copy.py runs end to end at a tiny size (no timings asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import REPO

SCRIPT = REPO / "benchmarks" / "first_copy.py"


def test_first_copy_benchmark_runs_at_a_tiny_size(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# results\n\nkept\n")
    cmd = [sys.executable, str(SCRIPT), "--contacts", "3000", "--clock-speed", "50"]
    proc = subprocess.run(
        [*cmd, "--results", str(results)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = results.read_text()
    assert text.startswith("# results\n\nkept\n")  # the rest of the file stays
    assert "<!-- first-copy:start -->" in text and "<!-- first-copy:end -->" in text
    assert "- zero failed cycles: met" in text
    assert "- every 429 honoured: met" in text
    assert "| Sequential pager (one page at a time, nextLink) |" in text
    # A second run replaces its section instead of adding another.
    subprocess.run(
        [*cmd, "--results", str(results)], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert results.read_text().count("<!-- first-copy:start -->") == 1
