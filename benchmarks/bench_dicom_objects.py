"""Benchmark DICOM results on a CT-sized phantom: writing and reading a SEG and an RTSTRUCT of its
five structures, against writing the same label map as NIfTI.

A 512 x 512 x 300 phantom series is written as DICOM (once, in a temporary folder); then, in one
run, each of NIfTI save / SEG write / SEG read / RTSTRUCT write / RTSTRUCT read is timed (best of
``--repeat``) and printed with its ratio to the NIfTI save and to the target (measured / target;
<= 1 meets it). The targets: a DICOM result costs at most a third of the ~15 s segmentation of such
a scan on 2 cores (5 s), reading one back at most as long.

    python benchmarks/bench_dicom_objects.py [--shape 512 512 300] [--repeat 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from medseg.dicom_grid import read_grid
from medseg.dicom_seg import read_seg, write_seg
from medseg.io import load_scan, save_mask
from medseg.phantom import LABELS, make_phantom, write_dicom_series
from medseg.rtstruct import read_rtstruct, write_rtstruct

TARGET_SECONDS = 5.0


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    ap.add_argument("--spacing", type=float, nargs=3, default=(0.75, 0.75, 1.0))
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        console.print(f"writing a {tuple(args.shape)} phantom series ...")
        write_dicom_series(make_phantom(5, shape=tuple(args.shape), spacing=tuple(args.spacing)), tmp / "ct")
        scan, grid = load_scan(tmp / "ct"), read_grid(tmp / "ct")
        truth = make_phantom(5, shape=tuple(args.shape), spacing=tuple(args.spacing)).labels
        labels = np.ascontiguousarray(truth.astype(np.uint8))
        names = {int(v): k for k, v in LABELS.items() if v}
        rows = [("NIfTI save", _best(lambda: save_mask(labels, scan, tmp / "m.nii.gz"), args.repeat))]
        rows.append(("SEG write", _best(lambda: write_seg(labels, names, grid, tmp / "seg.dcm"), args.repeat)))
        rows.append(("SEG read", _best(lambda: read_seg(tmp / "seg.dcm", grid), args.repeat)))
        rows.append(("RTSTRUCT write", _best(lambda: write_rtstruct(labels, names, grid, tmp / "rt.dcm"), args.repeat)))
        rows.append(("RTSTRUCT read", _best(lambda: read_rtstruct(tmp / "rt.dcm", grid), args.repeat)))
        sizes = {name: (tmp / f).stat().st_size / 1e6 for name, f in (("NIfTI save", "m.nii.gz"), ("SEG write", "seg.dcm"),
                                                                      ("RTSTRUCT write", "rt.dcm"))}
        exact = all((read_seg(tmp / "seg.dcm", grid).masks[n] == (labels == v)).all() for v, n in names.items())
    table = Table(title=f"DICOM results, {args.shape[0]}x{args.shape[1]}x{args.shape[2]}, best of {args.repeat}")
    for col in ("step", "seconds", "x NIfTI save", "file MB", f"target {TARGET_SECONDS:.0f} s", "ratio"):
        table.add_column(col, justify="right")
    nifti = rows[0][1]
    for name, seconds in rows:
        target = "" if name == "NIfTI save" else f"{TARGET_SECONDS:.0f}"
        ratio = "" if name == "NIfTI save" else f"{seconds / TARGET_SECONDS:.2f}"
        size = f"{sizes[name]:.1f}" if name in sizes else ""
        table.add_row(name, f"{seconds:.2f}", f"{seconds / nifti:.1f}", size, target, ratio)
    console.print(table)
    console.print(f"SEG read back exactly: {exact}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
