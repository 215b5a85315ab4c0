"""Benchmark `medseg segment` on a CT-sized phantom (512 x 512 x 300) with the bundled model.

Runs the real command line in a child process and prints one table: wall seconds and peak
resident memory of the child, the targets, and their ratios (measured / target; <= 1 meets it).

    python benchmarks/bench_segment.py [--shape 512 512 300] [--device auto] [--keep DIR]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from rich.console import Console
from rich.table import Table

from medseg.metrics import dice_per_label
from medseg.phantom import LABELS, make_phantom, write_nifti

TARGET_SECONDS = 30.0
TARGET_PEAK_GB = 1.5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    ap.add_argument("--spacing", type=float, nargs=3, default=(0.75, 0.75, 1.0))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--model", default=None)
    ap.add_argument("--keep", type=Path, default=None, help="keep the phantom and mask in this folder")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="medseg-bench-")) if args.keep is None else args.keep
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ph = make_phantom(1234, shape=tuple(args.shape), spacing=tuple(args.spacing))
    scan = work / "ct.nii.gz"
    write_nifti(ph, scan, work / "ct_labels.nii.gz")
    gen_s = time.perf_counter() - t0

    cmd = [sys.executable, "-m", "medseg.cli", "segment", str(scan), "-o", str(work / "mask.nii.gz"),
           "--device", args.device]
    if args.model:
        cmd += ["--model", args.model]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    peak_gb = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024**2  # ru_maxrss is KiB
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        return proc.returncode

    labels = np.asanyarray(nib.load(str(work / "mask.nii.gz")).dataobj)
    dice = dice_per_label(labels, ph.labels, LABELS)
    del ph

    console = Console()
    console.print(proc.stdout)
    console.print(proc.stderr.strip())
    table = Table(title=f"medseg segment, {'x'.join(map(str, args.shape))} CT phantom "
                        f"({' x '.join(map(str, args.spacing))} mm), generated in {gen_s:.0f} s")
    for col in ("metric", "measured", "target", "ratio"):
        table.add_column(col, justify="right" if col != "metric" else "left")
    table.add_row("wall time (s), load + segment + write", f"{seconds:.1f}", f"{TARGET_SECONDS:.0f}",
                  f"{seconds / TARGET_SECONDS:.2f}")
    table.add_row("peak memory (GB)", f"{peak_gb:.2f}", f"{TARGET_PEAK_GB:.1f}", f"{peak_gb / TARGET_PEAK_GB:.2f}")
    for name, value in dice.items():
        table.add_row(f"Dice {name} (not timed)", f"{value:.3f}", "", "")
    console.print(table)
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
