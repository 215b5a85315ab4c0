"""Benchmark the viewer's default fine-tune (napari widget's Fine-tune) on a few corrected cases.

Builds a dataset of ``--cases`` phantoms the size of clinical CT (512 x 512 x ``--slices``), then
runs ``medseg_napari._finetune.fine_tune_job`` with its defaults from the bundled model, on the
CPU, as the widget does. Prints the wall time against the "a few minutes" target (ratio <= 1
meets it) and how good the first time-left estimate was.

    python benchmarks/bench_finetune.py [--cases 3] [--slices 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 300.0  # "a few minutes" on 2 CPU cores


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from medseg.bundle import default_bundle_path
    from medseg.phantom import make_dataset
    from medseg_napari._finetune import DEFAULT_EPOCHS, DEFAULT_STEPS, fine_tune_job

    with tempfile.TemporaryDirectory(prefix="medseg-bench-ft-") as tmp:
        ds = make_dataset(Path(tmp) / "ds", list(range(900, 900 + args.cases)), shape=(512, 512, args.slices),
                          spacing=(0.75, 0.75, 2.5))
        first_eta: list = []

        def report(status) -> None:
            if status.phase == "training" and status.epoch == 1 and status.step == 2 and status.seconds_left:
                first_eta.append((time.monotonic() - t0, status.seconds_left))

        t0 = time.monotonic()
        result = fine_tune_job(ds, Path(tmp) / "run", str(default_bundle_path()), DEFAULT_EPOCHS, DEFAULT_STEPS,
                               args.device, report=report)
        wall = time.monotonic() - t0
    print(f"fine-tune defaults ({DEFAULT_EPOCHS} epochs x {DEFAULT_STEPS} steps), {args.cases} cases of "
          f"512x512x{args.slices}, {args.device}")
    print(f"  wall time      {wall:7.1f} s   target {TARGET_SECONDS:.0f} s   ratio {wall / TARGET_SECONDS:.2f}")
    if first_eta:
        at, left = first_eta[0]
        print(f"  time left said at {at:.0f} s: {left:.0f} s -> end at {at + left:.0f} s (actual {wall:.0f} s)")
    print(f"  {result.summary}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
