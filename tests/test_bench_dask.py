"""Smoke test of benchmarks/dask_scaling.py: the dense ``--quick`` rows on 1 and 2 workers, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")
pytest.importorskip("scipy")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "dask_scaling.py"


def test_dask_scaling_quick_dense(tmp_path):
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--markdown", "--only", "dense", "--workers", "1,2",
         "--tmpdir", str(tmp_path), "--timeout", "150"],
        capture_output=True, text=True, timeout=240, check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(SCRIPT.parents[1]),
                                                                         os.environ.get("PYTHONPATH")]))},
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| dense | 1500 |")]
    assert [row[3] for row in rows] == ["local staged", "dask 1 worker", "dask 2 workers"], out
    assert [row[7] for row in rows[1:]] == ["yes", "yes"], out  # bit-identical to the local engine
    assert all(float(row[4]) > 0 for row in rows), out
    assert out.count("Per stage, dense m=1500") == 2, out
    assert "a MODEL, NOT A MEASUREMENT" in out and "target: 1 worker at most 1.15x local" in out, out
    assert not list(tmp_path.iterdir())  # the Zarr input was removed
