"""benchmarks/run.py rewrites only its own part of RESULTS.md: other scripts' sections stay."""

from __future__ import annotations

import sys

from tests.support import REPO

sys.path.insert(0, str(REPO / "benchmarks"))  # the benchmark's modules import each other flat

from report import keep_other_sections

PREVIOUS = """# dynsync benchmark results

Old figures, replaced.

<!-- postgres_publish:start -->
## Publishing to PostgreSQL

| a | b |
<!-- postgres_publish:end -->

<!-- first-copy:start -->
## First copy

- met
<!-- first-copy:end -->
"""


def test_other_scripts_sections_are_kept_in_order() -> None:
    out = keep_other_sections(PREVIOUS, "# dynsync benchmark results\n\nNew figures.\n")
    assert "Old figures" not in out
    assert out.startswith("# dynsync benchmark results\n\nNew figures.\n\n<!-- postgres_publish")
    pg = out.index("<!-- postgres_publish:start -->")
    fc = out.index("<!-- first-copy:start -->")
    assert pg < fc
    assert "| a | b |\n<!-- postgres_publish:end -->" in out
    assert out.endswith("- met\n<!-- first-copy:end -->\n")


def test_a_first_file_or_one_without_sections_is_just_ours() -> None:
    assert keep_other_sections(None, "ours\n") == "ours\n"
    assert keep_other_sections("# old\n\nno markers\n", "ours\n") == "ours\n"


def test_an_unclosed_marker_is_not_kept() -> None:
    # Half a section (a script killed while writing) is not carried over as if it were whole.
    assert keep_other_sections("<!-- first-copy:start -->\nhalf\n", "ours\n") == "ours\n"
