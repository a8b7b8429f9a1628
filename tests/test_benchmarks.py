"""Smoke runs of the issue-20 benchmark scripts, in-process at tiny sizes: they run and print their tables."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, args: list[str], monkeypatch, capsys) -> list[list[str]]:
    """Run ``benchmarks/name`` with ``args`` and return the Markdown table's body rows."""
    monkeypatch.setattr(sys, "argv", [name, "--markdown", *args])
    runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert len(lines) >= 3 and set(lines[1]) <= {"|", "-"}
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def test_staged_vs_greedy_prints_ratios(monkeypatch, capsys):
    rows = run_script("staged_vs_greedy.py", ["--parts", "hierarchical,means", "--sizes", "300",
                                              "--means-sizes", "200"], monkeypatch, capsys)
    assert [row[1] for row in rows] == ["300", "200", "200"]
    for row in rows:
        assert 0.5 < float(row[3]) < 2.0  # staged over greedy error: a ratio near 1
    assert rows[1][5].startswith("greedy ") and "staged" in rows[1][5]


def test_common_direction_times_both_inputs(monkeypatch, capsys):
    rows = run_script("common_direction.py", ["--sizes", "150"], monkeypatch, capsys)
    assert [row[1] for row in rows] == ["256", "64"]  # the default eager_rebuilds, then 64
    for row in rows:
        assert float(row[2]) > 0 and float(row[3]) > 0 and float(row[4]) > 0
        assert float(row[6]) > float(row[5]) > 0  # the common direction leaves more error


def test_neighbour_rules_compare_both_rules(monkeypatch, capsys):
    rows = run_script("neighbour_rules.py", ["--sizes", "200,300", "--large", "300"], monkeypatch, capsys)
    assert len(rows) == 2 + 2 + 2 * 3 + 1  # hierarchical (300 staged too), two Laplacians, class means, large
    for row in rows:
        assert float(row[4]) == pytest.approx(float(row[3]) / float(row[2]), rel=2e-3, abs=2e-3)
