"""A sync process never imports pandas: 50 MB of every cycle's memory for nothing.

pyarrow's pa.array and pa.table import pandas to look at their input, so the stage builds its
Arrow tables without them (stage.py). Checked in a process of its own, where no test has
imported pandas first, through a full read and a delta read that brings a deletion.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dynsync_dagster.simulator import Simulator
from tests.support import REPO, clean_env

CYCLE = """
import sys
from pathlib import Path

from dynsync_dagster.settings import ConnectionSettings, SyncSettings
from dynsync_dagster.sync.cycle import CycleOptions, run_cycle

r = run_cycle(ConnectionSettings.from_env(), SyncSettings.load(), Path(sys.argv[1]), CycleOptions())
print(r.modes["contact"], r.deletions_read["contact"], "pandas" in sys.modules)
"""


def test_a_cycle_never_imports_pandas(sim: Simulator, tmp_path: Path) -> None:
    env = {**clean_env(tmp_path), **sim.env()}
    db = tmp_path / "store" / "dynsync.duckdb"

    def cycle() -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", CYCLE, str(db)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.split()

    assert cycle() == ["full", "0", "False"]
    account = next(a for a in sim.org.account_ids() if sim.org.contacts_of(a))
    sim.org.delete_contact(sim.org.contacts_of(account)[0])
    assert cycle() == ["delta", "1", "False"]
