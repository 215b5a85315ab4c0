"""Smoke test of the performance suite (benchmarks/run.py) at tiny sizes: it runs end to end and writes
every figure to JSON. No timing is asserted; the ratios at these sizes mean nothing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_performance_suite_runs_at_tiny_sizes(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--device", "cpu",
                        "--json", str(tmp_path / "perf.json")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    data = json.loads((tmp_path / "perf.json").read_text())
    for key in ("matmul_flops", "forward_flops", "forward_s", "predictor_s", "segment_s", "segment_peak_gb",
                "batch_n_s", "batch_2n_s", "live_ms", "train_slices_s", "bare_train_slices_s"):
        assert math.isfinite(data[key]) and data[key] > 0, key
    assert len(data["rows"]) == 8 and all(math.isfinite(row["measured"]) for row in data["rows"])
    assert "Predictor / bare forward" in r.stdout
