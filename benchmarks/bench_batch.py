"""Benchmark `medseg batch` on CT-sized phantoms (512 x 512 x 300) with the bundled model.

Runs the real command line in a child process over ``--cases`` phantoms and prints one table:
seconds per case (from summary.csv and from the wall clock), cases per hour, and the child's
peak resident memory, with the targets and their ratios (measured / target; <= 1 meets it).
The next case is read while the current one is segmented, so the wall time per case is below
the sum of reading and segmenting.

    python benchmarks/bench_batch.py [--cases 3] [--shape 512 512 300] [--device auto]
"""

from __future__ import annotations

import argparse
import csv
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from medseg.phantom import make_phantom, write_nifti

TARGET_SECONDS_PER_CASE = 30.0
TARGET_PEAK_GB = 1.5


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    ap.add_argument("--spacing", type=float, nargs=3, default=(0.75, 0.75, 1.0))
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="medseg-bench-batch-"))
    try:
        t0 = time.perf_counter()
        for n in range(args.cases):
            write_nifti(make_phantom(2000 + n, shape=tuple(args.shape), spacing=tuple(args.spacing)),
                        work / "in" / f"ct{n}.nii.gz", None)
        gen_s = time.perf_counter() - t0
        cmd = [sys.executable, "-m", "medseg.cli", "batch", str(work / "in"), str(work / "out"), "--device", args.device]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # KiB -> GiB
        if proc.returncode != 0:
            print(proc.stdout, proc.stderr, file=sys.stderr)
            return proc.returncode
        rows = list(csv.DictReader(open(work / "out" / "summary.csv")))
        per_case = [float(r["seconds"]) for r in rows]
        console = Console()
        console.print(proc.stdout.strip())
        table = Table(title=f"medseg batch, {args.cases} CT phantoms of {'x'.join(map(str, args.shape))} "
                            f"({' x '.join(map(str, args.spacing))} mm), generated in {gen_s:.0f} s")
        for col in ("metric", "measured", "target", "ratio"):
            table.add_column(col, justify="right" if col != "metric" else "left")
        mean_case = sum(per_case) / len(per_case)
        wall_case = wall / args.cases
        table.add_row("seconds per case (summary.csv, mean)", f"{mean_case:.1f}", f"{TARGET_SECONDS_PER_CASE:.0f}",
                      f"{mean_case / TARGET_SECONDS_PER_CASE:.2f}")
        table.add_row("seconds per case (wall, incl. start-up)", f"{wall_case:.1f}", f"{TARGET_SECONDS_PER_CASE:.0f}",
                      f"{wall_case / TARGET_SECONDS_PER_CASE:.2f}")
        table.add_row("cases per hour (wall)", f"{3600 / wall_case:.0f}", f"{3600 / TARGET_SECONDS_PER_CASE:.0f}",
                      f"{(3600 / wall_case) / (3600 / TARGET_SECONDS_PER_CASE):.2f}")
        table.add_row("peak memory (GB)", f"{peak_gb:.2f}", f"{TARGET_PEAK_GB:.1f}", f"{peak_gb / TARGET_PEAK_GB:.2f}")
        console.print(table)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
