"""The benchmarks still run (they print figures; timings are never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_analysis_benchmark_smoke_mode_runs_and_recovers_the_known_groups():
    result = run("bench/analysis.py", "--smoke")
    assert result.returncode == 0, result.stderr[-2000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("| 1,000 x 100"))
    k_ari = [cell.strip() for cell in row.split("|")][11]  # "3 / 0.92": groups / ARI
    groups, ari = (part.strip() for part in k_ari.split("/"))
    assert int(groups) >= 2 and float(ari) > 0.5, row


def test_exports_benchmark_runs_on_a_small_round():
    result = run("bench/exports.py", "--participants", "300", "--statements", "20", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    start = result.stdout.index("{") if "{" in result.stdout else result.stdout.index("[")
    figures = json.loads(result.stdout[start:])
    assert figures["shape"]["votes"] == 300 * 20 // 2  # half of the statements voted on
    files = {r["file"]: r for r in figures["results"]}
    assert set(files) == {"votes.csv", "participants-votes.csv"}
    assert all(r["output_mb"] >= 0 and r["peak_mb"] > 0 for r in files.values())
