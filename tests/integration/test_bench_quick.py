"""`python -m scripts.bench --quick` end to end: every row is written with its target, and the run is correct
(0 lost updates, no errors anywhere). Timing targets are reported by the bench, never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.processes


def test_quick_bench_is_correct(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert (tmp_path / "bench.png").exists()
    assert report["correctness_failures"] == []
    assert report["figures"]["contended_patch"]["lost_updates"] == 0
    assert report["figures"]["contended_patch"]["statuses"] == {"200": 100}
    assert all(result["errors"] == 0 for result in report["figures"]["scale"])
    rows = {row["measure"]: row for row in report["rows"]}
    for name in (
        "cache-hit GET, 1 worker(s), req/s",
        "POST /sessions x16, req/s",
        "100 concurrent PATCHes, total time",
        "SSE burst 10000 via API",
        "lone SSE event, append -> client p99",
        "10 live runs: delivery p99",
        "agent-api --help: wall time",
    ):
        assert set(rows[name]) >= {"value", "baseline_value", "ratio", "target", "pass"}, name
    help_run = report["figures"]["cli_help"]["--help"]
    assert not help_run["started_servers"] and help_run["created_files"] == []
