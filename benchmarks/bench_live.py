"""Benchmark live single-slice prediction (``Predictor.predict_slice``) on a 512 x 512 CT phantom.

Times ``predict_slice`` on ~30 display axial slices after one warm-up, prints the median and
95th-percentile latency against the 100 ms target (ratio <= 1 meets it), and checks that every
timed slice equals the same slice of the full run (``predict_scan``).

    python benchmarks/bench_live.py [--shape 512 512 60] [--slices 30] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medseg.geometry import to_display
from medseg.inference import Predictor
from medseg.io import Scan
from medseg.phantom import make_phantom

TARGET_MS = 100.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 60))
    ap.add_argument("--spacing", type=float, nargs=3, default=(0.75, 0.75, 3.0))
    ap.add_argument("--slices", type=int, default=30)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(min(torch.get_num_threads(), cores))  # under taskset: one thread per core given

    ph = make_phantom(args.seed, shape=tuple(args.shape), spacing=tuple(args.spacing))
    scan = Scan(ph.image, ph.affine, Path("phantom.nii.gz"), modality="CT")
    predictor = Predictor.from_folder(None, args.device)
    depth = scan.shape[2]
    ks = np.unique(np.linspace(0, depth - 1, min(args.slices, depth)).round().astype(int))

    t0 = time.perf_counter()
    live = predictor.prepare_live(scan)
    prepare_ms = (time.perf_counter() - t0) * 1e3
    predictor.predict_slice(scan, int(ks[len(ks) // 2]), cache=live)  # warm-up
    times, got = [], {}
    for k in ks:
        t0 = time.perf_counter()
        got[int(k)] = predictor.predict_slice(scan, int(k), cache=live)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    t0 = time.perf_counter()
    full, _ = to_display(predictor.predict_scan(scan), scan.affine)
    full_s = time.perf_counter() - t0
    wrong = [k for k in got if not np.array_equal(got[k], full[k])]

    median, p95 = float(np.median(times)), float(np.percentile(times, 95))
    print(f"live slice prediction, {'x'.join(map(str, args.shape))} CT phantom on {predictor.device}, "
          f"{torch.get_num_threads()} threads, {len(ks)} slices")
    print(f"  prepare_live      {prepare_ms:8.1f} ms (once per scan)")
    print(f"  median latency    {median:8.1f} ms   target {TARGET_MS:.0f} ms   ratio {median / TARGET_MS:.2f}")
    print(f"  p95 latency       {p95:8.1f} ms   target {TARGET_MS:.0f} ms   ratio {p95 / TARGET_MS:.2f}")
    print(f"  max latency       {max(times):8.1f} ms")
    print(f"  full run          {full_s:8.1f} s ({full_s / depth * 1e3:.1f} ms per slice)")
    print(f"  equal to the full run on {len(got) - len(wrong)}/{len(got)} slices"
          + (f"; differ: {wrong}" if wrong else ""))
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
