"""Batch segmentation of a folder of scans: resumable, error-isolated, with a results table.

:func:`find_scans` lists the cases of an input folder (NIfTI files matching a pattern, and DICOM
series folders), :func:`run_batch` segments them one after the other while a background
thread reads and decodes the next scan, writes each mask atomically under the same relative
name, skips cases whose mask already exists (a killed run simply continues), records every
failure with its one-line reason and goes on, and writes ``summary.csv`` / ``summary.json``.

Under ``torchrun`` (or any launcher setting ``RANK`` / ``WORLD_SIZE``) each rank takes a
disjoint, deterministic share of the sorted cases; rank 0 merges the per-rank summaries.
"""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import MedsegError
from .io import (
    _reason,
    atomic_write,
    atomic_write_text,
    load_scan,
    looks_like_dicom,
    save_mask,
)

SUMMARY = "summary"
STATUS_DONE, STATUS_SKIPPED, STATUS_FAILED = "done", "skipped", "failed"


@dataclass
class BatchCase:
    name: str  # relative path of the input (posix), the case's id
    input: Path
    output: Path
    preview: Path | None = None


@dataclass
class BatchResult:
    rows: list[dict] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r["status"] == status)

    @property
    def failed(self) -> int:
        return self.count(STATUS_FAILED)


def _is_dicom_folder(folder: Path) -> bool:
    for n, child in enumerate(sorted(folder.iterdir())):
        if n >= 64:
            break
        if child.is_file() and not child.name.startswith(".") and (child.suffix.lower() == ".dcm" or looks_like_dicom(child)):
            return True
    return False


def _stem(name: str) -> str:
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def find_scans(
    input_dir: str | Path, output_dir: str | Path, pattern: str = "*.nii.gz,*.nii", recursive: bool = False,
    preview: bool = False,
) -> list[BatchCase]:
    """Cases of ``input_dir``: files matching ``pattern`` (comma-separated globs) and DICOM series
    folders (sub-folders holding DICOM files), each with its output path under ``output_dir``.

    ``a/b.nii.gz`` -> ``OUT/a/b.nii.gz``; a DICOM folder ``a/series1/`` -> ``OUT/a/series1.nii.gz``.
    Hidden files and the output folder itself are skipped.
    """
    root = Path(input_dir)
    out = Path(output_dir)
    if not root.is_dir():
        raise MedsegError(f"{root}: not a folder")
    patterns = [p.strip() for p in pattern.split(",") if p.strip()]
    out_resolved = out.resolve()
    if out_resolved == root.resolve():
        raise MedsegError(f"{out}: the output folder is the input folder; masks would replace the scans")
    cases: list[BatchCase] = []

    def add(path: Path, rel: Path, is_dir: bool) -> None:
        stem = rel.name if is_dir else _stem(rel.name)
        dest = out / rel.parent / f"{stem}.nii.gz"
        cases.append(BatchCase(rel.as_posix(), path, dest, (out / rel.parent / f"{stem}.png") if preview else None))

    def walk(folder: Path) -> None:
        for child in sorted(folder.iterdir()):
            if child.name.startswith((".", "_")) or child.resolve() == out_resolved:
                continue
            rel = child.relative_to(root)
            if child.is_dir():
                if _is_dicom_folder(child):
                    add(child, rel, True)
                elif recursive:
                    walk(child)
            elif child.is_file() and any(fnmatch.fnmatch(child.name, p) for p in patterns):
                add(child, rel, False)

    walk(root)
    seen: dict[Path, str] = {}
    for c in cases:
        if c.output in seen:
            raise MedsegError(f"{c.input}: its mask {c.output} would also be written for {seen[c.output]}; rename one")
        seen[c.output] = c.name
    return cases


def shard(cases: list[BatchCase], rank: int, world_size: int) -> list[BatchCase]:
    """This rank's deterministic share: every ``world_size``-th case of the sorted list."""
    return sorted(cases, key=lambda c: c.name)[rank::world_size]


def existing_mask(path: Path):
    """The mask an earlier run wrote, read through (a truncated file is caught), or None.

    Masks are written atomically, so a file under the final name is complete unless something
    else damaged it; anything unreadable is redone.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return None
    try:
        return load_scan(path)
    except MedsegError:
        return None


def _failure(path: Path, exc: BaseException) -> str:
    """One line for a case that failed: medseg's own message, or the file and the first line of the error."""
    return str(exc) if isinstance(exc, MedsegError) else f"{path}: {type(exc).__name__}: {_reason(exc)}"


def _load(case: BatchCase, modality: str | None):
    t0 = time.perf_counter()
    try:
        return load_scan(case.input, modality=modality), None, time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - isolated: reported, batch goes on
        return None, _failure(case.input, exc), time.perf_counter() - t0


def run_batch(
    cases: list[BatchCase],
    bundle,
    *,
    device=None,
    overwrite: bool = False,
    modality: str | None = None,
    batch_size: int = 8,
    on_case_start: Callable[[BatchCase, int, int], None] | None = None,
    on_slices: Callable[[int, int], None] | None = None,
    on_case_done: Callable[[dict], None] | None = None,
) -> BatchResult:
    """Segment ``cases`` with ``bundle``; the next scan is read in a background thread meanwhile."""
    from .inference import resolve_device, segment
    from .metrics import label_volumes_ml

    dev = resolve_device(device)
    names = bundle.card.labels
    todo: list[BatchCase] = []
    result = BatchResult()
    for case in cases:
        for target in (case.output, case.preview):  # leftovers of a killed run (never under a final name)
            if target is not None and target.parent.is_dir():
                for stale in target.parent.glob(f".{target.name}.*.partial*"):
                    stale.unlink(missing_ok=True)
        existing = None if overwrite or (case.preview is not None and not case.preview.is_file()) else existing_mask(case.output)
        if existing is not None:
            row = _row(case, STATUS_SKIPPED, 0.0, names)
            row.update(_volumes(label_volumes_ml(existing.array, existing.voxel_volume_ml, names), names))
            result.rows.append(row)
            if on_case_done:
                on_case_done(row)
        else:
            todo.append(case)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(_load, todo[0], modality) if todo else None
        for n, case in enumerate(todo):
            scan, error, load_s = pending.result()
            pending = pool.submit(_load, todo[n + 1], modality) if n + 1 < len(todo) else None
            if on_case_start:
                on_case_start(case, n, len(todo))
            t0 = time.perf_counter()
            row = _row(case, STATUS_FAILED, 0.0, names)
            if error is None:
                try:
                    labels = segment(scan, bundle, device=dev, batch_size=batch_size, progress=on_slices)
                    save_mask(labels, scan, case.output)
                    if case.preview is not None:
                        write_preview(scan, labels, case.preview, names)
                    row.update(_volumes(label_volumes_ml(labels, scan.voxel_volume_ml, names), names))
                    row["status"] = STATUS_DONE
                except Exception as exc:  # noqa: BLE001 - isolated: reported, batch goes on
                    error = _failure(case.input, exc)
            row["error"] = error or ""
            row["seconds"] = round(time.perf_counter() - t0 + load_s, 3)
            result.rows.append(row)
            if on_case_done:
                on_case_done(row)
    result.rows.sort(key=lambda r: r["case"])
    return result


def _row(case: BatchCase, status: str, seconds: float, names: dict[str, int]) -> dict:
    row = {"case": case.name, "input": str(case.input), "output": str(case.output), "status": status,
           "seconds": seconds, "error": ""}
    row.update({f"{name}_ml": math.nan for name, v in sorted(names.items(), key=lambda kv: kv[1]) if v})
    return row


def _volumes(volumes: dict[str, float], names: dict[str, int]) -> dict:
    return {f"{name}_ml": round(float(volumes.get(name, 0.0)), 3) for name, v in names.items() if v}


# ---------------------------------------------------------------------------------------------- reports


def write_summary(rows: list[dict], out_dir: Path, name: str = SUMMARY) -> tuple[Path, Path]:
    """``<name>.csv`` and ``<name>.json`` in ``out_dir`` (atomic); NaN -> empty cell / null."""
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r)) or ["case", "status"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    csv_path, json_path = out_dir / f"{name}.csv", out_dir / f"{name}.json"
    atomic_write_text(csv_path, buf.getvalue())
    clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()} for r in rows]
    counts = {s: sum(1 for r in rows if r["status"] == s) for s in (STATUS_DONE, STATUS_SKIPPED, STATUS_FAILED)}
    atomic_write_text(json_path, json.dumps({"counts": counts, "cases": clean}, indent=2) + "\n")
    return csv_path, json_path


def merge_summaries(out_dir: Path, world_size: int) -> list[dict]:
    """Rank 0: read every rank's ``summary.rank<r>.json`` and write the merged summary."""
    rows: list[dict] = []
    for r in range(world_size):
        part = out_dir / f"{SUMMARY}.rank{r}.json"
        data = json.loads(part.read_text())
        rows += [{k: (math.nan if v is None else v) for k, v in row.items()} for row in data["cases"]]
    rows.sort(key=lambda r: r["case"])
    write_summary(rows, out_dir)
    for r in range(world_size):
        for ext in ("json", "csv"):
            (out_dir / f"{SUMMARY}.rank{r}.{ext}").unlink(missing_ok=True)
    return rows


def write_preview(scan, labels: np.ndarray, path: Path, names: dict[str, int], n_axial: int = 3) -> Path:
    """PNG: the mask over ``n_axial`` axial slices (where it is largest) and one coronal reformat."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure

    from .display import default_contrast, display_affine, label_colours, to_display

    # display order (S, P, L): an axial slice shows anterior up and the patient's right on the
    # left (radiological convention), a coronal one superior up
    data, _ = to_display(scan.array, scan.affine)
    lab, _ = to_display(labels, scan.affine)
    sz, sy, sx = np.abs(np.diag(display_affine(scan.affine, scan.shape))[:3])
    lo, hi = default_contrast(scan.array, scan.modality)
    area = np.array([np.count_nonzero(lab[k]) for k in range(lab.shape[0])])
    if area.any():
        ks = np.flatnonzero(area)
        picks = [int(ks[int(round(q * (len(ks) - 1)))]) for q in np.linspace(0.2, 0.8, n_axial)]
    else:
        picks = [int(round(q * (data.shape[0] - 1))) for q in np.linspace(0.25, 0.75, n_axial)]
    vmax = max(max(names.values(), default=1), 1)
    table = label_colours(names)
    colours = ListedColormap([table.get(v, (0.5, 0.5, 0.5, 1.0)) for v in range(vmax + 1)])
    fig = Figure(figsize=(4 * (n_axial + 1), 4.4), dpi=80)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_axial + 1)
    overlay = {"cmap": colours, "vmin": 0, "vmax": vmax, "alpha": 0.5, "interpolation": "nearest"}
    for ax, k in zip(axes[:n_axial], picks):
        ax.imshow(data[k], cmap="gray", vmin=lo, vmax=hi, aspect=sy / sx)
        ax.imshow(np.ma.masked_equal(lab[k], 0), aspect=sy / sx, **overlay)
        ax.set_title(f"axial {k}", fontsize=9)
    j = int(np.argmax([np.count_nonzero(lab[:, jj]) for jj in range(lab.shape[1])])) if area.any() else data.shape[1] // 2
    ax = axes[n_axial]
    ax.imshow(data[:, j], cmap="gray", vmin=lo, vmax=hi, origin="lower", aspect=sz / sx)
    ax.imshow(np.ma.masked_equal(lab[:, j], 0), origin="lower", aspect=sz / sx, **overlay)
    ax.set_title(f"coronal {j}", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(Path(str(scan.source)).name, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
