"""Smoke test of the correction-efficiency benchmark (benchmarks/bench_correction.py --quick)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.slow
def test_quick_benchmark_runs_every_strategy_and_writes_table_json_and_plot(tmp_path, capsys):
    sys.path.insert(0, str(BENCH))
    try:
        import bench_correction
    finally:
        sys.path.remove(str(BENCH))
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    argv = ["--quick", "--ks", "1", "2", "--strategies", "worst-first", "random", "--json", str(out_json),
            "--png", str(out_png)]
    assert bench_correction.main(argv) == 0
    saved = json.loads(out_json.read_text())
    assert saved["complete"] and saved["ignore"] == 6
    runs = {(r["strategy"], r["k"]) for r in saved["runs"]}
    assert runs == {("none", 0), ("full", 24)} | {(s, k) for s in ("worst-first", "random") for k in (1, 2)}
    for run in saved["runs"]:
        if run["strategy"] not in ("none", "full"):
            assert len(run["slices"]) == run["k"]
            assert 0.0 <= run["mean_dice"] <= 1.0 and run["cpu_s"] > 0
    worst = {r["k"]: set(r["slices"]) for r in saved["runs"] if r["strategy"] == "worst-first"}
    assert worst[1] < worst[2]  # worst first: the k = 2 choice starts with the k = 1 one
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "of full" in printed and "worst-first" in printed and "CPU min" in printed
